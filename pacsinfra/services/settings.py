"""The blueprint's ``deploy:`` section: how pacsinfra logs in to machines and runs services.

One home for the whole site, whatever the provider: the ``static`` provider's hosts and
the machines kvm, vsphere and hyperv make are reached the same way (SSH as ``user`` with
``key_file`` or ``key``, the host key pinned in ``host_keys`` or ``known_hosts``, never
trusted on first use), get pacsinfra the same way (``wheel`` into ``<root>/venv``) and
keep their services running the same way (``init``). A static host entry may override
any login field for itself; an overlay (``sites.<name>.deploy``) may override any of
them for a whole site.

:class:`DeploySettings` is the model the blueprint embeds; :class:`DeployConfig` is what
the services layer works with (parsed from the model or from a saved plan's JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from pacsinfra.drivers.settings import as_dict
from pacsinfra.secrets import SecretRef
from pacsinfra.types import Strict

DEFAULT_ROOT = "/opt/pacsinfra"
DEFAULT_USER = "root"
#: the unprivileged account services run as on hosts pacsinfra logs in to as root
DEFAULT_SERVICE_USER = "pacsinfra"
DEFAULT_PYTHON = "/usr/bin/python3"
DEFAULT_BOOT_TIMEOUT = 300.0
#: seconds a started service may take to answer its first health check (a Python service
#: on a small, busy VM took 64 s to import and listen)
DEFAULT_START_TIMEOUT = 120.0
DEFAULT_ANSIBLE_THRESHOLD = 10
DEFAULT_PARALLELISM = 10
#: the fields a host entry may override (``provider.static.hosts.<machine>``)
LOGIN_FIELDS = ("port", "user", "key_file", "key", "known_hosts", "python", "root",
                "find_links", "system_site_packages", "service_user")

_HOST_KEY = r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}( .*)?$"
_ABS_PATH = r"^(/|~/)[^\s]*$"
HostKey = Annotated[str, Field(pattern=_HOST_KEY)]

#: What keeps services running on a host: systemd units where PID 1 is systemd (``auto``
#: finds out per host, as sd_booted() does, and needs a root login), else pacsinfra's
#: own supervisor.
InitSystem = Literal["auto", "systemd", "supervisor"]
#: The channel to the hosts: paramiko (``ssh``), ansible-runner (``ansible``), or
#: ``auto``: ansible when the site has more hosts than ``ansible_threshold``.
Engine = Literal["auto", "ssh", "ansible"]


class Login(Strict):
    """How to log in to a host and where pacsinfra lives there (each one optional).

    Set under ``deploy`` for every machine of the site; a host under
    ``provider.static.hosts`` may override any of them for itself.
    """

    port: int | None = Field(None, ge=1, le=65535, description="SSH port (22)")
    user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_.-]{0,31}$",
                             description="login user (root: systemd units need it)")
    key_file: str | None = Field(
        None, description="private key file on the pacsinfra machine (~ expanded)")
    key: SecretRef | None = Field(
        None, description="or the private key itself, from a secret reference")
    known_hosts: str | None = Field(
        None, description="an OpenSSH known_hosts file holding the hosts' keys")
    python: str | None = Field(None, pattern=_ABS_PATH,
                               description="the host's interpreter that builds the venv "
                                           "(/usr/bin/python3)")
    root: str | None = Field(None, pattern=_ABS_PATH,
                             description="pacsinfra's directory on the host: venv, configs, "
                                         "data, run files (/opt/pacsinfra)")
    find_links: str | None = Field(
        None, description="a wheelhouse on the host: install offline (pip --no-index)")
    system_site_packages: bool | None = Field(
        None, description="take the dependencies from the host's python (pip --no-deps)")
    service_user: str | None = Field(
        None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="the unprivileged account the services run as when user is root "
                    "(pacsinfra; created as a system account when missing); with another "
                    "login user they run as that user")


class DeploySettings(Login):
    """``deploy``: how services get onto the site's machines, whatever the provider.

    One login for the site (existing hosts and the machines pacsinfra makes alike), and how
    the services are installed and kept running. SSH host keys are never trusted on first
    use: they come from ``known_hosts``, are pinned here per machine
    (``<site>-<role>-<n>``) or per role, or (on hypervisors that show a machine's console)
    are read from the new machine's console.
    """

    host_keys: dict[str, list[HostKey]] = Field(
        default_factory=dict,
        description="pinned SSH host keys by machine (<site>-<role>-<n>) or role")
    authorized_keys: list[HostKey] = Field(
        default_factory=list,
        description="public keys the machines pacsinfra makes accept for user, through "
                    "cloud-init (kvm, vsphere): the public half of key_file, so a new machine "
                    "can be reached without an image prepared for it (hyperv: the image "
                    "must already accept the key)")
    wheel: str | None = Field(
        None, description="the pacsinfra wheel to install (default: built from this checkout)")
    boot_timeout: float | None = Field(
        None, gt=0, le=3600,
        description="seconds from a new machine's power-on to SSH answering (300)")
    start_timeout: float | None = Field(
        None, gt=0, le=3600,
        description="seconds a started service may take to answer its first health check "
                    "(120); while its log keeps growing it gets up to three times that")
    init: InitSystem = Field("auto", description="what keeps the services running")
    engine: Engine = Field("auto", description="the channel to the hosts")
    ansible_threshold: int = Field(
        DEFAULT_ANSIBLE_THRESHOLD, ge=0, le=100000,
        description="engine auto: ansible-runner for more hosts than this")
    parallelism: int = Field(DEFAULT_PARALLELISM, ge=1, le=1000,
                             description="steps apply runs at once (--parallelism overrides)")


@dataclass(frozen=True)
class DeployConfig:
    """``deploy`` as the services layer uses it: login defaults, pinned keys, how to run."""

    login: Mapping[str, Any] = field(default_factory=dict)  # the LOGIN_FIELDS given
    host_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    wheel: str | None = None
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    start_timeout: float = DEFAULT_START_TIMEOUT
    init: str = "auto"
    engine: str = "auto"
    ansible_threshold: int = DEFAULT_ANSIBLE_THRESHOLD
    parallelism: int = DEFAULT_PARALLELISM
    #: pacsinfra's optional dependencies the site's services need on the hosts
    #: (``postgresql``, ``s3``); derived from the services, not written in the blueprint
    extras: tuple[str, ...] = ()

    @classmethod
    def parse(cls, settings: Any) -> DeployConfig:
        """From the blueprint model, its JSON dump (a saved plan) or None (nothing set)."""
        raw = as_dict(settings)
        return cls(
            login={k: raw[k] for k in LOGIN_FIELDS if raw.get(k) is not None},
            host_keys={str(k): tuple(v) for k, v in (raw.get("host_keys") or {}).items()},
            wheel=raw.get("wheel"),
            boot_timeout=float(raw.get("boot_timeout") or DEFAULT_BOOT_TIMEOUT),
            start_timeout=float(raw.get("start_timeout") or DEFAULT_START_TIMEOUT),
            init=str(raw.get("init") or "auto"),
            engine=str(raw.get("engine") or "auto"),
            ansible_threshold=int(raw.get("ansible_threshold", DEFAULT_ANSIBLE_THRESHOLD)),
            parallelism=int(raw.get("parallelism") or DEFAULT_PARALLELISM),
            extras=tuple(sorted(str(x) for x in raw.get("extras") or ())),
        )

    @property
    def root(self) -> str:
        """pacsinfra's directory on the hosts."""
        return str(self.login.get("root") or DEFAULT_ROOT)

    @property
    def has_key(self) -> bool:
        """Whether a login key is given (without one nothing can log in)."""
        return bool(self.login.get("key_file") or self.login.get("key"))

    def with_extras(self, extras: Any) -> DeployConfig:
        """The same settings, with the optional dependencies ``extras`` installed too."""
        from dataclasses import replace

        return replace(self, extras=tuple(sorted(set(self.extras) | {str(x) for x in extras})))

    def pinned(self, machine: str, role: str) -> tuple[str, ...]:
        """Host keys pinned for ``machine`` (by its name, else by its role)."""
        return tuple(self.host_keys.get(machine) or self.host_keys.get(role) or ())

    def transport(self, hosts: int) -> str:
        """The engine in effect for ``hosts`` hosts: ``ssh`` or ``ansible``."""
        if self.engine in ("ssh", "ansible"):
            return self.engine
        return "ansible" if hosts > self.ansible_threshold else "ssh"


def service_extras(services: Mapping[str, Any] | None) -> list[str]:
    """The optional dependencies (pyproject extras) the services need where they run: a
    PostgreSQL index or queue needs ``postgresql`` (psycopg), an S3 tier ``s3`` (boto3)."""
    found: set[str] = set()
    for svc in (services or {}).values():
        cfg = getattr(svc, "config", None)
        for conn in (getattr(cfg, "index", None), getattr(cfg, "queue", None)):
            if conn is not None and getattr(conn, "backend", None) == "postgresql":
                found.add("postgresql")
        if any(getattr(t, "kind", None) == "s3" for t in getattr(cfg, "tiers", None) or ()):
            found.add("s3")
    return sorted(found)
