"""What a service is wherever it runs: identity, change kinds, its config file, its command.

Every host kind (this box, existing hosts, the machines a hypervisor makes) carries out a
:class:`~pacsinfra.specs.ServiceSpec` the same way and differs only in where files and
processes live; the parts that do not depend on *where* are here (health checks in
:mod:`.health`, one service's life in :mod:`.runner`).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from pacsinfra.services.supervisor import ServiceStatus
from pacsinfra.specs import (
    ChangeKind,
    MachineSpec,
    NetworkSpec,
    ServiceSpec,
    Spec,
    StorageSpec,
)

#: service kinds a driver can run today
RUNNABLE = ("archive", "router", "database", "viewer")
#: fields that identify a service: changing them means another service, not a new config
SERVICE_IDENTITY = frozenset({"name", "service", "kind", "machine"})
#: states in which the supervisor keeps (or is about to keep) the service up
UP_STATES = ("running", "backoff", "starting")


def classify(spec: Spec, field_name: str) -> ChangeKind:
    """Records and configs change in place; a service's identity, any object's name, replace."""
    if isinstance(spec, ServiceSpec) and field_name in SERVICE_IDENTITY:
        return ChangeKind.REPLACE
    if isinstance(spec, MachineSpec | NetworkSpec | StorageSpec) and field_name == "name":
        return ChangeKind.REPLACE
    return ChangeKind.IN_PLACE


def check_runnable(spec: Spec, driver: str) -> list[str]:
    """Plan-time problems: a service kind the drivers cannot run yet, or a database setting
    they cannot carry out."""
    if not isinstance(spec, ServiceSpec):
        return []
    if spec.kind not in RUNNABLE:
        return [f"{spec.address}: the {driver} driver cannot run a {spec.kind} service yet "
                f"(it runs {', '.join(RUNNABLE)})"]
    if spec.kind == "database":
        return _check_database(spec, driver)
    return []


def _check_database(spec: ServiceSpec, driver: str) -> list[str]:
    cfg = spec.config
    where = f"{spec.address} (services.{spec.service}.config"
    out = []
    if not cfg.get("password"):
        out.append(f"{where}.password): the services' role needs a password to log in over "
                   "TCP (SCRAM-SHA-256): set password: {env: PACS_DB_PASSWORD} or {file: ...}")
    if (cfg.get("tls") or {}).get("enabled"):
        out.append(f"{where}.tls): TLS for PostgreSQL is not supported by the {driver} "
                   "driver yet; leave tls disabled")
    if cfg.get("replica_of"):
        out.append(f"{where}.replica_of): streaming replicas are not supported by the "
                   f"{driver} driver yet")
    return out


def machine_name_of(spec: ServiceSpec, fallback: dict[str, str] | None = None) -> str:
    """The machine a service runs on, by name (``ServiceSpec.name`` is ``<machine>-<service>``)."""
    suffix = f"-{spec.service}"
    if spec.name.endswith(suffix):
        return spec.name[: -len(suffix)]
    return (fallback or {}).get(spec.machine, spec.name)


def is_running(status: ServiceStatus) -> bool:
    """A live supervisor runs (or is restarting) the service."""
    return status.active and status.state in UP_STATES


def observed_service(recorded: ServiceSpec, config: dict[str, Any] | None,
                     running: bool) -> ServiceSpec:
    """The spec as found: the recorded identity, the config file's content, whether it runs."""
    return ServiceSpec(
        address=recorded.address, name=recorded.name, service=recorded.service,
        kind=recorded.kind, machine=recorded.machine, config=config if config is not None else {},
        running=running, host=recorded.host,
    )


# -- the config file ---------------------------------------------------------------------


def config_text(spec: ServiceSpec, provider: str) -> str:
    """The service's config file as written: a header saying who owns it, then YAML."""
    text = f"# written by pacsinfra ({provider} provider); changes are overwritten by apply\n"
    return text + yaml.safe_dump(dict(spec.config), sort_keys=True)


def parse_config(text: str | None) -> dict[str, Any] | None:
    """A config file's content as a mapping (None when missing, unreadable or not a mapping)."""
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def env_secrets(config: Any) -> dict[str, str]:
    """``{VAR: value}`` for every ``{"env": VAR}`` secret reference in a rendered config.

    For a process on another machine, which does not inherit the admin's environment:
    the values go only into the supervisor's spec (mode 0600), never into the config.
    """
    from pacsinfra.secrets import SecretRef

    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if set(node) == {"env"} and isinstance(node["env"], str):
                found[node["env"]] = SecretRef(env=node["env"]).resolve()
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dict(config))
    return found


def serve_argv(python: str, spec: ServiceSpec, config_path: str) -> list[str]:
    """The command the supervisor runs for a service."""
    return [python, "-m", "pacsinfra", spec.kind, "serve", "--config", config_path]


def check_argv(python: str, config_path: str) -> list[str]:
    """The command that C-ECHOes a router's destinations from the router's machine."""
    return [python, "-m", "pacsinfra", "router", "check", "--config", config_path, "--json"]


def viewer_check_argv(python: str, config_path: str, config: Any,
                      study: str | None = None) -> tuple[list[str], bytes | None]:
    """The command that probes a viewer where it runs (``viewer check --json``), and what
    goes to its standard input: the first configured user's password, resolved here
    (the host's shell has no access to the admin's secrets; stdin keeps it out of every
    command line)."""
    from pacsinfra.secrets import SecretRef

    argv = [python, "-m", "pacsinfra", "viewer", "check", "--config", config_path, "--json"]
    if study:
        argv += ["--study", study]
    users = ((config.get("auth") or {}).get("users") or {})
    if not users:
        return argv, None
    user, entry = next(iter(users.items()))
    password = SecretRef.model_validate(entry["password"]).resolve()
    return [*argv, "--user", str(user), "--password-stdin"], (password + "\n").encode()


def viewer_problem(rc: int, stdout: str, stderr: str) -> str | None:
    """What ``viewer check --json`` found wrong (None: healthy)."""
    try:
        report = json.loads(stdout)
        probes = report["probes"]
    except (ValueError, KeyError, TypeError):
        return f"viewer check failed (exit {rc}): {(stderr or stdout).strip()[-500:]}"
    bad = [p for p in probes if p.get("ok") is False]
    if rc == 0 and not bad:
        return None
    return "; ".join(f"{p.get('name')}: {p.get('detail')}" for p in bad) or \
        f"viewer check failed (exit {rc}): {stderr.strip()[-500:]}"


def destinations_problem(rc: int, stdout: str, stderr: str) -> str | None:
    """What ``router check --json`` found wrong (None: every destination answered)."""
    try:
        results = json.loads(stdout)["destinations"]
    except (ValueError, KeyError, TypeError):
        return f"router check failed (exit {rc}): {(stderr or stdout).strip()[-500:]}"
    bad = [d for d in results if not d.get("ok")]
    if rc == 0 and not bad:
        return None
    if not bad:
        return f"router check failed (exit {rc}): {stderr.strip()[-500:]}"
    return "; ".join(f"destination {d.get('name')}: {d.get('problem')}" for d in bad)
