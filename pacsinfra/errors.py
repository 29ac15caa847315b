"""The exceptions pacsinfra raises, and the exit code each one means.

Every error a user can see derives from :class:`PacsinfraError`. The CLI catches
that base class, prints ``str(exc)`` (never a traceback) and exits with
``exc.exit_code``::

    PacsinfraError
    ├── BlueprintError        bad input: file:line:col, field, what is wrong, what would be right (exit 2)
    ├── UsageError            a bad command line: unknown site, bad --var, missing file        (exit 2)
    ├── PlanError             cycles, replace refused without --allow-replace, stale plan      (exit 2)
    ├── StateError            corrupt or foreign state file                                    (exit 1)
    │   └── StateLockedError  another process holds the lock (who, where, since when)          (exit 1)
    ├── DriverError           anything the hypervisor said                                     (exit 1)
    │   ├── DriverUnavailable the SDK of an optional driver is not installed (install hint)
    │   ├── ConnectError      cannot reach the endpoint
    │   ├── AuthError         credentials refused
    │   ├── CapabilityError   the driver cannot do what the blueprint asks
    │   ├── NotFound          the object is gone
    │   ├── AlreadyExists     a name is taken by something pacsinfra does not own
    │   └── TaskFailed        the hypervisor accepted the request, then failed it
    ├── ApplyError            what completed, what failed, what was rolled back                (exit 1)
    ├── DeployError           installing or checking services failed                           (exit 1)
    │   ├── SSHError
    │   └── ServiceCheckError carries the DICOM status of the failed check
    └── SecretError           a referenced secret cannot be resolved (never shows the value)   (exit 2)

Protocol outcomes inside the PACS services (a refused C-STORE, a failed
C-MOVE sub-operation) are *returned* as DICOM status codes, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PacsinfraError(Exception):
    """Base of every error pacsinfra reports to a user."""

    exit_code: int = 1


class UsageError(PacsinfraError):
    """The command line asks for something that cannot be done (unknown site, bad --var)."""

    exit_code = 2


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a blueprint, located as precisely as the input allows.

    ``file``/``line``/``column`` are 1-based and point at the YAML node at fault;
    ``path`` is the dotted field path (``machines.archive.disks[0].size``).
    """

    message: str
    path: str = ""
    file: str = ""
    line: int = 0
    column: int = 0
    hint: str = ""
    severity: str = "error"  # "error" | "warning"
    code: str = "invalid"

    def location(self) -> str:
        """``file:line:col`` (as much of it as is known)."""
        parts = [self.file or "<input>"]
        if self.line:
            parts.append(str(self.line))
            if self.column:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        where = self.location()
        field_part = f" {self.path}:" if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}: {self.severity}:{field_part} {self.message}{hint}"

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form, stable for CI consumers."""
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass
class BlueprintError(PacsinfraError):
    """A blueprint (or overlay, or var file) is invalid; carries every diagnostic at once."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    exit_code: int = 2

    def __post_init__(self) -> None:
        super().__init__(str(self))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def __str__(self) -> str:
        n = len(self.errors)
        lines = [str(d) for d in self.diagnostics]
        lines.append(f"{n} error{'s' if n != 1 else ''} found")
        return "\n".join(lines)


class PlanError(PacsinfraError):
    """The plan cannot be made or must not be applied as it stands."""

    exit_code = 2


class StateError(PacsinfraError):
    """The state file is unreadable, corrupt, or belongs to another lineage."""


class StateLockedError(StateError):
    """Another pacsinfra process holds the state lock."""


class DriverError(PacsinfraError):
    """The hypervisor (or its SDK) refused or failed a request."""


class DriverUnavailable(DriverError):
    """The optional SDK a driver needs is not installed."""

    exit_code = 2


class ConnectError(DriverError):
    """The endpoint cannot be reached."""


class AuthError(DriverError):
    """The endpoint refused the credentials."""


class CapabilityError(DriverError):
    """The driver or the host cannot do what the blueprint asks."""

    exit_code = 2


class NotFound(DriverError):
    """The object does not exist (any more)."""


class AlreadyExists(DriverError):
    """A name is already used by an object pacsinfra does not own."""


class TaskFailed(DriverError):
    """The hypervisor accepted a request and then failed it."""


class ApplyError(PacsinfraError):
    """Some steps of an apply failed; the message lists what completed and what did not."""


class DeployError(PacsinfraError):
    """Installing, configuring or starting a service failed."""


class SSHError(DeployError):
    """An SSH connection or remote command failed."""


class ServiceCheckError(DeployError):
    """A post-deploy health check failed (carries the DICOM status when there is one)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SecretError(PacsinfraError):
    """A referenced secret cannot be resolved. The message never contains a secret value."""

    exit_code = 2
