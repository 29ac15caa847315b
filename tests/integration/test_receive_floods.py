"""Connection floods against the DICOM receive paths of the archive and the router.

One service per target runs with small limits (:data:`attack_support.FLOOD_LIMITS`:
12 pending connections, 6 per address, a 3 s request deadline), and each flood uses
the number of connections those limits name: idle connections, slow-loris
association requests, slow established clients, one address over its limit. During
each, a legitimate DCMTK storescu (from another address) stores within 5 s; after
each, the flood's connections are gone and the service is intact.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from attack_support import (
    FLOOD_LIMITS,
    Target,
    associate,
    connect,
    dataset_bytes,
    instance_file,
    read_pdu,
    request,
    rss,
    storescu,
    wait_closed,
)

from pacsinfra.pacs.fastscp import codec

pytestmark = [pytest.mark.integration]
PENDING = FLOOD_LIMITS["max_pending"]
PER_ADDRESS = FLOOD_LIMITS["max_connections_per_address"]
DEADLINE = FLOOD_LIMITS["request_timeout"]
LEGIT_SECONDS = 5.0


@pytest.fixture(scope="module", params=["archive", "router"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Target]:
    t = Target(request.param, tmp_path_factory.mktemp(f"flood-{request.param}"),
               limits=FLOOD_LIMITS).start()
    yield t
    t.stop()


def _sources(first: int, count: int) -> list[str]:
    """``count`` addresses each holding at most the per-address limit."""
    return [f"127.0.0.{first + i // PER_ADDRESS}" for i in range(count)]


def _legit(target: Target) -> float:
    path, _ = instance_file(target.base)
    took = storescu(target.port, target.aet, path)
    assert took < LEGIT_SECONDS, f"the legitimate store took {took:.1f} s"
    return took


def _all_closed(socks: list[socket.socket], within: float) -> None:
    deadline = time.monotonic() + within
    for s in socks:
        left = max(deadline - time.monotonic(), 0.1)
        assert wait_closed(s, left) is not None, "a flood connection was still open"
        s.close()


def test_idle_flood(target: Target) -> None:
    """Twice the pending slots of connections that never send a byte: the oldest are
    closed to make room, the rest at the request deadline; the modality is served."""
    socks = [connect(target.port, src) for src in _sources(2, 2 * PENDING)]
    time.sleep(0.3)
    _legit(target)
    assert rss(target.pid) < target.baseline + (32 << 20)
    _all_closed(socks, DEADLINE + 2)
    target.intact()


def test_slowloris_flood(target: Target) -> None:
    """Every pending slot trickles a valid association request a byte at a time: none is
    ever accepted, all are closed at the deadline, the modality is served meanwhile."""
    rq = request(target.aet, calling="LEGIT")
    socks = [connect(target.port, src) for src in _sources(2, PENDING)]
    stop = threading.Event()

    def trickle() -> None:
        pos = 0
        while not stop.wait(0.2) and pos < len(rq):
            for s in socks:
                try:
                    s.send(rq[pos:pos + 1])
                except OSError:
                    pass
            pos += 1

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        time.sleep(0.5)
        _legit(target)
        t0 = time.monotonic()
        for s in socks:
            assert wait_closed(s, DEADLINE + 2) is not None, "a slow-loris connection survived"
        assert time.monotonic() - t0 < DEADLINE + 2
    finally:
        stop.set()
        feeder.join()
        for s in socks:
            s.close()
    target.intact()


@pytest.mark.parametrize("pynetdicom_path", [False, True], ids=["fast", "pynetdicom"])
def test_slow_clients_flood(target: Target, pynetdicom_path: bool) -> None:
    """One address holds all the connections it may, each an established association
    sending a C-STORE a fragment at a time; its next connection is refused, the
    modality is served, and nothing of the unfinished stores is kept."""
    raw, uid = dataset_bytes()
    socks = [associate(target.port, target.aet, pynetdicom_path=pynetdicom_path,
                       source="127.0.0.20") for _ in range(PER_ADDRESS)]
    for s in socks:
        s.sendall(codec.p_data(1, codec.COMMAND | codec.LAST, codec.store_rq(1, "1.2.840.10008.5.1.4.1.1.2", uid)))
    stop = threading.Event()

    def drip() -> None:
        pos = 0
        while not stop.wait(0.3) and pos < len(raw) - 64:
            for s in socks:
                try:
                    s.sendall(codec.p_data(1, 0, raw[pos:pos + 64]))
                except OSError:
                    pass
            pos += 64

    feeder = threading.Thread(target=drip, daemon=True)
    feeder.start()
    try:
        extra = connect(target.port, "127.0.0.20")
        extra.sendall(request(target.aet))
        reply = read_pdu(extra)
        assert reply is not None and reply[0] == codec.A_ASSOCIATE_RJ, reply
        assert codec.parse_associate_rj(reply[1]) == codec.RJ_LIMIT
        extra.close()
        _legit(target)
    finally:
        stop.set()
        feeder.join()
        for s in socks:
            s.close()
    target.intact()


def test_one_address_over_its_limit(target: Target) -> None:
    """Connections beyond the per-address limit get an A-ASSOCIATE-RJ (transient, local
    limit exceeded) at once, before they send anything."""
    socks = [connect(target.port, "127.0.0.30") for _ in range(PER_ADDRESS)]
    time.sleep(0.2)
    over = connect(target.port, "127.0.0.30")
    t0 = time.monotonic()
    reply = read_pdu(over)
    assert reply is not None and reply[0] == codec.A_ASSOCIATE_RJ, reply
    assert codec.parse_associate_rj(reply[1]) == codec.RJ_LIMIT
    assert time.monotonic() - t0 < 1.0
    over.close()
    _legit(target)
    for s in socks:
        s.close()
    target.intact()


def test_flood_refusals_are_audited(target: Target) -> None:
    """The floods above are in the audit trail: evictions, deadlines, per-address refusals,
    each with the address it came from."""
    records = [json.loads(line) for line in (target.base / "audit.jsonl").read_text().splitlines()]
    alerts = [r for r in records if r["EventIdentification"]["EventID"]["code"] == "110113"]
    kinds = {(r["ActiveParticipant"][0]["NetworkAccessPointID"],
              r["ParticipantObjectIdentification"][0]["ParticipantObjectDetail"][0]["value"])
             for r in alerts}
    seen = {kind for _, kind in kinds}
    assert {"evicted", "timeout", "per-address"} <= seen, seen
    assert ("127.0.0.30", "per-address") in kinds


def test_idle_connections_to_a_tls_port_do_not_block_others(tmp_path_factory: pytest.TempPathFactory
                                                            ) -> None:
    """TLS handshakes happen on each connection's own thread within its request
    deadline: connections that never send a ClientHello neither stall the accept loop
    nor outlive the deadline, and a TLS modality is served meanwhile."""
    import ssl
    import subprocess

    from conftest import need_binary
    from pynetdicom import AE
    from test_router_support import Router, StatusSCP, instance, wait_for

    need_binary("openssl")
    base = tmp_path_factory.mktemp("flood-tls")
    cert, key = base / "router.pem", base / "router.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=router"],
                   check=True, capture_output=True)
    dest = StatusSCP(0, "DEST")
    router = Router(base / "router", {
        "tls": {"enabled": True, "cert_file": str(cert), "key_file": str(key)},
        "limits": FLOOD_LIMITS, "destinations": {"d": dest.dest()},
        "rules": [{"name": "all", "forward": ["d"]}]})
    router.start()
    try:
        socks = [connect(router.port, src) for src in _sources(2, PENDING)]
        time.sleep(0.3)
        ds = instance()
        ae = AE(ae_title="CT1")
        ae.acse_timeout = ae.network_timeout = 10
        ae.add_requested_context(ds.SOPClassUID, ["1.2.840.10008.1.2.1"])
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        client.check_hostname = False
        t0 = time.monotonic()
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER", tls_args=(client, None))
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        assert time.monotonic() - t0 < LEGIT_SECONDS
        wait_for(lambda: dest.received == [str(ds.SOPInstanceUID)], 20, "delivery over TLS")
        _all_closed(socks, DEADLINE + 2)
    finally:
        router.stop()
        dest.stop()
