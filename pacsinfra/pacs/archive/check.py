"""``pacsinfra archive check``: the index and the tiers compared, file by file.

What it finds:

- **missing**: an indexed instance whose file is not on its tier;
- **wrong size**: a file whose size differs from the index's;
- **bad checksum** (``verify``): a file whose data set no longer hashes to the
  index's SHA-256 (bit rot, a file changed behind the archive's back);
- **flagged**: instances a retrieve refused to send because their file no longer
  hashed to the index's SHA-256 (every retrieve checks), until the instance is deleted
  or stored again;
- **orphans**: files no index row points at. A crash between a file becoming durable
  and its row committing leaves one (never acknowledged: the sender resends it). So
  does a crash between an overwrite's commit and the old file's unlink. They are
  invisible to queries and retrieves, but they take space. Interrupted deletions
  (``pending_unlink``) are not orphans: every start finishes them.

Orphans are removed only with ``remove_orphans``, only when no archive is running on
the data directory (:func:`~.datalock.exclusive`: a running archive holds the lock shared, and a
store in flight owns a file before its row commits), and only when older than
``min_age``: a file younger than that may belong to a store that is still going on
somewhere (another node of a cluster sharing the tier).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pacsinfra.pacs.archive.index import Index
from pacsinfra.pacs.archive.objects import ObjectTier
from pacsinfra.pacs.archive.storage import TMP_MARK, Tier
from pacsinfra.pacs.dicom import uid_path

INCOMING = ".incoming"  # a tier's temp-file directory, swept at every start


@dataclass(frozen=True)
class Problem:
    """One finding: which file, and for indexed files which instance."""

    tier: str
    rel_path: str
    sop_uid: str | None = None
    detail: str = ""


@dataclass
class CheckReport:
    """What :func:`check_archive` found (and removed)."""

    instances: int = 0  # rows in the index
    files: int = 0  # files seen on the tiers
    verified: int = 0  # files whose checksum was recomputed
    missing: list[Problem] = field(default_factory=list)
    wrong_size: list[Problem] = field(default_factory=list)
    bad_checksum: list[Problem] = field(default_factory=list)
    orphans: list[Problem] = field(default_factory=list)  # old enough to remove
    young: list[Problem] = field(default_factory=list)  # unindexed, newer than min_age
    flagged: list[Problem] = field(default_factory=list)  # reads refused: changed files
    pending: int = 0  # files of interrupted deletions (the next start removes them)
    rejected: int = 0  # files of instances hidden by rejection notes (kept for a restore)
    # cluster: instances still in other nodes' receive caches (node -> count)
    elsewhere: dict[str, int] = field(default_factory=dict)
    removed: int = 0

    @property
    def damaged(self) -> bool:
        """Indexed instances whose file is gone or not what was stored."""
        return bool(self.missing or self.wrong_size or self.bad_checksum or self.flagged)

    @property
    def clean(self) -> bool:
        """Nothing damaged and no orphan left behind."""
        return not self.damaged and len(self.orphans) == self.removed

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (``--json``)."""

        def rows(ps: list[Problem]) -> list[dict[str, str | None]]:
            return [{"tier": p.tier, "rel_path": p.rel_path, "sop_uid": p.sop_uid,
                     "detail": p.detail} for p in ps]

        return {
            "clean": self.clean, "instances": self.instances, "files": self.files,
            "verified": self.verified, "missing": rows(self.missing),
            "wrong_size": rows(self.wrong_size), "bad_checksum": rows(self.bad_checksum),
            "flagged": rows(self.flagged),
            "orphans": rows(self.orphans), "young_unindexed": rows(self.young),
            "pending_deletions": self.pending, "rejected_files": self.rejected,
            "not_uploaded_by_node": self.elsewhere,
            "orphans_removed": self.removed,
        }


@dataclass(frozen=True)
class _Indexed:
    sop_uid: str
    size: int
    sha256: str
    ds_offset: int


