"""Archive policies: duplicates, capacity refusal, association limits, allow-list, TLS, CLI."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import need_binary, need_module
from test_archive_support import REPO, Archive, dcmtk, scu_ae

pytestmark = pytest.mark.integration

need_module("pynetdicom")

from pydicom.filereader import read_file_meta_info  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import _config as pnd_config  # noqa: E402
from pynetdicom.sop_class import CTImageStorage, Verification  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402
from pacsinfra.pacs.config_common import TlsConfig  # noqa: E402
from pacsinfra.pacs.dicom import TCP_TUNING_HANDLER, ssl_context  # noqa: E402

pnd_config.STORE_SEND_CHUNKED_DATASET = True


def _store(port: int, files: list[Path], aet: str = "TESTSCU") -> list[int]:
    ae = scu_ae(aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE", evt_handlers=[TCP_TUNING_HANDLER])
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()


def _files(tmp: Path) -> tuple[Path, Path]:
    """Two versions of the same SOP instance (different content)."""
    ds = make_instance(patient_id="POLICY")
    a = write(ds, tmp / "a.dcm")
    ds.PatientName = "Other^Name"
    b = write(ds, tmp / "b.dcm")
    return a, b


def _stored_dataset(data: Path, sop: str) -> bytes:
    import sqlite3

    con = sqlite3.connect(data / "index.sqlite")
    tier, rel, off = con.execute(
        "SELECT tier, rel_path, ds_offset FROM instance WHERE sop_uid=?", (sop,)).fetchone()
    con.close()
    return (data / tier / rel).read_bytes()[off:]


def _ds_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[144 + int.from_bytes(raw[140:144], "little"):]


@pytest.mark.parametrize("policy,second,kept", [
    ("reject", 0x0111, "a"),
    ("keep_first", 0x0000, "a"),
    ("overwrite", 0x0000, "b"),
    ("keep_if_identical", 0x0111, "a"),
])
def test_duplicate_policies(tmp_path: Path, policy: str, second: int, kept: str) -> None:
    a, b = _files(tmp_path)
    arch = Archive(tmp_path / "data", config={"duplicates": policy}).start()
    try:
        statuses = _store(arch.port, [a, b])
        assert statuses == [0, second]
        sop = read_file_meta_info(a).MediaStorageSOPInstanceUID
        assert _stored_dataset(arch.data, sop) == _ds_bytes(a if kept == "a" else b)
        if policy == "reject":
            assert _store(arch.port, [a]) == [0x0111]  # even identical
        if policy == "overwrite":  # the replaced file is gone, one row remains
            files = [p for p in (arch.data / "fast").rglob("*.dcm")]
            assert len(files) == 1
    finally:
        assert arch.stop() == 0


def test_capacity_threshold_refuses_cleanly(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    used_pct = usage.used * 100 / usage.total
    below = max(0.01, round(used_pct / 2, 2))  # already past the threshold
    arch = Archive(tmp_path / "data", config={
        "tiers": [{"name": "fast", "max_usage_percent": below}]}).start()
    try:
        a, _ = _files(tmp_path)
        assert _store(arch.port, [a]) == [0xA700]
        assert not list((arch.data / "fast").rglob("*.dcm"))
    finally:
        arch.stop()


def test_allow_list_and_per_ae_limit(tmp_path: Path) -> None:
    arch = Archive(tmp_path / "data", config={
        "allowed_calling_aes": ["GOODSCU"],
        "limits": {"max_associations_per_ae": 1, "max_associations": 4},
    }).start()
    try:
        bad = scu_ae("BADSCU")
        bad.add_requested_context(Verification)
        assoc = bad.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert assoc.is_rejected
        good = scu_ae("GOODSCU")
        good.add_requested_context(Verification)
        first = good.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert first.is_established
        second = good.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert second.is_rejected  # per-AE limit: one at a time
        assert first.send_c_echo().Status == 0  # the first one is unaffected
        first.release()
        third = good.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert third.is_established
        third.release()
    finally:
        arch.stop()


def _make_pki(d: Path) -> dict[str, Path]:
    need_binary("openssl")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", str(ext))
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_dicom_tls_mutual(tmp_path: Path) -> None:
    pki = _make_pki(tmp_path)
    arch = Archive(tmp_path / "data", config={"tls": {
        "enabled": True, "cert_file": str(pki["server.pem"]), "key_file": str(pki["server.key"]),
        "ca_file": str(pki["ca.pem"]), "require_client_cert": True}}).start()
    try:
        with_cert = ssl_context(TlsConfig(enabled=True, ca_file=str(pki["ca.pem"]),
                                          cert_file=str(pki["client.pem"]),
                                          key_file=str(pki["client.key"])), server=False)
        assert with_cert is not None and with_cert.minimum_version >= ssl.TLSVersion.TLSv1_2
        ae = scu_ae()
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE",
                             tls_args=(with_cert, None))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        no_cert = ssl_context(TlsConfig(enabled=True, ca_file=str(pki["ca.pem"])), server=False)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE", tls_args=(no_cert, None))
        assert not assoc.is_established  # mutual TLS: no client cert, no association
        plain = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert not plain.is_established
        # DCMTK speaks TLS to it too
        r = subprocess.run([dcmtk("echoscu"), "--enable-tls", str(pki["client.key"]),
                            str(pki["client.pem"]), "--add-cert-file", str(pki["ca.pem"]),
                            "-aec", "ARCHIVE", "127.0.0.1", str(arch.port)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    finally:
        arch.stop()


def test_cli_bad_input_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ae_title: THIS-AE-TITLE-IS-WAY-TOO-LONG\nport: 70000\n")
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
                        str(bad)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "ae_title" in r.stderr and "port" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "serve", "--aet", "A",
                        "--data", str(tmp_path), "--peer", "nonsense"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "AET=host:port" in r.stderr


def test_sigterm_finishes_inflight_stores(tmp_path: Path) -> None:
    files = [write(make_instance(patient_id="TERM", instance_number=i), tmp_path / f"{i}.dcm")
             for i in range(30)]
    arch = Archive(tmp_path / "data").start()
    statuses: list[Any] = []
    t = threading.Thread(target=lambda: statuses.extend(_store(arch.port, files)))
    t.start()
    t.join(timeout=60)
    assert arch.stop() == 0
    assert statuses == [0] * 30


def test_sigterm_with_idle_association_still_exits(tmp_path: Path) -> None:
    import time

    arch = Archive(tmp_path / "data").start()
    ae = scu_ae()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
    assert assoc.is_established
    t0 = time.monotonic()
    assert arch.stop() == 0  # drains for a grace period, then aborts the idle association
    assert time.monotonic() - t0 < 15


def test_two_worker_processes_share_the_port(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from pacsinfra.pacs.archive.synth import make_instance as mk

    study = "1.2.826.0.1.3680043.10.999.1"
    files = [write(mk(study_uid=study, patient_id="WORKERS", instance_number=i),
                   tmp_path / f"w{i}.dcm") for i in range(20)]
    arch = Archive(tmp_path / "data", config={"workers": 2}).start()
    try:
        results: list[list[int]] = [[], [], [], []]

        def run(i: int) -> None:
            results[i] = _store(arch.port, files[i::4], aet=f"W{i}")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert all(r == [0] * 5 for r in results), results
        assert _store(arch.port, [files[0]]) == [0]  # identical duplicate, any worker
        ae = scu_ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study
        ident.NumberOfStudyRelatedInstances = ""
        found = [ds for st, ds in assoc.send_c_find(
            ident, StudyRootQueryRetrieveInformationModelFind) if st and st.Status == 0xFF00]
        assoc.release()
        assert len(found) == 1 and int(found[0].NumberOfStudyRelatedInstances) == 20
    finally:
        assert arch.stop() == 0


def test_unknown_sop_class_when_configured(tmp_path: Path) -> None:
    from pacsinfra.pacs.archive.synth import make_instance as mk

    private_class = "1.2.826.0.1.3680043.10.999.77"
    f = write(mk(sop_class=private_class, patient_id="PRIVCLASS"), tmp_path / "p.dcm")
    arch = Archive(tmp_path / "data", config={"accept_unknown_sop_classes": True}).start()
    try:
        ae = scu_ae()
        ae.add_requested_context(private_class, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert assoc.is_established
        assert assoc.send_c_store(f).Status == 0
        assoc.release()
    finally:
        assert arch.stop() == 0
    assert _stored_dataset(arch.data, read_file_meta_info(f).MediaStorageSOPInstanceUID) == \
        _ds_bytes(f)


def test_cli_port_in_use_is_a_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "serve", "--aet", "A",
                            "--bind", "127.0.0.1", "--port", str(port), "--data",
                            str(tmp_path / "d")], capture_output=True, text=True, cwd=REPO,
                           timeout=60)
    assert r.returncode == 1
    assert "cannot run the archive" in r.stderr and "Traceback" not in r.stderr
