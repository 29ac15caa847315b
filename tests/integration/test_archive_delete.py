"""Study deletion (DICOMweb DELETE, ``pacsinfra archive delete``), the crash-safe sweep of
interrupted deletions, and ``retention_days`` enforced by the lifecycle pass."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, need_module
from test_archive_support import REPO, Archive, dcmtk, scu_ae, wait_port

pytestmark = pytest.mark.integration

need_module("starlette")
need_module("uvicorn")

import requests  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

TOKEN = "delete-test-token"


def _study(tmp: Path, name: str, n_series: int, per_series: int) -> tuple[str, list[Path]]:
    study = generate_uid()
    files = []
    for s in range(n_series):
        series = generate_uid()
        for i in range(per_series):
            ds = make_instance(study_uid=study, series_uid=series, patient_id=f"DEL{name}",
                               instance_number=i + 1, series_number=s + 1)
            files.append(write(ds, tmp / f"{name}-{s}-{i}.dcm"))
    return study, files


def _store(port: int, files: list[Path]) -> None:
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        assert [int(assoc.send_c_store(f).Status) for f in files] == [0] * len(files)
    finally:
        assoc.release()


def _find_study(port: int, study: str) -> list[Dataset]:
    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    ident.NumberOfStudyRelatedInstances = None
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        out = []
        for status, found in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
            assert status is not None
            if status.Status in (0xFF00, 0xFF01):
                out.append(found)
        return out
    finally:
        assoc.release()


def _paths(data: Path, study: str) -> list[Path]:
    con = sqlite3.connect(data / "index.sqlite")
    try:
        rows = con.execute("SELECT tier, rel_path FROM instance WHERE study_uid = ?",
                           (study,)).fetchall()
    finally:
        con.close()
    return [data / tier / rel for tier, rel in rows]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsinfra", "archive", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_delete_via_dicomweb(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    audit = tmp_path / "audit.jsonl"
    http = free_port()
    arch = Archive(tmp_path / "data", config={
        "audit": {"file": str(audit)},
        "dicomweb": {"enabled": True, "bind": "127.0.0.1", "port": http,
                     "token": {"file": str(token)}}}).start()
    url = f"http://127.0.0.1:{http}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        wait_port(http, proc=arch.proc)
        a, a_files = _study(tmp_path, "A", 2, 2)
        b, b_files = _study(tmp_path, "B", 1, 3)
        _store(arch.port, a_files + b_files)
        a_paths, b_paths = _paths(arch.data, a), _paths(arch.data, b)
        assert len(a_paths) == 4 and all(p.exists() for p in a_paths)

        assert requests.delete(f"{url}/studies/{a}", timeout=30).status_code == 401
        assert _find_study(arch.port, a)  # an unauthorised DELETE deleted nothing
        r = requests.delete(f"{url}/studies/{a}", headers=auth, timeout=30)
        assert r.status_code == 204, r.text
        assert _find_study(arch.port, a) == []
        assert not any(p.exists() for p in a_paths)
        assert requests.delete(f"{url}/studies/{a}", headers=auth, timeout=30).status_code == 404
        assert requests.delete(f"{url}/studies/1.2.3.4.5.999", headers=auth,
                               timeout=30).status_code == 404
        assert requests.delete(f"{url}/studies/not..a-uid", headers=auth,
                               timeout=30).status_code == 400

        # The other study is intact; one of its instances can go alone.
        left = _find_study(arch.port, b)
        assert len(left) == 1 and int(left[0].NumberOfStudyRelatedInstances) == 3
        assert all(p.exists() for p in b_paths)
        con = sqlite3.connect(arch.data / "index.sqlite")
        series, sop, rel = con.execute(
            "SELECT series_uid, sop_uid, rel_path FROM instance WHERE study_uid = ? "
            "ORDER BY sop_uid LIMIT 1", (b,)).fetchone()
        con.close()
        r = requests.delete(f"{url}/studies/{b}/series/{series}/instances/{sop}", headers=auth,
                            timeout=30)
        assert r.status_code == 204, r.text
        left = _find_study(arch.port, b)
        assert int(left[0].NumberOfStudyRelatedInstances) == 2
        assert sum(p.exists() for p in b_paths) == 2
        assert not (arch.data / "fast" / rel).exists()
        qido = requests.get(f"{url}/studies/{b}/instances", headers=auth, timeout=30).json()
        assert sop not in {i["00080018"]["Value"][0] for i in qido}
    finally:
        assert arch.stop() == 0
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    deletes = [e for e in events if e["EventIdentification"]["EventID"]["code"] == "110105"]
    deleted = [e for e in deletes if e["EventIdentification"]["EventOutcomeIndicator"] == 0]
    assert [e["ParticipantObjectIdentification"][0]["ParticipantObjectID"] for e in deleted] == [
        a, b]
    assert deleted[0]["EventIdentification"]["EventActionCode"] == "D"
    # the refused ones (404, 404, 400) are audited too: outcome "minor failure", the source
    # address and the reason; the DELETE without a token as a failed authentication
    refused = [e for e in deletes if e["EventIdentification"]["EventOutcomeIndicator"] == 4]
    assert [e["ParticipantObjectIdentification"][0]["ParticipantObjectDescription"]
            ["HTTPStatus"] for e in refused] == [404, 404, 400]
    assert all(e["ActiveParticipant"][0]["NetworkAccessPointID"] == "127.0.0.1"
               for e in refused)
    assert "not a valid UID" in refused[2]["EventIdentification"]["EventOutcomeDescription"]
    logins = [e for e in events if e["EventIdentification"]["EventID"]["code"] == "110114"]
    assert len(logins) == 1 and logins[0]["EventIdentification"]["EventOutcomeIndicator"] == 4


def test_delete_via_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    arch = Archive(data).start()
    try:
        a, a_files = _study(tmp_path, "A", 1, 3)
        b, b_files = _study(tmp_path, "B", 1, 2)
        r = subprocess.run([dcmtk("storescu"), "-aec", "ARCHIVE", "127.0.0.1", str(arch.port),
                            *map(str, a_files + b_files)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        a_paths, b_paths = _paths(data, a), _paths(data, b)
        assert len(a_paths) == 3 and len(b_paths) == 2

        # Deleted while the archive runs (SQLite WAL: another process may write).
        r = _cli("delete", "--data", str(data), a)
        assert r.returncode == 0, r.stderr
        assert "3 instances, 3 files removed" in r.stdout
        assert _find_study(arch.port, a) == []
        assert not any(p.exists() for p in a_paths)
        left = _find_study(arch.port, b)
        assert len(left) == 1 and int(left[0].NumberOfStudyRelatedInstances) == 2
        assert all(p.exists() for p in b_paths)

        r = _cli("delete", "--data", str(data), a)
        assert r.returncode == 1
        assert f"study {a} is not in the archive" in r.stderr and "Traceback" not in r.stderr
        r = _cli("delete", "--data", str(data), "../../etc")
        assert r.returncode == 2 and "not a valid DICOM UID" in r.stderr
        r = _cli("delete", a)
        assert r.returncode == 2 and "--config" in r.stderr
    finally:
        assert arch.stop() == 0


def test_interrupted_delete_is_finished_at_restart(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pacsinfra.pacs.archive.delete as delete_mod
    from pacsinfra.pacs.archive.config import IndexConfig
    from pacsinfra.pacs.archive.db import open_database
    from pacsinfra.pacs.archive.index import Index
    from pacsinfra.pacs.archive.storage import Tier

    data = tmp_path / "data"
    arch = Archive(data).start()
    a, a_files = _study(tmp_path, "A", 1, 2)
    b, b_files = _study(tmp_path, "B", 1, 2)
    _store(arch.port, a_files + b_files)
    assert arch.stop() == 0
    a_paths, b_paths = _paths(data, a), _paths(data, b)

    def crash(self: Tier, rel: str) -> None:  # "the process died before unlinking"
        raise OSError("simulated crash before unlink")

    monkeypatch.setattr(Tier, "remove", crash)
    index = Index(open_database(IndexConfig(), data))
    tiers = {"fast": Tier("fast", data / "fast", 95)}
    report = delete_mod.delete_study(index, tiers, a)
    assert report is not None and report.instances == 2 and report.files_removed == 0
    # A journalled path that is indexed again (re-sent study) must never be unlinked.
    with index.db.transaction() as cur:
        cur.execute("INSERT INTO pending_unlink (tier, rel_path, queued_at) VALUES (?, ?, ?)",
                    ("fast", str(b_paths[0].relative_to(data / "fast")), time.time()))
    index.close()
    assert all(p.exists() for p in a_paths)  # rows gone first, files still there
    assert _paths(data, a) == []

    arch = Archive(data).start()
    try:
        assert _find_study(arch.port, a) == []
        assert not any(p.exists() for p in a_paths)
        assert all(p.exists() for p in b_paths)
        assert len(_find_study(arch.port, b)) == 1
    finally:
        assert arch.stop() == 0
    con = sqlite3.connect(data / "index.sqlite")
    assert con.execute("SELECT COUNT(*) FROM pending_unlink").fetchone() == (0,)
    con.close()


def test_retention_days_deletes_old_studies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg_path = tmp_path / "archive.yaml"
    audit = tmp_path / "audit.jsonl"
    arch = Archive(data, config={"retention_days": 30, "audit": {"file": str(audit)}}).start()
    try:
        old, old_files = _study(tmp_path, "OLD", 1, 2)
        new, new_files = _study(tmp_path, "NEW", 1, 2)
        _store(arch.port, old_files + new_files)
    finally:
        assert arch.stop() == 0
    old_paths, new_paths = _paths(data, old), _paths(data, new)
    con = sqlite3.connect(data / "index.sqlite")
    with con:  # backdate the old study's receive time past the retention period
        con.execute("UPDATE instance SET received_at = ? WHERE study_uid = ?",
                    (time.time() - 31 * 86400, old))
    con.close()
    cfg_path.write_text(json.dumps({"data_dir": str(data), "retention_days": 30,
                                    "audit": {"file": str(audit)},
                                    "dicomweb": {"enabled": False}}))
    r = _cli("lifecycle", "--config", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert "retention (30 days): deleted 1 studies (2 instances)" in r.stdout
    assert not any(p.exists() for p in old_paths) and all(p.exists() for p in new_paths)
    r = _cli("lifecycle", "--config", str(cfg_path))  # nothing more is old enough
    assert "deleted 0 studies" in r.stdout

    arch = Archive(data, config={"retention_days": 30}).start()
    try:
        assert _find_study(arch.port, old) == []
        assert len(_find_study(arch.port, new)) == 1
    finally:
        assert arch.stop() == 0
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(e["EventIdentification"]["EventID"]["code"] == "110105"
               and e["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == old
               for e in events)
