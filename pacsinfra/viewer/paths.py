"""Where a viewer's files live under its ``data_dir`` (nginx's prefix).

::

    <data_dir>/
      nginx.conf               rendered from the config (no secrets), 0640
      app-config.js            OHIF's configuration, served at /app-config.js
      nginx.pid
      secrets/                 0700 (0710, group of worker_user, when nginx starts as root)
        htpasswd               users and password hashes, 0600 (owned by worker_user)
        upstream-auth.conf     the archive's bearer token as a proxy header, 0600
      logs/access.log          method, path (no query: it can hold patient names), 0640
      logs/error.log           0640
      tmp/{client_body,proxy,fastcgi,uwsgi,scgi}/   nginx's temp files (unprivileged)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass(frozen=True)
class Layout:
    """The paths of one viewer instance, all under ``prefix``."""

    prefix: Path

    @classmethod
    def of(cls, data_dir: str | Path) -> Layout:
        """The layout under ``data_dir`` (made absolute: nginx resolves against its prefix)."""
        return cls(Path(data_dir).expanduser().absolute())

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def app_config(self) -> Path:
        return self.prefix / "app-config.js"

    @property
    def pid(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def secrets(self) -> Path:
        return self.prefix / "secrets"

    @property
    def htpasswd(self) -> Path:
        return self.secrets / "htpasswd"

    @property
    def upstream_auth(self) -> Path:
        return self.secrets / "upstream-auth.conf"

    @property
    def logs(self) -> Path:
        return self.prefix / "logs"

    @property
    def access_log(self) -> Path:
        return self.logs / "access.log"

    @property
    def error_log(self) -> Path:
        return self.logs / "error.log"

    @property
    def tmp(self) -> Path:
        return self.prefix / "tmp"

    def temp(self, kind: str) -> Path:
        """nginx's temp directory for ``kind`` (one of :data:`TEMP_KINDS`)."""
        return self.tmp / kind


__all__ = ["TEMP_KINDS", "Layout"]
