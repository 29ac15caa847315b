"""Storage lifecycle: move studies between filesystem tiers by age or last access.

Per instance, in this order: copy to the target tier (durably), verify the copy's
sha256 against the index, repoint the index row, then delete the source. A crash
anywhere leaves the instance readable from the tier the index names (at worst a
stray copy remains), and a rerun picks up where it stopped (resumable). A study
whose source does not verify (corrupt or missing file) is parked in
``migration_failure`` with the reason and skipped from then on: never retried in a
loop, never deleted.

Retention: with ``retention_days`` set, each pass also deletes the studies whose
newest instance was received more than N days ago, through the same crash-safe
delete path as DICOMweb DELETE (:mod:`pacsinfra.pacs.archive.delete`), and finishes
any interrupted deletion.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pacsinfra.pacs.archive.config import ArchiveConfig, LifecycleRule
from pacsinfra.pacs.archive.delete import delete_study, expired_studies, sweep_pending
from pacsinfra.pacs.archive.index import Index, StoredInstance
from pacsinfra.pacs.archive.storage import Tier

LOG = logging.getLogger("pacsinfra.archive.lifecycle")
DAY = 86400.0


@dataclass
class LifecycleReport:
    """What one lifecycle pass did."""

    moved_studies: list[str] = field(default_factory=list)
    moved_instances: int = 0
    failed_studies: dict[str, str] = field(default_factory=dict)
    deleted_studies: list[str] = field(default_factory=list)  # retention
    deleted_instances: int = 0


def _candidates(index: Index, rule: LifecycleRule, now: float) -> list[str]:
    conds, params = [], []
    if rule.older_than_days is not None:
        conds.append("s.created_at <= ?")
        params.append(now - rule.older_than_days * DAY)
    if rule.not_accessed_days is not None:
        conds.append("s.last_access <= ?")
        params.append(now - rule.not_accessed_days * DAY)
    sql = (
        "SELECT DISTINCT s.study_uid FROM study s JOIN instance i ON i.study_uid = s.study_uid "
        "WHERE i.tier = ? AND " + " AND ".join(conds) +
        " AND s.study_uid NOT IN (SELECT study_uid FROM migration_failure)"
    )
    return [r[0] for r in index.db.query(sql, (rule.from_tier, *params))]


def _sha_of(data: bytes, offset: int) -> str:
    return hashlib.sha256(data[offset:]).hexdigest()


def move_instance(index: Index, inst: StoredInstance, src: Tier, dst: Tier) -> None:
    """Copy, verify, repoint, delete. Raises ValueError when the source does not verify."""
    data = src.read(inst.rel_path)
    if _sha_of(data, inst.ds_offset) != inst.sha256:
        raise ValueError(f"{inst.sop_uid}: source checksum does not match the index")
    if not dst.has_room(len(data)):
        raise OSError(f"tier {dst.name} is above its usage threshold")
    dst.store(inst.rel_path, data)
    if _sha_of(dst.read(inst.rel_path), inst.ds_offset) != inst.sha256:
        dst.remove(inst.rel_path)
        raise OSError(f"{inst.sop_uid}: copy on {dst.name} does not verify")
    index.move_tier(inst.sop_uid, dst.name, inst.rel_path)
    src.remove(inst.rel_path)


def _park(index: Index, study: str, to_tier: str, reason: str) -> None:
    with index.db.transaction() as cur:
        cur.execute("DELETE FROM migration_failure WHERE study_uid = ?", (study,))
        cur.execute(
            "INSERT INTO migration_failure (study_uid, to_tier, reason, failed_at) "
            "VALUES (?, ?, ?, ?)", (study, to_tier, reason, time.time()))


def _retention(config: ArchiveConfig, index: Index, tiers: dict[str, Tier], now: float,
               report: LifecycleReport, service: Any, audit: Any) -> None:
    lock_for = service.lock_for if service is not None else None
    sweep_pending(index, tiers, lock_for)
    if config.retention_days is None:
        return
    for study in expired_studies(index, config.retention_days, now):
        if service is not None:  # audit-logged and counted by the running archive
            done = service.delete(study, actor="retention")
        else:
            done = delete_study(index, tiers, study)
            if done is not None and audit is not None:
                audit.study_deleted("retention", study, done.instances)
        if done is not None:
            LOG.info("retention: deleted study %s (%d instances)", study, done.instances)
            report.deleted_studies.append(study)
            report.deleted_instances += done.instances


def run_lifecycle(config: ArchiveConfig, index: Index, tiers: dict[str, Tier],
                  *, now: float | None = None, service: Any = None,
                  audit: Any = None) -> LifecycleReport:
    """One pass: retention deletes (``retention_days``), then every lifecycle rule.

    ``service`` (the running archive's) serialises deletes with stores and audits
    them; without it, ``audit`` (an AuditLog or None) records retention deletes."""
    now = time.time() if now is None else now
    report = LifecycleReport()
    _retention(config, index, tiers, now, report, service, audit)
    for rule in config.lifecycle:
        src, dst = tiers.get(rule.from_tier), tiers.get(rule.to_tier)
        if src is None or dst is None:
            LOG.warning("lifecycle %s -> %s: tier not configured",
                        rule.from_tier, rule.to_tier)
            continue
        for study in _candidates(index, rule, now):
            instances = index.instances("study_uid = ? AND tier = ?", (study, src.name))
            try:
                for inst in instances:
                    move_instance(index, inst, src, dst)
                    report.moved_instances += 1
            except (ValueError, FileNotFoundError) as exc:
                # The source itself is bad: park it for a human, never retry in a loop.
                LOG.error("lifecycle: study %s parked: %s", study, exc)
                _park(index, study, dst.name, str(exc))
                report.failed_studies[study] = str(exc)
                continue
            except OSError as exc:  # target trouble (full, I/O): try again next pass
                LOG.error("lifecycle: study %s not moved this pass: %s", study, exc)
                report.failed_studies[study] = str(exc)
                continue
            report.moved_studies.append(study)
    return report
