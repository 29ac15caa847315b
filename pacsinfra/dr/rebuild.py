"""``pacsinfra dr rebuild``: the same blueprint, with a site overlay, rebuilt from a backup.

Order matters: the archive's data is restored *before* the archive exists, so the
archive starts on the restored index and files and nothing is ever merged into a
running one.

1. Load the blueprint with the overlay and plan it. Every archive service of the
   site must be a *create* (a rebuild starts from nothing; an existing archive is
   refused, never overwritten).
2. Pick the backup: ``--from`` is a backup (``backup.json`` in it) or a directory of
   backups, of which the newest complete one is taken.
3. Check it fits: the index is SQLite, and each tier of the backup is a tier of the
   archive's config at its default place (``<data_dir>/<tier>``).
4. Restore it into each archive's data directory (``run_restore``: every checksum
   verified; into a temp directory renamed into place).
5. Apply the plan (machines, services: the archives start on their restored data).
6. Count: a study-level C-FIND on every archive must find every study of the
   backup's manifest with its number of instances.

Where the restore happens depends on the provider. ``local``: on this machine, into
each archive's data directory, before the plan is applied. ``static`` (existing hosts
over SSH): the archives' machines are applied first (each host gets its venv with
this pacsinfra), the backup is restored *on each archive's host* by the host's own
``pacsinfra restore`` (:mod:`pacsinfra.dr.remote`), then the rest of the plan (the
services) is applied. Other providers are refused (exit 2) with that reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsinfra.dr.backup import MANIFEST_NAME, SUMMARY_NAME
from pacsinfra.dr.restore import RestoreSummary, run_restore
from pacsinfra.errors import PacsinfraError, UsageError

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND


class RebuildError(PacsinfraError):
    """The rebuilt site does not hold what the backup holds."""


@dataclass(frozen=True)
class RestoreTarget:
    """An archive service the rebuild creates, and where its data goes."""

    address: str  # service.archive[0]
    config: Mapping[str, Any]  # the rendered archive config
    machine: str  # the plan address of its machine (machine.pacs[0])
    machine_name: str  # the machine's name (<site>-pacs-1): a static host entry
    host: str | None  # the machine's address (None: this machine)


@dataclass
class ArchiveCheck:
    """One rebuilt archive against the backup."""

    address: str
    data_dir: str
    restored: RestoreSummary | None = None
    studies_found: int = 0
    missing: list[str] = field(default_factory=list)  # study UIDs not found
    short: list[str] = field(default_factory=list)  # studies with fewer instances

    @property
    def ok(self) -> bool:
        return not self.missing and not self.short


@dataclass
class BackupContents:
    """What a backup holds, from its manifest."""

    path: Path
    instances_per_study: dict[str, int]
    tiers: set[str]

    @property
    def studies(self) -> int:
        return len(self.instances_per_study)


def latest_backup(source: Path, origin: str = "--from") -> Path:
    """``source`` if it is a complete backup, else the newest complete backup in it
    (``origin`` names where ``source`` came from in messages)."""
    if (source / SUMMARY_NAME).is_file():
        return source
    if not source.is_dir():
        raise UsageError(f"{origin} {source}: no such backup or directory of backups")
    found: list[tuple[float, Path]] = []
    for child in source.iterdir():
        summary = child / SUMMARY_NAME
        if child.name.startswith(".") or not summary.is_file():
            continue  # .partial- directories of interrupted backups never count
        try:
            found.append((float(json.loads(summary.read_text())["finished_at"]), child))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        raise UsageError(f"{origin} {source}: no complete backup (a directory with "
                         f"{SUMMARY_NAME}) in it")
    return max(found)[1]


def read_contents(backup: Path) -> BackupContents:
    """Studies (with instance counts) and tiers listed by a backup's manifest."""
    per_study: Counter[str] = Counter()
    tiers: set[str] = set()
    try:
        for line in (backup / MANIFEST_NAME).read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                per_study[str(entry["study_uid"])] += 1
                tiers.add(str(entry["tier"]))
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{backup / MANIFEST_NAME}: unreadable manifest: {exc}") from exc
    return BackupContents(backup, dict(per_study), tiers)


