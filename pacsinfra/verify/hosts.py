"""Verify steps that run where a service runs, through the services layer.

``pacsinfra verify`` reaches the DICOM listeners from this machine, but some checks
belong on the service's own host: an archive's DICOMweb and a viewer listen on loopback
unless the blueprint opens them. So, through the site's driver (the same sessions
``apply`` uses):

- :class:`HostDeleter` removes the test study with ``pacsinfra archive delete`` run
  next to the archive, as the account the archive runs as;
- :func:`viewer_step` opens the test study in a viewer with ``pacsinfra viewer check
  --study`` run next to the viewer (its login, its proxy, the archive's DICOMweb behind
  it), and compares the first frame it fetched with the pixels that were sent.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from pacsinfra.errors import PacsinfraError, StateError, UsageError
from pacsinfra.services.common import viewer_check_argv
from pacsinfra.services.runner import ServiceRunner
from pacsinfra.specs import ServiceSpec
from pacsinfra.verify.study import pixel_digest

PASS, FAIL = "PASS", "FAIL"

#: (address, kind, rendered config, machine address) of every deployed service
Services = list[tuple[str, str, Mapping[str, Any], str | None]]


@dataclass
class DeployedSite:
    """An applied site as its state records it, with a way to reach each service's host."""

    name: str
    services: Services
    specs: dict[str, ServiceSpec] = field(default_factory=dict)
    runner: Callable[[str], ServiceRunner | None] = lambda address: None


@contextlib.contextmanager
def open_site(blueprint: Path, overlay: str | None, state_path: Path | None, *,
              fallback: str) -> Iterator[DeployedSite]:
    """The applied site, with its driver connected while the block runs.

    Raises UsageError for a site never applied and StateError for one whose state holds
    no services (``fallback`` names the command that works without a blueprint).
    """
    from pacsinfra.apply.engine import Engine
    from pacsinfra.blueprint import load_blueprint

    loaded = load_blueprint(str(blueprint), site=overlay)
    with Engine(loaded, state_path) as engine:
        state = engine.read_state()
        if state is None:
            raise UsageError(f"{blueprint}: no state at {engine.store.describe()}; "
                             "run pacsinfra apply first")
        specs = {a: r.spec for a, r in state.resources.items() if isinstance(r.spec, ServiceSpec)}
        if not specs:
            raise StateError(f"{blueprint}: the state records no services; run `{fallback}` "
                             "instead")
        site = engine.site  # the name the site's objects are marked with (overlay included)
        runners: dict[str, ServiceRunner | None] = {}

        def runner(address: str) -> ServiceRunner | None:
            if address not in runners:
                try:
                    runners[address] = engine.driver.service_runner(site, specs[address])
                except PacsinfraError:
                    runners[address] = None
            return runners[address]

        yield DeployedSite(
            name=loaded.site.metadata.name,
            services=[(a, s.kind, s.config, s.host) for a, s in specs.items()],
            specs=specs, runner=runner)


class HostDeleter:
    """Deletes a study with ``pacsinfra archive delete`` where the archive runs."""

    def __init__(self, runner: ServiceRunner, where: str) -> None:
        self.runner = runner
        self.where = where

    def delete_study(self, study_uid: str) -> str:
        argv = [self.runner.python(), "-m", "pacsinfra", "archive", "delete", "--config",
                self.runner.config_location(), study_uid]
        rc, out, err = self.runner.run_as_service(argv, 300.0)
        if rc != 0:
            raise RuntimeError(f"pacsinfra archive delete on {self.where} failed (exit {rc}): "
                               f"{(err or out).strip()[-300:]}")
        return f"{out.strip().splitlines()[0] if out.strip() else 'deleted'} ({self.where})"


#: a smoke step run with the study's UID and the data sets sent: (PASS|FAIL, detail)
StudyCheck = Callable[[str, list[Dataset]], tuple[str, str]]


def viewer_step(runner: ServiceRunner, config: Mapping[str, Any]) -> StudyCheck:
    """A smoke step: open the study in the viewer where it runs; PASS when it opens
    through the proxy and the first frame shown is the one that was sent."""

    def step(study_uid: str, sent: list[Dataset]) -> tuple[str, str]:
        argv, stdin = viewer_check_argv(runner.python(), runner.config_location(), config,
                                        study=study_uid)
        rc, out, err = runner.run_check(argv, 120.0, input=stdin)
        try:
            probes = {p["name"]: p for p in json.loads(out)["probes"]}
        except (ValueError, KeyError, TypeError):
            return FAIL, f"viewer check failed (exit {rc}): {(err or out).strip()[-300:]}"
        bad = [f"{n}: {p['detail']}" for n, p in probes.items() if p.get("ok") is False]
        if bad:
            return FAIL, "; ".join(bad)
        study = probes.get("study") or {}
        facts = study.get("facts") or {}
        by_uid = {str(d.SOPInstanceUID): d for d in sent}
        ds = by_uid.get(str(facts.get("instance")))
        if ds is None:
            return FAIL, f"the viewer showed instance {facts.get('instance')}, not one sent"
        if facts.get("frame_sha256") != pixel_digest(ds):
            return FAIL, (f"frame 1 of {facts.get('instance')} through the viewer differs from "
                          "the pixels sent")
        return PASS, f"{study.get('detail')}; pixels identical to those sent"

    return step


__all__ = ["DeployedSite", "HostDeleter", "StudyCheck", "open_site", "viewer_step"]
