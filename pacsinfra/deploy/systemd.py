"""Render the systemd units of the PACS services (``templates/systemd/*.service.j2``).

Units run ``<venv>/bin/pacsinfra archive|router serve --config FILE`` with
``Restart=on-failure``, a start limit, a stop timeout that lets in-flight work finish,
and the hardening of ``_hardening.j2`` (read-only system, only the service's own paths
writable, no new privileges, IP/Unix sockets only, a system-call filter).

Templates are looked up like the KVM ones: ``$PACSINFRA_TEMPLATES/systemd``, package
data, ``<prefix>/share/pacsinfra/templates/systemd``, then the source tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pacsinfra import __version__, templating
from pacsinfra.errors import CapabilityError, DeployError

Service = Literal["archive", "router"]
# What may appear in a path or name we write into a unit: no whitespace, quotes, %, or
# newlines (a newline would inject directives; % is a systemd specifier).
_SAFE = re.compile(r"^[A-Za-z0-9_@./+:=-]+$")


def template_dirs() -> list[Path]:
    """Candidate directories holding the systemd templates, in search order."""
    return templating.template_dirs("systemd")


@dataclass
class UnitSpec:
    """What a unit needs to know; paths are absolute on the target."""

    service: Service
    ae_title: str
    port: int
    venv: str
    config_path: str
    rw_paths: list[str]
    user: str = "pacs"
    group: str = "pacs"
    site: str = "site"
    ro_paths: list[str] = field(default_factory=list)
    environment_file: str | None = None
    stop_timeout: int = 60
    after: list[str] = field(default_factory=list)  # e.g. ["postgresql.service"]

    @property
    def unit_name(self) -> str:
        return f"pacsinfra-{self.service}.service"


def _check(spec: UnitSpec) -> None:
    problems: list[str] = []
    values: list[tuple[str, str]] = [
        ("venv", spec.venv), ("config_path", spec.config_path), ("user", spec.user),
        ("group", spec.group), ("site", spec.site), ("ae_title", spec.ae_title),
        *[("rw_paths", p) for p in spec.rw_paths], *[("ro_paths", p) for p in spec.ro_paths],
        *[("after", a) for a in spec.after],
    ]
    if spec.environment_file:
        values.append(("environment_file", spec.environment_file))
    for name, value in values:
        if not _SAFE.match(value):
            problems.append(f"{name} {value!r} has characters a unit file cannot carry safely")
    for name, value in [("venv", spec.venv), ("config_path", spec.config_path),
                        *[("rw_paths", p) for p in spec.rw_paths]]:
        if not value.startswith("/"):
            problems.append(f"{name} {value!r} must be an absolute path")
    if not spec.rw_paths:
        problems.append("rw_paths is empty: the service needs somewhere to write")
    if not 1 <= spec.port <= 65535:
        problems.append(f"port {spec.port} out of range")
    if problems:
        raise DeployError(f"cannot render {spec.unit_name}: " + "; ".join(problems))


def render_unit(spec: UnitSpec) -> str:
    """The unit file text for ``spec`` (validated first; DeployError lists every problem)."""
    _check(spec)
    try:
        env = templating.environment("systemd", f"{spec.service}.service.j2",
                                     trim_blocks=True, lstrip_blocks=True)
    except CapabilityError:
        raise DeployError(f"no {spec.service}.service.j2 in "
                          f"{[str(d) for d in template_dirs()]}") from None
    text = env.get_template(f"{spec.service}.service.j2").render(
        version=__version__, site=spec.site, ae_title=spec.ae_title, port=spec.port,
        venv=spec.venv, config_path=spec.config_path, user=spec.user, group=spec.group,
        rw_paths=spec.rw_paths, ro_paths=spec.ro_paths, environment_file=spec.environment_file,
        stop_timeout=spec.stop_timeout, after=spec.after, privileged_port=spec.port < 1024,
    )
    return text
