"""Disaster recovery: consistent archive backups (``backup``) and verified restores (``restore``).

See docs/dr.md for the format and the consistency argument.
"""
