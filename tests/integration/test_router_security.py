"""The router's listener options: calling-AE allow-list and DICOM TLS, both directions."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import need_binary
from pynetdicom import AE
from test_router_support import Router, StatusSCP, instance, send, wait_for

pytestmark = [pytest.mark.integration]


def _cert(folder: Path, name: str) -> tuple[Path, Path]:
    need_binary("openssl")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    return cert, key


def test_allow_list_refuses_unknown_calling_aes(tmp_path: Path) -> None:
    dest = StatusSCP(0, "DEST")
    router = Router(tmp_path / "router", {
        "destinations": {"d": dest.dest()}, "rules": [{"name": "all", "forward": ["d"]}],
        "allowed_calling_aes": ["CT1"],
    })
    router.start()
    try:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        # a loaded machine may lose the attempt itself (no answer within pynetdicom's
        # timeouts); what must never happen is an accepted association
        for _ in range(3):
            assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
            assert not assoc.is_established
            if assoc.is_rejected:
                break
        assert assoc.is_rejected
        ds = instance()
        assert send(router.port, [ds], calling="CT1") == {str(ds.SOPInstanceUID): 0}
        wait_for(lambda: dest.received == [str(ds.SOPInstanceUID)], 20, "delivery")
    finally:
        router.stop()
        dest.stop()


def test_tls_in_and_out(tmp_path: Path) -> None:
    rcert, rkey = _cert(tmp_path, "router")
    dcert, dkey = _cert(tmp_path, "dest")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(dcert, dkey)
    dest = StatusSCP(0, "TLSDEST", ssl_context=server_ctx)
    router = Router(tmp_path / "router", {
        "tls": {"enabled": True, "cert_file": str(rcert), "key_file": str(rkey)},
        "destinations": {"d": {**dest.dest(), "tls": {"enabled": True, "ca_file": str(dcert)}}},
        "rules": [{"name": "all", "forward": ["d"]}],
    })
    router.start()
    try:
        ds = instance()
        ae = AE(ae_title="CT1")
        ae.add_requested_context(ds.SOPClassUID, ["1.2.840.10008.1.2.1"])
        plain = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
        assert not plain.is_established  # no TLS, no association
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(rcert))
        client.check_hostname = False
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER",
                             tls_args=(client, None))
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        wait_for(lambda: dest.received == [str(ds.SOPInstanceUID)], 20, "delivery over TLS")
    finally:
        router.stop()
        dest.stop()


def test_tls_destination_with_unknown_ca_is_not_sent_to(tmp_path: Path) -> None:
    dcert, dkey = _cert(tmp_path, "dest")
    other, _ = _cert(tmp_path, "other")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(dcert, dkey)
    dest = StatusSCP(0, "TLSDEST", ssl_context=server_ctx)
    router = Router(tmp_path / "router", {
        "destinations": {"d": {**dest.dest(), "tls": {"enabled": True, "ca_file": str(other)}}},
        "rules": [{"name": "all", "forward": ["d"]}],
        "retry": {"initial_backoff": 0.2, "max_attempts": 2},
    })
    router.start()
    try:
        ds = instance()
        assert send(router.port, [ds]) == {str(ds.SOPInstanceUID): 0}
        wait_for(lambda: router.states().get("dead") == 1, 20, "dead letter")
        assert dest.received == []
    finally:
        router.stop()
        dest.stop()