def _tier_files(tier: Tier) -> Iterator[tuple[str, int, float]]:
    """``(rel_path, size, mtime)`` of every stored file on ``tier``: a directory walk
    (the temp-file directory left out), or the bucket listing of an object tier."""
    if isinstance(tier, ObjectTier):
        prefix = f"{tier.prefix}/" if tier.prefix else ""
        pages = tier.client.get_paginator("list_objects_v2").paginate(
            Bucket=tier.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield (obj["Key"][len(prefix):], int(obj["Size"]),
                       obj["LastModified"].timestamp())
        return
    root = tier.root
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and INCOMING in dirnames:
            dirnames.remove(INCOMING)
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.endswith(".dcm") and TMP_MARK not in name:
                continue  # not the archive's (a tier configured over a shared directory)
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:  # deleted while we walk
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            yield rel, st.st_size, st.st_mtime


def _dataset_sha(tier: Tier, rel: str, ds_offset: int) -> str:
    if isinstance(tier, ObjectTier):
        return hashlib.sha256(memoryview(tier.read(rel))[ds_offset:]).hexdigest()
    h = hashlib.sha256()
    with tier.path(rel).open("rb") as f:
        f.seek(ds_offset)
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _still_missing(index: Index, tiers: dict[str, Tier], p: Problem) -> bool:
    """Whether the row still points at ``p``'s file, and that file is still absent."""
    rows = index.db.query("SELECT tier, rel_path FROM instance WHERE sop_uid = ?", (p.sop_uid,))
    if not rows or (rows[0][0], rows[0][1]) != (p.tier, p.rel_path):
        return False
    tier = tiers.get(p.tier)
    if tier is None:
        return True
    try:
        tier.read(p.rel_path) if isinstance(tier, ObjectTier) else tier.path(p.rel_path).stat()
    except FileNotFoundError:
        return True
    return False


def _study_key(rel: str) -> str:
    """``<fan-out>/<study directory>`` of a stored path (:func:`~pacsinfra.pacs.dicom.uid_path`
    layout); "" for a path outside that layout."""
    parts = rel.split("/", 2)
    return f"{parts[0]}/{parts[1]}" if len(parts) == 3 else ""


def _study_dirs(index: Index, tier: str) -> dict[str, str]:
    """Study directory (:func:`_study_key`) -> Study Instance UID, for the studies with
    instances on ``tier``."""
    found = index.db.query("SELECT DISTINCT study_uid FROM instance WHERE tier = ?", (tier,))
    return {_study_key(uid_path(Path(), study, "1", "1").as_posix()): study
            for (study,) in found}


def _study_rows(index: Index, tier: str, study: str) -> dict[str, _Indexed]:
    return {rel: _Indexed(sop, int(size), str(sha), int(off)) for sop, rel, size, sha, off in
            index.db.query("SELECT sop_uid, rel_path, size, sha256, ds_offset FROM instance "
                           "WHERE study_uid = ? AND tier = ?", (study, tier))}


class _Checker:
    """One pass over one tier. Files arrive grouped by study directory (a depth-first
    walk; a bucket listing in key order), so only one study's rows are in memory at a
    time, whatever the size of the archive."""

    def __init__(self, index: Index, name: str, tier: Tier, report: CheckReport, *,
                 verify: bool, cutoff: float, pending: set[tuple[str, str]],
                 rejected: set[tuple[str, str]]) -> None:
        self.index, self.name, self.tier, self.report = index, name, tier, report
        self.verify, self.cutoff, self.pending = verify, cutoff, pending
        self.rejected = rejected
        self.studies = _study_dirs(index, name)
        self.key: str | None = None
        self.rows: dict[str, _Indexed] = {}
        self.report_missing = True
        self.done: set[str] = set()

    def run(self) -> None:
        for rel, size, mtime in _tier_files(self.tier):
            key = _study_key(rel)
            if key != self.key:
                self._enter(key)
            self._file(rel, size, mtime)
        self._leave()
        for study in self.studies.values():  # indexed studies without a directory at all
            self.rows, self.report_missing = _study_rows(self.index, self.name, study), True
            self._leave()

    def _enter(self, key: str) -> None:
        self._leave()
        self.key = key
        study = self.studies.pop(key, None)
        if study is None and key in self.done and key:
            # seen before (a listing out of order): match files, report nothing missing twice
            study = _study_dirs(self.index, self.name).get(key)
            self.report_missing = False
        else:
            self.report_missing = True
        self.rows = _study_rows(self.index, self.name, study) if study is not None else {}

    def _leave(self) -> None:
        if self.report_missing:
            self.report.missing.extend(Problem(self.name, rel, row.sop_uid, "no file")
                                       for rel, row in self.rows.items())
        if self.key is not None:
            self.done.add(self.key)
        self.rows = {}

    def _file(self, rel: str, size: int, mtime: float) -> None:
        report, name = self.report, self.name
        report.files += 1
        row = self.rows.pop(rel, None)
        if row is None:
            if (name, rel) in self.pending:
                report.pending += 1
            elif (name, rel) in self.rejected:
                report.rejected += 1
            elif mtime > self.cutoff:
                report.young.append(Problem(name, rel, detail=f"{size} bytes"))
            else:
                kind = "temp file" if TMP_MARK in rel else f"{size} bytes"
                report.orphans.append(Problem(name, rel, detail=kind))
            return
        if size != row.size:
            report.wrong_size.append(Problem(
                name, rel, row.sop_uid, f"{size} bytes on disk, {row.size} indexed"))
            return
        if not self.verify:
            return
        report.verified += 1
        try:
            digest = _dataset_sha(self.tier, rel, row.ds_offset)
        except FileNotFoundError:
            report.missing.append(Problem(name, rel, row.sop_uid, "gone while checked"))
            return
        if digest != row.sha256:
            report.bad_checksum.append(Problem(
                name, rel, row.sop_uid, f"sha256 {digest[:16]}..., indexed {row.sha256[:16]}..."))


def check_archive(index: Index, tiers: dict[str, Tier], *, verify: bool = False,
                  remove_orphans: bool = False, min_age: float = 3600.0,
                  now: Callable[[], float] = time.time) -> CheckReport:
    """Compare the index with what the tiers hold (see the module docstring).

    ``remove_orphans``: the caller holds :func:`~.datalock.exclusive` on the data directory.
    """
    report = CheckReport()
    report.instances = int(index.db.query("SELECT COUNT(*) FROM instance")[0][0])
    placeholders = ",".join("?" * len(tiers)) or "''"
    for sop, t, rel in index.db.query(
            f"SELECT sop_uid, tier, rel_path FROM instance WHERE tier NOT IN ({placeholders})",
            tuple(tiers)):
        if "@" in t:  # another cluster node's receive cache: not uploaded yet
            node = t.split("@", 1)[1]
            report.elsewhere[node] = report.elsewhere.get(node, 0) + 1
        else:
            report.missing.append(Problem(t, rel, sop, "tier not configured"))
    pending = {(t, r) for t, r in index.db.query("SELECT tier, rel_path FROM pending_unlink")}
    # the files of instances rejection notes hid are known, not orphans
    rejected = {(t, r) for t, r in index.db.query(
        "SELECT tier, rel_path FROM rejection WHERE rel_path IS NOT NULL")}
    cutoff = now() - min_age
    for name, tier in tiers.items():
        _Checker(index, name, tier, report, verify=verify, cutoff=cutoff, pending=pending,
                 rejected=rejected).run()
    # Instances a retrieve refused to send since (checked again by ``verify``).
    report.flagged.extend(Problem(inst.tier, inst.rel_path, inst.sop_uid, reason)
                          for inst, reason, _ in index.flagged())
    # A running archive may have moved or deleted an instance since its rows were read.
    report.missing = [p for p in report.missing if _still_missing(index, tiers, p)]
    if remove_orphans:
        for p in report.orphans:
            tiers[p.tier].remove(p.rel_path)
            report.removed += 1
    return report
