"""Admission control, the PDU guard's stream follower and refusal grouping, on real sockets."""

from __future__ import annotations

import socket
import time

from pacsinfra.pacs.fastscp import codec
from pacsinfra.pacs.fastscp.admission import ConnectionGate, GateLimits
from pacsinfra.pacs.fastscp.guard import GuardedSocket, PduLimits, PduStream
from pacsinfra.pacs.refusals import Refusal, RefusalLog


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_a_full_pool_evicts_the_oldest_of_the_busiest_address() -> None:
    refused: list[Refusal] = []
    gate = ConnectionGate(GateLimits(max_pending=4, max_per_address=3, request_timeout=5),
                          associated=lambda address: 0, refused=refused.append)
    pairs = [_pair() for _ in range(6)]
    a1 = gate.admit(pairs[0][0], "10.0.0.1")
    a2 = gate.admit(pairs[1][0], "10.0.0.1")
    a3 = gate.admit(pairs[2][0], "10.0.0.1")
    b1 = gate.admit(pairs[3][0], "10.0.0.2")
    assert None not in (a1, a2, a3, b1) and gate.pending == 4
    assert gate.admit(pairs[4][0], "10.0.0.1") is None  # over the per-address limit
    c1 = gate.admit(pairs[4][0], "10.0.0.3")  # pool full: 10.0.0.1's oldest goes
    assert c1 is not None and a1 is not None and a1.evicted and gate.pending == 4
    assert pairs[0][1].recv(1) == b""  # its connection was shut down
    assert [r.kind for r in refused] == ["evicted"] and refused[0].address == "10.0.0.1"
    assert b1 is not None and not b1.evicted
    gate.done(a1)  # idempotent for an evicted one
    gate.done(b1)
    gate.done(b1)
    assert gate.pending == 3
    for x, y in pairs:
        x.close()
        y.close()


def test_associations_count_against_the_address() -> None:
    gate = ConnectionGate(GateLimits(max_pending=10, max_per_address=3, request_timeout=5),
                          associated=lambda address: 2 if address == "10.0.0.1" else 0,
                          refused=lambda r: None)
    a, b = _pair()
    assert gate.admit(a, "10.0.0.1") is not None
    assert gate.admit(a, "10.0.0.1") is None
    assert gate.admit(a, "10.0.0.2") is not None
    a.close()
    b.close()


def test_pdu_stream_stops_at_the_first_oversize_header_whatever_the_chunking() -> None:
    limits = PduLimits(p_data=1000, other=5000)
    stream = (codec.p_data(1, 3, b"x" * 900) + codec.release_rq()
              + codec.header(codec.P_DATA_TF, 0xFFFFFFFF) + b"\x00" * 100)
    for chunk in (1, 5, 6, 7, 4096):
        follower = PduStream(limits)
        why = None
        for pos in range(0, len(stream), chunk):
            why = follower.feed(stream[pos:pos + chunk])
            if why:
                break
        assert why is not None and why[0] == "too-large", chunk
        assert follower.pdus == 2 and pos + chunk >= len(stream) - 100
    assert PduStream(limits).feed(codec.header(codec.A_RELEASE_RQ, 5))[0] == "protocol"
    assert PduStream(limits).feed(codec.header(codec.A_ASSOCIATE_RQ, 4999)) is None


def test_a_guarded_socket_aborts_instead_of_reading_an_oversize_pdu() -> None:
    server, client = _pair()
    guarded = GuardedSocket.adopt(server)
    seen: list[tuple[str, str]] = []
    guarded.guard(PduLimits(p_data=100, other=100), deadline=None,
                  violation=lambda kind, why: seen.append((kind, why)))
    client.sendall(codec.p_data(1, 3, b"ok") + codec.header(codec.P_DATA_TF, 1 << 30) + b"zz")
    got = b""
    while chunk := guarded.recv(4096):
        got += chunk
    assert got.startswith(codec.p_data(1, 3, b"ok"))
    assert len(got) <= len(codec.p_data(1, 3, b"ok")) + 6  # never the body
    assert seen and seen[0][0] == "too-large"
    assert client.recv(16) == codec.abort(codec.ABORT_PROVIDER, codec.REASON_INVALID_PARAMETER)
    guarded.close()
    client.close()


def test_a_guarded_socket_gives_the_request_a_deadline() -> None:
    server, client = _pair()
    guarded = GuardedSocket.adopt(server)
    seen: list[str] = []
    guarded.guard(PduLimits(100, 100), deadline=time.monotonic() + 0.3,
                  violation=lambda kind, why: seen.append(kind))
    client.sendall(codec.header(codec.A_ASSOCIATE_RQ, 50) + b"\x00" * 10)  # never finished
    t0 = time.monotonic()
    while guarded.recv(4096):
        pass
    assert time.monotonic() - t0 < 2 and seen == ["timeout"]
    guarded.close()
    client.close()


def test_refusals_are_grouped_and_all_counted() -> None:
    written: list[tuple[Refusal, int]] = []
    log = RefusalLog(lambda r, n: written.append((r, n)), window=0.2)
    for _ in range(50):
        log(Refusal("10.0.0.9", "timeout", "no request"))
    log(Refusal("10.0.0.8", "timeout", "no request"))
    assert [(r.address, n) for r, n in written] == [("10.0.0.9", 1), ("10.0.0.8", 1)]
    time.sleep(0.25)
    log(Refusal("10.0.0.7", "limit", "full"))  # a later refusal writes the grouped ones out
    assert ("10.0.0.9", 49) in [(r.address, n) for r, n in written]
    log(Refusal("10.0.0.7", "limit", "full"))
    log.flush()
    assert sum(n for r, n in written) == 53
