"""What pacsinfra remembers about a site, and the protocol every state backend follows.

State records, per resource address, the hypervisor object pacsinfra manages for
it: its id, the spec as last observed, its ownership mark and what it depends on.
Never a secret: specs carry no credentials and :func:`assert_no_secrets` refuses
to write anything that looks like one.

``serial`` increases by one on every write; ``lineage`` is a uuid fixed when the
state is created, so a saved plan can tell whether the state moved under it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pacsinfra.errors import StateError
from pacsinfra.specs import (
    Observed,
    Ownership,
    PowerState,
    Spec,
    spec_from_dict,
    spec_kind,
    spec_to_dict,
)

STATE_VERSION = 1

# Keys that must never reach a state file or a plan, whatever their value.
SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "private_key", "api_key"})


def utcnow() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


_REFERENCE_KEYS = frozenset({"env", "file", "keyring"})


def _is_reference(value: Any) -> bool:
    """A SecretRef in JSON form (where a secret lives, not the secret)."""
    return isinstance(value, Mapping) and bool(value) and set(value) <= _REFERENCE_KEYS


def assert_no_secrets(data: Any, where: str = "") -> None:
    """Raise :class:`StateError` if ``data`` holds a key that names a secret with a literal value.

    A secret *reference* (``{"env": "VSPHERE_PASSWORD"}``) is fine: it names where
    the secret lives, not what it is.
    """
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if (
                str(key).lower() in SECRET_KEYS
                and value not in (None, "", {})
                and not _is_reference(value)
            ):
                raise StateError(f"refusing to persist a secret-looking field: {path}")
            assert_no_secrets(value, path)
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            assert_no_secrets(value, f"{where}[{i}]")


@dataclass
class ResourceState:
    """One managed hypervisor object."""

    address: str
    id: str
    spec: Spec
    owner: Ownership
    depends_on: tuple[str, ...] = ()
    power: str = PowerState.UNKNOWN.value
    addresses: tuple[str, ...] = ()
    updated: str = field(default_factory=utcnow)

    @property
    def type(self) -> str:
        """``network`` | ``storage`` | ``machine``."""
        return spec_kind(self.spec)

    @property
    def name(self) -> str:
        """The hypervisor object's name."""
        return self.spec.name

    @classmethod
    def from_observed(
        cls, obs: Observed, owner: Ownership, depends_on: tuple[str, ...]
    ) -> ResourceState:
        """The record of an object just created, updated or adopted."""
        return cls(
            address=obs.spec.address,
            id=obs.id,
            spec=obs.spec,
            owner=owner,
            depends_on=tuple(depends_on),
            power=obs.power.value,
            addresses=tuple(obs.addresses),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "address": self.address,
            "type": self.type,
            "name": self.name,
            "id": self.id,
            "owner": self.owner.to_dict(),
            "depends_on": list(self.depends_on),
            "power": self.power,
            "addresses": list(self.addresses),
            "updated": self.updated,
            "spec": spec_to_dict(self.spec),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceState:
        """Parse one record (raises StateError when malformed)."""
        try:
            return cls(
                address=str(data["address"]),
                id=str(data["id"]),
                spec=spec_from_dict(data["spec"]),
                owner=Ownership(**data["owner"]),
                depends_on=tuple(data.get("depends_on", ())),
                power=str(data.get("power", PowerState.UNKNOWN.value)),
                addresses=tuple(data.get("addresses", ())),
                updated=str(data.get("updated", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"malformed state record {data.get('address', '?')!r}: {exc}"
            ) from None


@dataclass
class State:
    """The whole state of one site."""

    site: str
    driver: str
    lineage: str = field(default_factory=lambda: str(uuid.uuid4()))
    serial: int = 0
    resources: dict[str, ResourceState] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_dict(self, *, with_resources: bool = True) -> dict[str, Any]:
        """JSON-ready form; resources sorted by address so diffs of the file stay readable."""
        data: dict[str, Any] = {
            "version": self.version,
            "lineage": self.lineage,
            "serial": self.serial,
            "site": self.site,
            "driver": self.driver,
        }
        if with_resources:
            data["resources"] = [self.resources[a].to_dict() for a in sorted(self.resources)]
            assert_no_secrets(data)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        """Parse a state document (raises StateError when malformed or too new)."""
        if not isinstance(data, Mapping):
            raise StateError("state file is not a JSON object")
        version = data.get("version")
        if version != STATE_VERSION:
            raise StateError(
                f"unsupported state version {version!r} (this pacsinfra reads {STATE_VERSION})"
            )
        try:
            resources = [ResourceState.from_dict(r) for r in data["resources"]]
            return cls(
                site=str(data["site"]),
                driver=str(data["driver"]),
                lineage=str(data["lineage"]),
                serial=int(data["serial"]),
                resources={r.address: r for r in resources},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed state file: {exc}") from None


@dataclass(frozen=True)
class LockInfo:
    """Who holds a state lock."""

    id: str
    operation: str
    user: str
    host: str
    pid: int
    created: str
    path: str
    expires: str = ""  # a lease's end (remote backends); "" for a kernel lock
    token: int = 0  # the lease's fencing token (remote backends)
    cmdline: str = ""  # the holder's command line (remote backends)

    def describe(self) -> str:
        """One line naming the holder, for error messages."""
        lease = f", lease until {self.expires}" if self.expires else ""
        cmd = f", command {self.cmdline!r}" if self.cmdline else ""
        return (
            f"{self.user}@{self.host} pid {self.pid} since {self.created} "
            f"(operation {self.operation}{cmd}{lease}, lock id {self.id})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "operation": self.operation,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "created": self.created,
            "path": self.path,
            **({"expires": self.expires, "token": self.token, "cmdline": self.cmdline}
               if self.expires else {}),
        }


class StateStore(Protocol):
    """Where a site's state lives, and its lock."""

    def describe(self) -> str:
        """A human name for the location (a path, a URL)."""
        ...

    def read(self) -> State | None:
        """The current state, or None when there is none yet."""
        ...

    def write(self, state: State) -> None:
        """Persist ``state`` atomically, incrementing its serial first."""
        ...

    def lock(
        self, operation: str, *, timeout: float = 0.0
    ) -> contextlib.AbstractContextManager[LockInfo]:
        """Hold the lock for the duration of the block; wait up to ``timeout`` seconds."""
        ...

    def lock_info(self) -> LockInfo | None:
        """The current holder, or None when unlocked."""
        ...

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove a lock left by a process that is gone; ``lock_id`` must match."""
        ...
