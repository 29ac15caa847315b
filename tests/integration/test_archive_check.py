"""``pacsinfra archive check``: the index and the files compared (missing, wrong size,
bad checksum, orphans), and orphans removed only when the archive is stopped. Real
archive process, real files."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_archive_support import REPO, Archive, scu_ae

pytestmark = pytest.mark.integration

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402


def _check(data: Path, *extra: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check", "--data",
                        str(data), "--json", *extra], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode, json.loads(r.stdout)


def _store(port: int, tmp: Path, n: int) -> None:
    study, series = generate_uid(), generate_uid()
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        for i in range(n):
            ds = make_instance(rows=32, cols=32, patient_id="CHECK", study_uid=study,
                               series_uid=series, instance_number=i + 1)
            assert assoc.send_c_store(write(ds, tmp / f"{i}.dcm")).Status == 0
    finally:
        assoc.release()


def _files(data: Path) -> list[tuple[str, Path]]:
    con = sqlite3.connect(data / "index.sqlite")
    try:
        rows = con.execute("SELECT sop_uid, tier, rel_path FROM instance ORDER BY sop_uid")
        return [(sop, data / tier / rel) for sop, tier, rel in rows.fetchall()]
    finally:
        con.close()


def test_check_finds_damage_and_removes_old_orphans_only_when_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    arch = Archive(data).start()
    try:
        _store(arch.port, tmp_path, 6)
        rc, rep = _check(data, "--verify")
        assert rc == 0 and rep["clean"], rep
        assert (rep["instances"], rep["files"], rep["verified"]) == (6, 6, 6)

        files = _files(data)
        # an orphan as a crash leaves it (a durable file whose row never committed),
        # an hour old; and one just written (its store may still be in flight)
        old = files[0][1].with_name(f"{generate_uid()}.0123456789abcdef0000.dcm")
        shutil.copyfile(files[0][1], old)
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        young = files[0][1].with_name(f"{generate_uid()}.fedcba98765432100000.dcm")
        shutil.copyfile(files[0][1], young)
        rc, rep = _check(data)
        assert rc == 1 and not rep["clean"]
        assert [o["rel_path"] for o in rep["orphans"]] == [str(old.relative_to(data / "fast"))]
        assert [o["rel_path"] for o in rep["young_unindexed"]] == [
            str(young.relative_to(data / "fast"))]
        assert not rep["missing"] and not rep["wrong_size"]

        # never beside a running archive
        r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check", "--data",
                            str(data), "--remove-orphans"], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        assert r.returncode == 1 and "an archive is serving from" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert old.exists()
    finally:
        assert arch.stop() == 0

    (sop_a, a), (sop_b, b), (sop_c, c) = files[1], files[2], files[3]
    with a.open("r+b") as f:  # truncated
        f.truncate(a.stat().st_size - 100)
    raw = bytearray(b.read_bytes())  # one pixel changed, same size
    raw[-10] ^= 0xFF
    b.write_bytes(raw)
    c.unlink()

    rc, rep = _check(data)
    assert rc == 1
    assert [(p["sop_uid"], p["detail"]) for p in rep["missing"]] == [(sop_c, "no file")]
    assert [p["sop_uid"] for p in rep["wrong_size"]] == [sop_a]
    assert rep["bad_checksum"] == [] and rep["verified"] == 0  # size alone cannot see it
    rc, rep = _check(data, "--verify")
    assert [p["sop_uid"] for p in rep["bad_checksum"]] == [sop_b]
    assert rep["verified"] == 4  # the truncated and the missing file are not hashed

    rc, rep = _check(data, "--remove-orphans")
    assert rep["orphans_removed"] == 1 and not old.exists()
    assert young.exists(), "a file younger than --min-age is never removed"
    assert rc == 1  # the damage is still reported

    # human-readable form: every problem named, with its instance
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check", "--data",
                        str(data)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1
    assert f"missing: fast:{c.relative_to(data / 'fast')} ({sop_c}): no file" in r.stderr
    assert f"({sop_a})" in r.stderr and "problems found" in r.stdout


def test_check_bad_input(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check", "--data",
                        str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert r.returncode == 2 and "no such data directory" in r.stderr
    assert "Traceback" not in r.stderr
