"""The viewer's own error: something outside the config stopped it (exit 1).

Bad configuration is a :class:`~pacsinfra.errors.UsageError` (exit 2) and an unreadable
secret a :class:`~pacsinfra.errors.SecretError` (exit 2), as everywhere in pacsinfra.
"""

from __future__ import annotations

from pacsinfra.errors import PacsinfraError


class ViewerError(PacsinfraError):
    """The OHIF package cannot be had or verified, nginx cannot start, a check failed."""

    exit_code = 1


__all__ = ["ViewerError"]
