"""A cluster on an object store: each node receives into its own cache and uploads.

Three nodes, one PostgreSQL index, moto's S3 server. A study stored at node 1 is uploaded
in the background, found by C-FIND at node 2 and retrieved byte for byte from node 3. Then node 1's uploads fail
(its store endpoint is unreachable) and it is killed with instances not uploaded:
node 2 still finds them, ``archive check`` names node 1 as holding them, and a C-MOVE
from node 2 fails just those. Node 1 started again on its disk uploads them, and node 2
retrieves everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from pg_fixture import PgCluster, postgres  # noqa: F401 - fixture
from s3_fixture import BUCKET, S3Server, s3_server  # noqa: F401 - fixture
from test_archive_cluster import _fresh_database
from test_archive_support import REPO, Archive, dcmtk, wait_port

pytestmark = pytest.mark.integration
need_module("pynetdicom")
need_module("psycopg")

from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from test_archive_dicom import dataset_bytes, find, q, send_files  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402


def _node(root: Path, name: str, index: dict[str, object], endpoint: str,
          peers: dict[str, Any], port: int | None = None) -> Archive:
    node = Archive(root / name, aet="ARCHIVE", config={
        "index": index,
        "tiers": [{"name": "cache"},  # under this node's data_dir
                  {"name": "store", "kind": "s3", "endpoint": endpoint, "bucket": BUCKET,
                   "path": "cluster/", "access_key": {"env": "AWS_ACCESS_KEY_ID"},
                   "secret_key": {"env": "AWS_SECRET_ACCESS_KEY"}}],
        "cluster": {"enabled": True, "node": name, "heartbeat_seconds": 0.5,
                    "lease_seconds": 3, "upload_to": "store"},
        "peers": peers})
    if port is not None:
        node.port = port
    return node


def _stored_where(pg: PgCluster, sops: list[str]) -> dict[str, str]:
    import psycopg

    dsn = f"host={pg.host} port={pg.port} dbname=cluster_s3 user={pg.user}"
    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT sop_uid, tier FROM instance WHERE sop_uid = ANY(%s)",
                         (sops,)).fetchall()
    return {str(a): str(b) for a, b in rows}


def _wait_uploaded(pg: PgCluster, sops: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        where = _stored_where(pg, sops)
        if len(where) == len(sops) and set(where.values()) == {"store"}:
            return
        assert time.monotonic() < deadline, where
        time.sleep(0.2)


def _move(port: int, study: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("movescu"), "-S", "-aet", "TESTSCU", "-aec", "ARCHIVE",
                           "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY", "-k",
                           f"StudyInstanceUID={study}", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_receive_cache_upload_and_a_lost_node(postgres: PgCluster,  # noqa: F811
                                              s3_server: S3Server,  # noqa: F811
                                              tmp_path: Path) -> None:
    index = _fresh_database(postgres, "cluster_s3")
    out = tmp_path / "received"
    out.mkdir()
    scp_port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", "-od", str(out), str(scp_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(scp_port, proc=scp)
    peers = {"DEST": {"ae_title": "DEST", "host": "127.0.0.1", "port": scp_port}}
    env = s3_server.env()
    n1 = _node(tmp_path, "n1", index, s3_server.endpoint, peers)
    n2 = _node(tmp_path, "n2", index, s3_server.endpoint, peers)
    n3 = _node(tmp_path, "n3", index, s3_server.endpoint, peers)
    for n in (n1, n2, n3):
        n.extra_env = env
        n.start()
    nodes = [n1, n2, n3]
    try:
        study, series = generate_uid(), generate_uid()
        files = [write(make_instance(study_uid=study, series_uid=series, instance_number=i + 1,
                                     rows=32, cols=32, random_pixels=True), tmp_path / f"{i}.dcm")
                 for i in range(5)]
        sops = [str(dcmread(f).SOPInstanceUID) for f in files]
        assert send_files(n1.port, files) == [0] * 5
        _wait_uploaded(postgres, sops)
        assert list((n1.data / "cache").rglob("*.dcm")) == []  # the cache is emptied
        matches, status = find(n2.port, q("IMAGE", StudyInstanceUID=study, SOPInstanceUID=""))
        assert status == 0 and {str(m.SOPInstanceUID) for m in matches} == set(sops)
        assert _move(n3.port, study).returncode == 0
        got = {str(dcmread(p).SOPInstanceUID): dataset_bytes(p) for p in out.iterdir()}
        assert got == {str(dcmread(f).SOPInstanceUID): dataset_bytes(f) for f in files}

        # node 1 cannot reach the store, receives, and dies before uploading
        n1.stop()
        dead_end = f"http://127.0.0.1:{free_port()}"
        n1b = _node(tmp_path, "n1", index, dead_end, peers, port=n1.port)
        n1b.extra_env = env
        n1b.start()
        nodes[0] = n1b
        study2, series2 = generate_uid(), generate_uid()
        files2 = [write(make_instance(study_uid=study2, series_uid=series2, instance_number=i + 1,
                                      rows=32, cols=32, random_pixels=True),
                        tmp_path / f"b{i}.dcm") for i in range(4)]
        sops2 = [str(dcmread(f).SOPInstanceUID) for f in files2]
        assert send_files(n1b.port, files2) == [0] * 4
        time.sleep(1.0)
        assert set(_stored_where(postgres, sops2).values()) == {"cache@n1"}
        n1b.kill9()
        matches, status = find(n2.port, q("IMAGE", StudyInstanceUID=study2, SOPInstanceUID=""))
        assert status == 0 and len(matches) == 4  # indexed: the cluster knows them
        check = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check",
                                "--config", str(n2.data.parent / "n2.yaml"), "--json"],
                               capture_output=True, text=True, cwd=REPO, timeout=60,
                               env={**os.environ, **env})
        report = json.loads(check.stdout)
        assert report["not_uploaded_by_node"] == {"n1": 4}, check.stdout + check.stderr
        assert report["missing"] == []
        mv = _move(n2.port, study2)
        assert "Failed" in mv.stderr + mv.stdout or mv.returncode != 0
        assert "receive cache, not uploaded yet" in n2.logs()

        # node 1 rebuilt on its disk, with the store reachable: it uploads them
        n1c = _node(tmp_path, "n1", index, s3_server.endpoint, peers, port=n1.port)
        n1c.extra_env = env
        n1c.start()
        nodes[0] = n1c
        _wait_uploaded(postgres, sops2)
        for p in out.iterdir():
            p.unlink()
        assert _move(n2.port, study2).returncode == 0
        got = {str(dcmread(p).SOPInstanceUID): dataset_bytes(p) for p in out.iterdir()}
        assert got == {str(dcmread(f).SOPInstanceUID): dataset_bytes(f) for f in files2}
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                assert n.stop() == 0, n.logs()[-3000:]
        scp.terminate()
        scp.wait()
