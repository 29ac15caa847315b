"""pacs."""
