"""Restore a backup made by :mod:`pacsinfra.dr.backup` into an empty archive data directory.

Every file is copied (never linked: the restored archive must not share inodes with
the backup) and verified against the manifest's size and sha256 before anything is
renamed into place; the index snapshot must list exactly the manifest's instances.
The target gets ``index.sqlite`` and one directory per tier (``<data>/<tier>``), which
is the quick form's layout (``archive serve --data NEWDIR`` with the default tier
``fast``); other tier names need a config with those tiers and relative paths.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

from pacsinfra.dr.backup import (
    INDEX_NAME,
    MANIFEST_NAME,
    SUMMARY_NAME,
    copy_fsync,
    fsync_tree,
)
from pacsinfra.errors import PacsinfraError, UsageError
from pacsinfra.fsutil import PRIVATE_DIR, PRIVATE_FILE, fsync_dir
from pacsinfra.pacs.archive.storage import dataset_sha256


class RestoreError(PacsinfraError):
    """A backup does not verify; nothing was restored."""


@dataclass
class RestoreSummary:
    """What a restore put where."""

    target: str
    studies: int
    instances: int
    bytes: int
    tiers: list[str]


def _safe_rel(text: str) -> Path:
    rel = Path(text)
    if rel.is_absolute() or ".." in rel.parts:
        raise RestoreError(f"manifest path {text!r} escapes the backup")
    return rel


def run_restore(source: Path, target: Path) -> RestoreSummary:
    """Verify the backup at ``source`` and restore it into the empty directory ``target``."""
    if not (source / SUMMARY_NAME).is_file():
        raise UsageError(f"{source} is not a complete pacsinfra backup (no {SUMMARY_NAME})")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} is not empty; restore only into a new or empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        lines = (source / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
        entries = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise RestoreError(f"{source / MANIFEST_NAME}: unreadable manifest: {exc}") from exc
    tmp = target.parent / f".{target.name}.restoring-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(mode=PRIVATE_DIR)
    try:
        shutil.copyfile(source / INDEX_NAME, tmp / INDEX_NAME)
        os.chmod(tmp / INDEX_NAME, PRIVATE_FILE)
        c = sqlite3.connect(str(tmp / INDEX_NAME))
        try:
            rows = {str(r[0]): (str(r[1]), str(r[2]), int(r[3]), str(r[4])) for r in c.execute(
                "SELECT sop_uid, tier, rel_path, size, sha256 FROM instance")}
        finally:
            c.close()
        seen: set[str] = set()
        total = 0
        for e in entries:
            sop = str(e["sop_uid"])
            src = source / _safe_rel(str(e["path"]))
            rel = _safe_rel(str(e["rel_path"]))
            row = rows.get(sop)
            if row is None or row != (e["tier"], str(rel), e["size"], e["sha256"]):
                raise RestoreError(f"{src}: manifest entry for {sop} does not match the index")
            dst = tmp / str(e["tier"]) / rel
            dst.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            try:
                copy_fsync(src, dst)
            except OSError as exc:
                raise RestoreError(f"{src}: cannot read backup file: {exc.strerror}") from exc
            size = dst.stat().st_size
            digest = dataset_sha256(dst, int(e["ds_offset"]))
            if size != e["size"] or digest != e["sha256"]:
                raise RestoreError(f"{src} is corrupt: size {size}, sha256 {digest} but the "
                                   f"manifest says size {e['size']}, sha256 {e['sha256']}")
            seen.add(sop)
            total += size
        missing = sorted(set(rows) - seen)
        if missing:
            raise RestoreError(f"the index lists {len(missing)} instances the manifest lacks, "
                               f"e.g. {missing[0]}")
        fsync_tree(tmp)
        if target.exists():
            target.rmdir()  # empty (checked above); the rename needs the name free
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except (KeyError, TypeError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RestoreError(f"{source / MANIFEST_NAME}: malformed entry ({exc!r})") from exc
    except sqlite3.Error as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RestoreError(f"{source / INDEX_NAME}: unreadable index snapshot: {exc}") from exc
    except PacsinfraError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RestoreError(f"restore into {target} failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RestoreSummary(str(target), len({str(e["study_uid"]) for e in entries}),
                          len(entries), total, sorted({str(e["tier"]) for e in entries}))
