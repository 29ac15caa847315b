"""References to secrets, and their resolution at the last possible moment.

A blueprint never holds a password: it holds a :class:`SecretRef` naming where the
password lives (an environment variable, a file, or a keyring entry). The value is
read only by the code that needs it (a driver's ``connect``), is never stored in
state or plans, and never appears in a message: errors name the reference, not
the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from pacsinfra.errors import SecretError


class SecretRef(BaseModel):
    """Where a secret lives: exactly one of ``env``, ``file`` or ``keyring`` (``service/user``).

    Attributes:
        env: Name of an environment variable holding the secret.
        file: Path of a file holding the secret (``~`` expanded; a trailing newline is
            dropped).
        keyring: ``service/user`` of an entry in the system keyring (needs the ``keyring``
            package).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: str | None = None
    keyring: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("env", "file", "keyring") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a secret reference names exactly one of env, file or keyring")
        if self.keyring and "/" not in self.keyring:
            raise ValueError("a keyring reference is written service/user")
        return self

    def describe(self) -> str:
        """A safe, human description of where the secret is read from."""
        if self.env:
            return f"environment variable {self.env}"
        if self.file:
            return f"file {self.file}"
        return f"keyring entry {self.keyring}"

    def resolve(self) -> str:
        """Read the secret now. Raises :class:`SecretError` naming the reference, never the value."""
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretError(f"secret not found: {self.describe()} is not set")
            return value
        if self.file:
            try:
                return Path(self.file).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SecretError(f"secret not readable: {self.describe()}: {exc.strerror}") from None
        service, _, user = (self.keyring or "").partition("/")
        try:
            import keyring  # optional; only for admins who keep secrets there
        except ImportError:
            raise SecretError(
                f"cannot read {self.describe()}: the 'keyring' package is not installed "
                "(pip install keyring)"
            ) from None
        value = keyring.get_password(service, user)
        if value is None:
            raise SecretError(f"secret not found: {self.describe()}")
        return str(value)
