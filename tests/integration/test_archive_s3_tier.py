"""An S3 object tier: the lifecycle moves studies there (verified), retrieval reads them
back, deletion removes the objects. Real archive process, real S3 HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module
from s3_fixture import BUCKET, S3Server, s3_server  # noqa: F401 - fixture
from test_archive_support import REPO, Archive, scu_ae

pytestmark = pytest.mark.integration

need_module("pynetdicom")

from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import build_role, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402


def config(s3: S3Server, prefix: str) -> dict[str, Any]:
    return {
        "tiers": [{"name": "fast"},
                  {"name": "cold", "kind": "s3", "endpoint": s3.endpoint, "bucket": BUCKET,
                   "path": prefix, "access_key": {"env": "AWS_ACCESS_KEY_ID"},
                   "secret_key": {"env": "AWS_SECRET_ACCESS_KEY"}}],
        "lifecycle": [{"from_tier": "fast", "to_tier": "cold", "older_than_days": 0}],
    }


def c_get(port: int, study: str) -> list[Dataset]:
    got: list[Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        return 0

    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    try:
        finals = list(assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert finals[-1][0].Status == 0, finals[-1][0]
    return got


def test_lifecycle_to_s3_then_retrieve_and_delete(s3_server: S3Server, tmp_path: Path,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    arch = Archive(tmp_path / "data", config=config(s3_server, "site-a"))
    arch.start()
    study = generate_uid()
    sent = {}
    try:
        ae = scu_ae()
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        for i in range(3):
            ds = make_instance(rows=32, cols=32, patient_id="S3TIER", study_uid=study,
                               instance_number=i + 1)
            f = write(ds, tmp_path / f"{i}.dcm")
            sent[str(ds.SOPInstanceUID)] = dcmread(f).PixelData
            assert assoc.send_c_store(f).Status == 0
        assoc.release()
    finally:
        arch.stop()
    cfg = tmp_path / "data.yaml"
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "lifecycle", "--config",
                        str(cfg)], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    s3 = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="site-a/")["Contents"]]
    assert len(keys) == 3 and all(k.endswith(".dcm") for k in keys)
    assert not list((tmp_path / "data" / "fast").rglob("*.dcm")), "sources not deleted"

    # archive check reads the bucket too: every object re-hashed, then a stray object
    # (an orphan) found and removed
    def check(*extra: str) -> tuple[int, dict[str, Any]]:
        r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check", "--config",
                            str(cfg), "--verify", "--json", *extra], capture_output=True,
                           text=True, timeout=120, cwd=REPO, env=dict(os.environ))
        assert r.returncode in (0, 1), r.stdout + r.stderr
        return r.returncode, json.loads(r.stdout)

    rc, rep = check()
    assert rc == 0 and (rep["instances"], rep["files"], rep["verified"]) == (3, 3, 3), rep
    stray = keys[0].rsplit("/", 1)[0] + f"/{generate_uid()}.00000000000000000000.dcm"
    s3.put_object(Bucket=BUCKET, Key=stray, Body=b"not indexed")
    rc, rep = check("--min-age", "0")
    assert rc == 1 and [o["rel_path"] for o in rep["orphans"]] == [stray[len("site-a/"):]]
    rc, rep = check("--min-age", "0", "--remove-orphans")
    assert rep["orphans_removed"] == 1 and rc == 0
    assert stray not in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]

    arch.start()
    try:
        got = c_get(arch.port, study)
        assert {str(d.SOPInstanceUID): d.PixelData for d in got} == sent
        # a study deleted from the archive loses its objects too
        d = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "delete", "--config",
                            str(cfg), study], capture_output=True, text=True, timeout=120,
                           cwd=REPO, env=dict(os.environ))
        assert d.returncode == 0, d.stdout + d.stderr
    finally:
        arch.stop()
    left = s3.list_objects_v2(Bucket=BUCKET, Prefix="site-a/").get("KeyCount", 0)
    assert left == 0


def test_default_tier_must_be_a_filesystem(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    import yaml

    cfg = config(s3_server, "x")
    cfg["tiers"].reverse()  # the s3 tier first: it would be the default tier
    path = tmp_path / "archive.yaml"
    path.write_text(yaml.safe_dump({"ae_title": "ARCHIVE", "data_dir": str(tmp_path / "d"), **cfg}))
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
                        str(path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "must be a filesystem tier" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
