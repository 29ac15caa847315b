"""The ``provider.hyperv`` settings, read from a model object or a mapping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pacsinfra.drivers.hyperv.declaration import TRANSPORTS
from pacsinfra.drivers.settings import setting
from pacsinfra.errors import UsageError
from pacsinfra.secrets import SecretRef

DEFAULT_STORAGE_ROOT = r"C:\ProgramData\pacsinfra"




@dataclass(frozen=True)
class HypervSettings:
    """Connection and placement settings (the password stays a reference until connect)."""

    host: str
    port: int
    transport: str
    user: str
    password: Any  # SecretRef, or a mapping describing one; resolved only in connect()
    ssl: bool
    verify_ssl: bool
    ca_file: str | None
    host_mhz: int | None
    storage_root: str
    vm_path: str | None
    shutdown_timeout: int

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.ssl else "http"
        return f"{scheme}://{self.host}:{self.port}/wsman"

    def password_ref(self) -> SecretRef | None:
        """The password as a SecretRef (a plain string is refused: secrets never sit in a blueprint)."""
        pw = self.password
        if pw is None:
            return None
        if isinstance(pw, SecretRef):
            return pw
        if isinstance(pw, Mapping):
            return SecretRef.model_validate(dict(pw))
        if hasattr(pw, "resolve"):
            return pw  # type: ignore[no-any-return]
        raise UsageError(
            "provider.hyperv.password must be a secret reference ({env: VAR}, {file: PATH} or "
            "{keyring: NAME}), not a literal"
        )


def read_settings(config: Any) -> HypervSettings:
    """Validate ``provider.hyperv`` (object or mapping); UsageError names what is wrong."""
    host = setting(config, "host")
    if not host:
        raise UsageError("provider.hyperv.host is required")
    transport = str(setting(config, "transport", "ntlm")).lower()
    if transport not in TRANSPORTS:
        raise UsageError(
            f"provider.hyperv.transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}"
        )
    ssl = bool(setting(config, "ssl", True))
    try:
        port = int(setting(config, "port", 5986 if ssl else 5985))
        mhz = setting(config, "host_mhz")
        host_mhz = int(mhz) if mhz else None
        shutdown = int(float(setting(config, "shutdown_timeout", 120)))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"provider.hyperv: {exc}") from None
    ca = setting(config, "ca_file")
    vm_path = setting(config, "vm_path")
    return HypervSettings(
        host=str(host),
        port=port,
        transport=transport,
        user=str(setting(config, "user", "")),
        password=setting(config, "password"),
        ssl=ssl,
        verify_ssl=bool(setting(config, "verify_ssl", True)),
        ca_file=str(ca) if ca else None,
        host_mhz=host_mhz,
        storage_root=str(setting(config, "storage_root", DEFAULT_STORAGE_ROOT)).rstrip("\\"),
        vm_path=str(vm_path) if vm_path else None,
        shutdown_timeout=shutdown,
    )
