"""pacsinfra: infrastructure as code for virtualized PACS sites."""

__version__ = "0.1.0"
