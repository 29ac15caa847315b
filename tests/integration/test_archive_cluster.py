"""Three archive nodes as one archive: one PostgreSQL index, one shared file system path.

The nodes start at once on an empty database (one of them migrates, the others wait).
DCMTK's storescu sends a study to node 1; node 2 finds it with C-FIND; node 3 sends it
by C-MOVE to DCMTK's storescp, byte for byte. Three nodes storing series of one study at
the same moment leave one study with exact counts. One node leads the once-only jobs;
``archive cluster status`` shows it; when it is killed another node takes the lease
within the lease time. A node with a schema older than the index's refuses to start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from pg_fixture import PgCluster, postgres  # noqa: F401 - fixture
from test_archive_support import REPO, Archive, dcmtk, study_counts, wait_port

pytestmark = pytest.mark.integration
need_module("pynetdicom")
need_module("psycopg")

from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from test_archive_dicom import dataset_bytes, find, q, send_files  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

LEASE = 3.0


def _fresh_database(pg: PgCluster, name: str) -> dict[str, object]:
    import psycopg

    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return {**pg.index_config(), "database": name}


def _node(root: Path, name: str, index: dict[str, object], shared: Path,
          peers: dict[str, Any] | None = None) -> Archive:
    return Archive(root / name, aet="ARCHIVE", config={
        "index": index, "tiers": [{"name": "fast", "path": str(shared)}],
        "cluster": {"enabled": True, "node": name, "heartbeat_seconds": 0.5,
                    "lease_seconds": LEASE},
        "peers": peers or {},
    })


def _status(node: Archive) -> tuple[int, dict[str, Any]]:
    cfg = node.data.parent / f"{node.data.name}.yaml"
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "cluster", "status",
                        "--config", str(cfg), "--json"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {"error": r.stderr}


def _start_all(nodes: list[Archive]) -> None:
    """Start every node at once (they race to migrate the empty index)."""
    errors: list[BaseException] = []

    def go(n: Archive) -> None:
        try:
            n.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, [str(e) for e in errors] + [n.logs()[-2000:] for n in nodes]


def test_three_nodes_one_archive(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    index = _fresh_database(postgres, "cluster_a")
    shared = tmp_path / "shared"
    shared.mkdir()
    out = tmp_path / "received"
    out.mkdir()
    scp_port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", "-od", str(out), str(scp_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(scp_port, proc=scp)
    dest = {"DEST": {"ae_title": "DEST", "host": "127.0.0.1", "port": scp_port}}
    nodes = [_node(tmp_path, f"n{i}", index, shared, dest) for i in (1, 2, 3)]
    _start_all(nodes)
    try:
        # store at node 1, find at node 2, move from node 3
        study, series = generate_uid(), generate_uid()
        files = [write(make_instance(study_uid=study, series_uid=series, instance_number=i + 1,
                                     rows=32, cols=32, random_pixels=True), tmp_path / f"{i}.dcm")
                 for i in range(6)]
        sent = subprocess.run([dcmtk("storescu"), "-aec", "ARCHIVE", "127.0.0.1",
                               str(nodes[0].port), *map(str, files)], capture_output=True,
                              text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        matches, status = find(nodes[1].port, q("IMAGE", StudyInstanceUID=study,
                                                 SOPInstanceUID=""))
        assert status == 0 and len(matches) == 6
        mv = subprocess.run([dcmtk("movescu"), "-S", "-aet", "TESTSCU", "-aec", "ARCHIVE",
                             "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY", "-k",
                             f"StudyInstanceUID={study}", "127.0.0.1", str(nodes[2].port)],
                            capture_output=True, text=True, timeout=60)
        assert mv.returncode == 0, mv.stderr
        got = {str(dcmread(p).SOPInstanceUID): dataset_bytes(p) for p in out.iterdir()}
        want = {str(dcmread(f).SOPInstanceUID): dataset_bytes(f) for f in files}
        assert got == want

        # three nodes, one study, at the same moment: one study row, exact counts
        study2 = generate_uid()
        batches = []
        for k in range(3):
            se = generate_uid()
            batches.append([write(make_instance(study_uid=study2, series_uid=se,
                                                instance_number=i + 1, rows=8, cols=8),
                                  tmp_path / f"c{k}-{i}.dcm") for i in range(20)])
        results: list[list[int | None]] = [[], [], []]

        def send(k: int) -> None:
            results[k] = send_files(nodes[k].port, batches[k])

        threads = [threading.Thread(target=send, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [[0] * 20] * 3
        (m,), _ = find(nodes[2].port, q("STUDY", StudyInstanceUID=study2,
                                         NumberOfStudyRelatedInstances="",
                                         NumberOfStudyRelatedSeries=""))
        assert (int(m.NumberOfStudyRelatedInstances), int(m.NumberOfStudyRelatedSeries)) == (60, 3)

        # a backup taken from any node while all serve holds the whole cluster
        cfg2 = nodes[1].data.parent / f"{nodes[1].data.name}.yaml"
        r = subprocess.run([sys.executable, "-m", "pacsinfra", "backup", "--archive-config",
                            str(cfg2), "--to", str(tmp_path / "backup"), "--json"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["instances"] == 66
        r = subprocess.run([sys.executable, "-m", "pacsinfra", "restore", "--from",
                            str(tmp_path / "backup"), "--data", str(tmp_path / "restored")],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        single = Archive(tmp_path / "restored").start()
        try:
            assert study_counts(single.port) == {study: 6, study2: 60}
        finally:
            assert single.stop() == 0

        # one leader; kill it, another takes over within the lease
        rc, st = _status(nodes[0])
        assert rc == 0, st
        assert sorted(n["node"] for n in st["nodes"] if n["alive"]) == ["n1", "n2", "n3"]
        leader = st["leader"]
        assert leader in ("n1", "n2", "n3") and sum(n["leader"] for n in st["nodes"]) == 1
        victim = next(n for n in nodes if n.data.name == leader)
        victim.kill9()
        survivor = next(n for n in nodes if n is not victim)
        t0 = time.monotonic()
        while True:
            rc, st = _status(survivor)
            if st.get("leader") not in (None, leader):
                break
            assert time.monotonic() - t0 < LEASE + 10, st
            time.sleep(0.3)
        took = time.monotonic() - t0
        assert took < LEASE + 3, took
        time.sleep(1.6)  # three heartbeats missed: it is reported as not beating
        rc, st = _status(survivor)
        assert rc == 1 and not next(n for n in st["nodes"] if n["node"] == leader)["alive"]
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                assert n.stop() == 0, n.logs()[-3000:]
        scp.terminate()
        scp.wait()


def test_a_node_older_than_the_index_refuses_to_start(postgres: PgCluster,  # noqa: F811
                                                     tmp_path: Path) -> None:
    import psycopg

    index = _fresh_database(postgres, "cluster_b")
    shared = tmp_path / "shared"
    shared.mkdir()
    first = _node(tmp_path, "n1", index, shared)
    first.start()
    assert first.stop() == 0
    dsn = f"host={postgres.host} port={postgres.port} dbname=cluster_b user={postgres.user}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO schema_version (version) VALUES (999)")
    older = _node(tmp_path, "n2", index, shared)
    with pytest.raises(Exception):  # noqa: B017 - it must not come up at all
        older.start()
    assert older.proc is not None and older.proc.wait(30) != 0
    log = older.logs()
    assert "schema version 999" in log and "upgrade this node" in log, log[-2000:]


def test_a_router_balances_a_load_over_three_nodes(
        postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    from test_router_support import Router, instance, send, wait_for

    index = _fresh_database(postgres, "cluster_c")
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes = [_node(tmp_path, f"n{i}", index, shared) for i in (1, 2, 3)]
    _start_all(nodes)
    router = Router(tmp_path / "router", {
        "destinations": {f"n{i}": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": n.port}
                         for i, n in enumerate(nodes, 1)},
        "groups": {"archive": {"members": ["n1", "n2", "n3"],
                               "strategy": "least_outstanding"}},
        "rules": [{"name": "all", "forward": ["archive"]}]})
    router.start()
    try:
        studies = [str(generate_uid()) for _ in range(10)]
        dss = [instance(study=studies[k % 10], number=k // 10 + 1) for k in range(400)]
        acks = send(router.port, dss)
        assert len(acks) == 400 and set(acks.values()) == {0}
        wait_for(lambda: router.states() == {"done": 400}, 120, "all forwarded")
        counts = study_counts(nodes[2].port)
        assert {s: counts.get(s) for s in studies} == {s: 40 for s in studies}
        stored: dict[str, int] = {}

        def beaten() -> bool:  # the counts reach the index with each node's heartbeat
            stored.update({n["node"]: n["stored_since_start"] for n in _status(nodes[0])[1]
                           ["nodes"]})
            return sum(stored.values()) == 400

        wait_for(beaten, 10, "every node's heartbeat with its count")
        assert all(v > 0 for v in stored.values()), stored  # each node took a share
    finally:
        router.stop()
        for n in nodes:
            assert n.stop() == 0, n.logs()[-3000:]


def test_a_node_killed_and_postgresql_restarted_during_ingest_lose_nothing_acknowledged(
        postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    """Senders keep storing into two nodes; node 1 is killed with kill -9, then PostgreSQL
    restarts under node 2. Stores that were not answered Success may fail (with a status);
    every instance that was acknowledged is in the index and readable from node 2."""
    from pg_fixture import _pg_bin, _runner
    from test_archive_crash import _sender

    index = _fresh_database(postgres, "cluster_d")
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes = [_node(tmp_path, f"n{i}", index, shared) for i in (1, 2)]
    _start_all(nodes)
    study = str(generate_uid())
    files = {k: [write(make_instance(study_uid=study, instance_number=i + 1, rows=16, cols=16),
                       tmp_path / f"s{k}-{i}.dcm") for i in range(250)] for k in range(2)}
    acked: dict[str, bool] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def keep_sending(k: int) -> None:
        todo = list(files[k])
        while todo and not stop.is_set():
            chunk, todo = todo[:20], todo[20:]
            _sender(nodes[k].port, chunk, acked, lock, f"SENDER{k}")

    senders = [threading.Thread(target=keep_sending, args=(k,)) for k in range(2)]
    for t in senders:
        t.start()
    try:
        time.sleep(1.0)
        nodes[0].kill9()
        time.sleep(0.5)
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl
        # -l: a log file, or the new server keeps our stdout pipe open
        r = subprocess.run([*_runner(), pg_ctl, "-D", str(postgres.datadir), "-m", "fast",
                            "-l", str(postgres.datadir.parent / "pg.log"), "-w", "restart"],
                           capture_output=True, text=True, cwd="/", timeout=120)
        assert r.returncode == 0, r.stderr
        for t in senders:
            t.join(120)
    finally:
        stop.set()
    ok = {uid for uid, good in acked.items() if good}
    refused = [uid for uid, good in acked.items() if not good]
    assert len(ok) > 40, (len(ok), len(refused))  # both phases stored something
    matches, status = find(nodes[1].port, q("IMAGE", StudyInstanceUID=study, SOPInstanceUID=""))
    assert status == 0
    indexed = {str(m.SOPInstanceUID) for m in matches}
    assert ok <= indexed, sorted(ok - indexed)[:5]
    print(f"faults during ingest: {len(ok)} acknowledged (all indexed), {len(refused)} refused "
          f"with a failure status, {len(indexed)} indexed")
    for n in nodes[1:]:
        assert n.stop() == 0, n.logs()[-3000:]