def restore_targets(plan: Any) -> list[RestoreTarget]:
    """Every archive service the plan creates, with its machine.

    Refuses a plan whose provider cannot be restored into, an archive that already
    exists, and a site without an archive."""
    from pacsinfra.plan.plan import Action
    from pacsinfra.services.common import machine_name_of
    from pacsinfra.specs import ServiceSpec

    out: list[RestoreTarget] = []
    for step in plan.steps:
        spec = step.desired
        if not isinstance(spec, ServiceSpec) or spec.kind != "archive":
            continue
        if step.action is not Action.CREATE:
            raise UsageError(f"{step.address} already exists at site {plan.name!r}: dr rebuild "
                             "builds a site from nothing (destroy it first, or use restore)")
        out.append(RestoreTarget(step.address, spec.config, spec.machine,
                                 machine_name_of(spec), spec.host))
    if not out:
        raise UsageError(f"site {plan.name!r} has no archive service to restore into")
    return out


def check_fits(target: RestoreTarget, contents: BackupContents) -> str:
    """The archive's data directory, once it is clear the backup can be restored there."""
    address, config = target.address, target.config
    index = config.get("index") or {}
    if index.get("backend", "sqlite") != "sqlite" or index.get("path"):
        raise UsageError(f"{address}: dr rebuild restores a SQLite index at its default "
                         "place (<data_dir>/index.sqlite); this archive's index is configured "
                         "otherwise")
    tiers = {str(t.get("name")): t for t in (config.get("tiers") or [{"name": "default"}])}
    for name in sorted(contents.tiers):
        tier = tiers.get(name)
        if tier is None:
            raise UsageError(f"{address}: the backup has tier {name!r}, which this archive does "
                             f"not configure (it has: {', '.join(sorted(tiers))})")
        if tier.get("path") not in (None, "", name):
            raise UsageError(f"{address}: tier {name!r} is configured at {tier['path']!r}; a "
                             f"restore puts it at <data_dir>/{name}")
    data_dir = config.get("data_dir")
    if not data_dir:
        raise UsageError(f"{address}: the rendered config has no data_dir")
    return str(data_dir)


def count_studies(peer: Any, calling_ae: str = "PXDRCHECK") -> dict[str, int]:
    """Study UID -> NumberOfStudyRelatedInstances, from a study-level C-FIND."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    from pacsinfra.pacs.dicom import associate

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(FIND)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ident.NumberOfStudyRelatedInstances = ""
    assoc = associate(ae, peer)
    if not assoc.is_established:
        raise RebuildError(f"cannot associate with {peer.ae_title}@{peer.host}:{peer.port}")
    out: dict[str, int] = {}
    try:
        for status, match in assoc.send_c_find(ident, FIND):
            if status is None or "Status" not in status:
                raise RebuildError(f"C-FIND to {peer.ae_title} got no answer")
            if status.Status in (0xFF00, 0xFF01) and match is not None:
                out[str(match.StudyInstanceUID)] = int(match.NumberOfStudyRelatedInstances or 0)
            elif status.Status != 0:
                raise RebuildError(f"C-FIND to {peer.ae_title} failed: 0x{status.Status:04X}")
    finally:
        assoc.release()
    return out


def compare(check: ArchiveCheck, contents: BackupContents, found: Mapping[str, int]) -> None:
    """Fill ``check`` with what ``found`` (a C-FIND) lacks of the backup."""
    check.studies_found = sum(1 for uid in contents.instances_per_study if uid in found)
    check.missing = sorted(uid for uid in contents.instances_per_study if uid not in found)
    check.short = sorted(uid for uid, n in contents.instances_per_study.items()
                         if uid in found and found[uid] < n)


def restore_all(targets: list[RestoreTarget], contents: BackupContents,
                echo: Callable[[str], None]) -> list[ArchiveCheck]:
    """Restore into the data directory of every target on this machine (``local``), once
    the backup is known to fit every one of them."""
    checks = [ArchiveCheck(t.address, check_fits(t, contents)) for t in targets]
    for check in checks:
        check.restored = run_restore(contents.path, Path(check.data_dir))
        echo(f"restored {check.restored.studies} studies, {check.restored.instances} "
             f"instances into {check.address} ({check.data_dir})")
    return checks
