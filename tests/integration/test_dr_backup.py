"""``pacsinfra backup`` / ``restore`` against a real running archive.

Store studies, back up while another sender keeps storing, store more, back up again;
restore the first backup into a new directory, start an archive on it and check by
C-FIND that exactly the first backup's studies/instances are there, and by C-GET that
an instance is byte-identical to what was sent. A corrupted file in a backup makes
restore fail naming it; PostgreSQL indexes, existing targets and non-empty restore
targets are refused with exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module
from test_archive_support import REPO, Archive, scu_ae

pytestmark = pytest.mark.integration

need_module("pynetdicom")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filereader import read_file_meta_info  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import _config as pnd_config  # noqa: E402
from pynetdicom import build_role, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from pacsinfra.pacs.archive.synth import CT_IMAGE, make_instance, write  # noqa: E402

pnd_config.STORE_SEND_CHUNKED_DATASET = True  # send files as they are on disk


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pacsinfra", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    glen = int.from_bytes(data[140:144], "little")
    return data[144 + glen:]


def make_studies(tmp: Path, n: int, per: int, tag: str) -> dict[str, list[Path]]:
    """``n`` studies of ``per`` CT instances each, written as files; study UID -> files."""
    out: dict[str, list[Path]] = {}
    for s in range(n):
        st = generate_uid()
        se = generate_uid()
        files = []
        for i in range(per):
            ds = make_instance(patient_id=f"{tag}{s}", study_uid=st, series_uid=se,
                               instance_number=i + 1, rows=32, cols=32, random_pixels=True)
            files.append(write(ds, tmp / f"{tag}-{s}-{i}.dcm"))
        out[st] = files
    return out


def send(port: int, files: list[Path]) -> None:
    ae = scu_ae()
    ae.add_requested_context(CT_IMAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        for f in files:
            assert read_file_meta_info(f).TransferSyntaxUID == ExplicitVRLittleEndian
            st = assoc.send_c_store(f)
            assert st.Status == 0, hex(st.Status)
    finally:
        assoc.release()


def studies_by_find(port: int) -> dict[str, int]:
    """Study UID -> NumberOfStudyRelatedInstances, by a study-level C-FIND."""
    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ident.NumberOfStudyRelatedInstances = ""
    out: dict[str, int] = {}
    try:
        for status, found in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in (0xFF00, 0xFF01):
                out[str(found.StudyInstanceUID)] = int(found.NumberOfStudyRelatedInstances)
    finally:
        assoc.release()
    return out


def c_get_raw(port: int, sop_uid: str, study_uid: str) -> list[bytes]:
    """C-GET one instance; the dataset bytes exactly as the archive sent them."""
    received: list[bytes] = []

    def on_store(event: Any) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0

    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CT_IMAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE",
                         ext_neg=[build_role(CT_IMAGE, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = study_uid
    ident.SOPInstanceUID = sop_uid
    try:
        finals = list(assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert finals[-1][0].Status == 0
    return received


def manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]


def test_backup_while_running_then_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = tmp_path / "files"
    files.mkdir()
    first = make_studies(files, 3, 4, "A")
    during = make_studies(files, 4, 4, "B")
    later = make_studies(files, 2, 3, "C")
    archive = Archive(src).start()
    restored: Archive | None = None
    try:
        for fs in first.values():
            send(archive.port, fs)
        # Another modality keeps storing while the first backup runs.
        sender = threading.Thread(target=lambda: [send(archive.port, fs) for fs in during.values()])
        sender.start()
        r1 = cli("backup", "--data", str(src), "--to", str(tmp_path / "b1"), "--json")
        sender.join()
        assert r1.returncode == 0, r1.stderr
        s1 = json.loads(r1.stdout)
        m1 = manifest(tmp_path / "b1")
        assert s1["instances"] == len(m1) and s1["linked"] == len(m1)  # same filesystem
        assert s1["source_ae"].startswith("ARCHIVE@")
        assert not list(tmp_path.glob(".b1.partial-*"))
        b1_studies = Counter(e["study_uid"] for e in m1)
        # The first studies are complete; the concurrent ones are a prefix of what was sent.
        assert all(b1_studies[st] == 4 for st in first)
        assert set(b1_studies) <= set(first) | set(during)

        for fs in later.values():
            send(archive.port, fs)
        r2 = cli("backup", "--data", str(src), "--to", str(tmp_path / "b2"), "--json")
        assert r2.returncode == 0, r2.stderr
        s2 = json.loads(r2.stdout)
        assert s2["instances"] == 3 * 4 + 4 * 4 + 2 * 3
        assert s2["studies"] == 9

        # Restore the first backup; start an archive on it.
        rr = cli("restore", "--from", str(tmp_path / "b1"), "--data", str(tmp_path / "r1"))
        assert rr.returncode == 0, rr.stderr
        assert f"{len(m1)} instances" in rr.stdout
        restored = Archive(tmp_path / "r1").start()
        assert studies_by_find(restored.port) == dict(b1_studies)

        st0, fs0 = next(iter(first.items()))
        sop0 = str(make_sop(fs0[1]))
        got = c_get_raw(restored.port, sop0, st0)
        assert got == [dataset_bytes(fs0[1])]

        # Restore refuses a non-empty target and an incomplete backup.
        again = cli("restore", "--from", str(tmp_path / "b1"), "--data", str(tmp_path / "r1"))
        assert again.returncode == 2 and "not empty" in again.stderr
        partial = tmp_path / "partial"
        partial.mkdir()
        bad = cli("restore", "--from", str(partial), "--data", str(tmp_path / "r9"))
        assert bad.returncode == 2 and "not a complete" in bad.stderr
        exists = cli("backup", "--data", str(src), "--to", str(tmp_path / "b1"))
        assert exists.returncode == 2 and "already exists" in exists.stderr

        # A corrupted file (in a copied backup: the linked one shares the archive's inodes).
        r3 = cli("backup", "--data", str(src), "--to", str(tmp_path / "b3"), "--copy", "--json")
        assert r3.returncode == 0, r3.stderr
        assert json.loads(r3.stdout)["copied"] == s2["instances"]
        victim = tmp_path / "b3" / manifest(tmp_path / "b3")[5]["path"]
        raw = bytearray(victim.read_bytes())
        raw[-3] ^= 0xFF
        victim.write_bytes(bytes(raw))
        rc = cli("restore", "--from", str(tmp_path / "b3"), "--data", str(tmp_path / "r3"))
        assert rc.returncode == 1
        assert str(victim) in rc.stderr and "corrupt" in rc.stderr
        assert not (tmp_path / "r3").exists()
        assert not list(tmp_path.glob(".r3.restoring-*"))
        # The live archive was not touched by any of it.
        assert sum(studies_by_find(archive.port).values()) == s2["instances"]
    finally:
        archive.stop()
        if restored is not None:
            restored.stop()


def make_sop(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def test_unreachable_postgresql_index_is_a_message(tmp_path: Path) -> None:
    from conftest import free_port

    cfg = tmp_path / "archive.yaml"
    cfg.write_text(f"ae_title: ARCHIVE\ndata_dir: {tmp_path / 'd'}\n"
                   f"index: {{backend: postgresql, host: 127.0.0.1, port: {free_port()}}}\n")
    r = cli("backup", "--archive-config", str(cfg), "--to", str(tmp_path / "b"))
    assert r.returncode != 0
    assert "postgresql" in r.stderr.lower() and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.partial-*"))


def test_bad_input_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    r = cli("backup", "--data", str(tmp_path / "none"), "--to", str(tmp_path / "b"))
    assert r.returncode == 2 and "no archive index" in r.stderr
    assert not list(tmp_path.glob(".b.partial-*")) and not (tmp_path / "b").exists()
    assert cli("backup", "--to", str(tmp_path / "b")).returncode == 2
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "backup.json").write_text("{}")
    (fake / "manifest.jsonl").write_text('{"x": 1}\n')
    r = cli("restore", "--from", str(fake), "--data", str(tmp_path / "r"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "Internal error" not in r.stderr
    assert not (tmp_path / "r").exists()
