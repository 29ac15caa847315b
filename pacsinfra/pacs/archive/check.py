"""``pacsinfra archive check``: the index and the tiers compared, file by file.

What it finds:

- **missing**: an indexed instance whose file is not on its tier;
- **wrong size**: a file whose size differs from the index's;
- **bad checksum** (``verify``): a file whose data set no longer hashes to the
  index's SHA-256 (bit rot, a file changed behind the archive's back);
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

from pacsinfra.pacs.archive.index import Index
from pacsinfra.pacs.archive.objects import ObjectTier
from pacsinfra.pacs.archive.storage import TMP_MARK, Tier

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
    pending: int = 0  # files of interrupted deletions (the next start removes them)
    removed: int = 0

    @property
    def damaged(self) -> bool:
        """Indexed instances whose file is gone or not what was stored."""
        return bool(self.missing or self.wrong_size or self.bad_checksum)

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
            "orphans": rows(self.orphans), "young_unindexed": rows(self.young),
            "pending_deletions": self.pending, "orphans_removed": self.removed,
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


def check_archive(index: Index, tiers: dict[str, Tier], *, verify: bool = False,
                  remove_orphans: bool = False, min_age: float = 3600.0,
                  now: Callable[[], float] = time.time) -> CheckReport:
    """Compare the index with what the tiers hold (see the module docstring).

    ``remove_orphans``: the caller holds :func:`~.datalock.exclusive` on the data directory.
    """
    report = CheckReport()
    indexed: dict[str, dict[str, _Indexed]] = {name: {} for name in tiers}
    unknown_tier: list[Problem] = []
    for sop, tier_name, rel, size, sha, ds_offset in index.db.query(
            "SELECT sop_uid, tier, rel_path, size, sha256, ds_offset FROM instance"):
        report.instances += 1
        if tier_name not in indexed:
            unknown_tier.append(Problem(tier_name, rel, sop, "tier not configured"))
            continue
        indexed[tier_name][rel] = _Indexed(sop, int(size), str(sha), int(ds_offset))
    report.missing.extend(unknown_tier)
    pending = {(t, r) for t, r in index.db.query("SELECT tier, rel_path FROM pending_unlink")}
    cutoff = now() - min_age
    for name, tier in tiers.items():
        rows = indexed[name]
        seen: set[str] = set()
        for rel, size, mtime in _tier_files(tier):
            report.files += 1
            row = rows.get(rel)
            if row is None:
                if (name, rel) in pending:
                    report.pending += 1
                elif mtime > cutoff:
                    report.young.append(Problem(name, rel, detail=f"{size} bytes"))
                else:
                    kind = "temp file" if TMP_MARK in rel else f"{size} bytes"
                    report.orphans.append(Problem(name, rel, detail=kind))
                continue
            seen.add(rel)
            if size != row.size:
                report.wrong_size.append(Problem(
                    name, rel, row.sop_uid, f"{size} bytes on disk, {row.size} indexed"))
                continue
            if verify:
                report.verified += 1
                try:
                    digest = _dataset_sha(tier, rel, row.ds_offset)
                except FileNotFoundError:
                    report.missing.append(Problem(name, rel, row.sop_uid, "gone while checked"))
                    continue
                if digest != row.sha256:
                    report.bad_checksum.append(Problem(
                        name, rel, row.sop_uid, f"sha256 {digest[:16]}..., "
                        f"indexed {row.sha256[:16]}..."))
        report.missing.extend(Problem(name, rel, row.sop_uid, "no file")
                              for rel, row in rows.items() if rel not in seen)
    # A running archive may have moved or deleted an instance since the index was read.
    report.missing = [p for p in report.missing if _still_missing(index, tiers, p)]
    if remove_orphans:
        for p in report.orphans:
            tiers[p.tier].remove(p.rel_path)
            report.removed += 1
    return report
