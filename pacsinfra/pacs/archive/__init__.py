"""The embedded PACS archive: storage SCP, query/retrieve, index, tiers, DICOMweb.

Entry point: :class:`pacsinfra.pacs.archive.server.ArchiveServer` (``pacsinfra archive
serve``). See docs/archive.md for how it works and why it is durable.
"""
