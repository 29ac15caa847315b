"""Fuzzing the DICOM receive paths: archive and router, streaming path and pynetdicom path.

Hypothesis writes hostile bytes at one real service per target (started once for the
module): random and lying PDUs on established associations, mangled first PDUs,
random DIMSE command sets, and data sets with lying lengths, deep sequences, huge
values and bad UIDs. After every example the service answers C-ECHO; after every
test it is intact (C-ECHO on both paths, the known study still there and served,
memory back under a bound, nothing written outside its data directory, no temporary
file left) — see :class:`attack_support.Target`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from attack_support import (
    CT,
    Target,
    associate,
    connect,
    dataset_bytes,
    exchange,
    request,
    respond,
    rss,
    statuses,
    store_pdus,
)
from conftest import need_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacsinfra.pacs.fastscp import codec

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")]
need_module("hypothesis")

FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
PATHS = pytest.mark.parametrize("pynetdicom_path", [False, True], ids=["fast", "pynetdicom"])


@pytest.fixture(scope="module", params=["archive", "router"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Target]:
    t = Target(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}")).start()
    yield t
    t.stop()


# -- strategies ---------------------------------------------------------------------------------

lengths = st.one_of(st.integers(0, 64), st.integers(65, 1 << 20),
                    st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 4 << 20, (4 << 20) + 7]))


@st.composite
def raw_pdu(draw: st.DrawFn) -> bytes:
    """A PDU of any type whose header may lie about its length."""
    kind = draw(st.integers(0, 10))
    body = draw(st.binary(max_size=200))
    length = draw(st.one_of(st.just(len(body)), lengths))
    return codec.header(kind, length) + body


@st.composite
def p_data(draw: st.DrawFn) -> bytes:
    """A P-DATA-TF with random PDV items (contexts, control bits, lying item lengths)."""
    items = b""
    for _ in range(draw(st.integers(1, 4))):
        data = draw(st.binary(max_size=120))
        item_len = draw(st.one_of(st.just(len(data) + 2), st.integers(0, 0xFFFFFFFF)))
        items += struct.pack(">LBB", item_len, draw(st.sampled_from([1, 3, 5, 7, 255])),
                             draw(st.integers(0, 255))) + data
    return codec.header(codec.P_DATA_TF, len(items)) + items


@st.composite
def command_set(draw: st.DrawFn) -> bytes:
    """Group 0000 elements: known and random element numbers, random values and lengths."""
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        elem = draw(st.one_of(st.sampled_from([0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0700,
                                               0x0800, 0x0900, 0x1000, 0x1030]),
                              st.integers(0, 0xFFFF)))
        value = draw(st.one_of(st.binary(max_size=40),
                               st.sampled_from([b"\x01\x00", b"\x30\x00", b"\x20\x00", b"\xff\x0f",
                                                b"\x01\x01", CT.encode()])))
        length = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFFFFFF)))
        group = draw(st.sampled_from([0x0000, 0x0000, 0x0000, 0x0008]))
        out += struct.pack("<HHL", group, elem, length) + value
    return out


def _element(tag: tuple[int, int], vr: bytes, value: bytes, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", tag[0], tag[1], vr, 0, size) + value
    return struct.pack("<HH2sH", tag[0], tag[1], vr, size & 0xFFFF) + value


def _deep_sequence(depth: int) -> bytes:
    """(0040,0275) nested ``depth`` levels deep, undefined lengths all the way."""
    inner = b""
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + _element((0x0040, 0x0275), b"SQ", b"",
                                                              0xFFFFFFFF) + inner
        inner = item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    return inner


BAD_UIDS = ["../../../etc/passwd", "1.2." + "3" * 70, "1..2", "abc", "", "1.02.3", "/tmp/x",
            "1.2.3 4", "1.2.3\\4"]


@st.composite
def hostile_dataset(draw: st.DrawFn) -> tuple[str, bytes, str, bool]:
    """(kind, data set, SOP Instance UID, whether it must be refused)."""
    kind = draw(st.sampled_from(["lying-length", "deep-sequence", "huge-value", "bad-uid",
                                 "truncated"]))
    serial = draw(st.integers(10**9, 10**10 - 1))  # UIDs of a fixed length: a stable draw
    root = f"1.2.826.0.1.3680043.9.7433.{serial}"
    uid = draw(st.sampled_from(BAD_UIDS)) if kind == "bad-uid" else f"{root}.3"
    raw, _ = dataset_bytes(study_uid=f"{root}.1", series_uid=f"{root}.2", sop_uid=uid)
    if kind == "lying-length":
        # rewrite one element's length field (short form: 2 bytes at offset 6)
        starts = [i for i in range(0, min(len(raw), 400) - 8, 2)
                  if raw[i + 4:i + 6] in (b"CS", b"UI", b"DA", b"TM", b"PN", b"SH", b"LO")]
        at = draw(st.sampled_from(starts))
        new = draw(st.integers(0, 0xFFFF))
        raw = raw[:at + 6] + struct.pack("<H", new) + raw[at + 8:]
    elif kind == "deep-sequence":
        raw = raw + _deep_sequence(draw(st.sampled_from([50, 500, 5000])))
    elif kind == "huge-value":
        size = draw(st.sampled_from([70_000, 2 << 20, 9 << 20]))
        lie = draw(st.sampled_from([None, 0xFFFFFFF0, size * 2]))
        raw = raw + _element((0x0009, 0x1010), b"OB", b"\x00" * size, lie)
    elif kind == "truncated":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    return kind, raw, uid, kind == "bad-uid"


# -- tests --------------------------------------------------------------------------------------

@PATHS
def test_pdu_fuzz_on_established_associations(target: Target, pynetdicom_path: bool) -> None:
    @FUZZ
    @given(st.lists(st.one_of(raw_pdu(), p_data()), min_size=1, max_size=4))
    def case(pdus: list[bytes]) -> None:
        sock = associate(target.port, target.aet, pynetdicom_path=pynetdicom_path)
        replies = exchange(sock, b"".join(pdus))
        assert all(kind in (codec.P_DATA_TF, codec.A_RELEASE_RP, codec.A_ABORT)
                   for kind, _ in replies), replies
        target.alive()

    case()
    target.intact()


def test_first_pdu_fuzz(target: Target) -> None:
    valid = request(target.aet)

    @FUZZ
    @given(st.one_of(
        raw_pdu(),
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
            lambda f: valid[:f[0]] + bytes((f[1],)) + valid[f[0] + 1:]),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        lengths.map(lambda n: codec.header(codec.A_ASSOCIATE_RQ, n) + valid[6:]),
    ))
    def case(first: bytes) -> None:
        replies = exchange(connect(target.port), first)
        assert all(kind in (codec.A_ASSOCIATE_AC, codec.A_ASSOCIATE_RJ, codec.A_ABORT,
                            codec.A_RELEASE_RP) for kind, _ in replies), replies
        target.alive()

    case()
    target.intact()


@PATHS
def test_dimse_command_fuzz(target: Target, pynetdicom_path: bool) -> None:
    @FUZZ
    @given(command_set(), st.sampled_from([1, 3]), st.one_of(st.none(), st.binary(max_size=300)))
    def case(command: bytes, ctx: int, data: bytes | None) -> None:
        blob = codec.p_data(ctx, codec.COMMAND | codec.LAST, command)
        if data is not None:
            blob += codec.p_data(ctx, codec.LAST, data)
        sock = associate(target.port, target.aet, pynetdicom_path=pynetdicom_path)
        exchange(sock, blob)
        target.alive()

    case()
    target.intact()


@PATHS
def test_dataset_fuzz(target: Target, pynetdicom_path: bool) -> None:
    @FUZZ
    @given(hostile_dataset())
    def case(hostile: tuple[str, bytes, str, bool]) -> None:
        kind, raw, uid, refuse = hostile
        sock = associate(target.port, target.aet, pynetdicom_path=pynetdicom_path)
        got = statuses(respond(sock, store_pdus(1, uid, raw)))
        if refuse:
            assert 0 not in got, f"{kind}: {uid!r} stored"
        target.alive()

    case()
    target.intact()


@PATHS
def test_oversize_announcements_are_refused_before_buffering(target: Target,
                                                             pynetdicom_path: bool) -> None:
    """4 GiB announced, 16 MiB sent: refused at the header, memory flat."""
    before = rss(target.pid)
    # an association request from a calling AE that is not even allowed
    sock = connect(target.port)
    sock.sendall(codec.header(codec.A_ASSOCIATE_RQ, 0xFFFFFFFF)
                 + request(target.aet, calling="INTRUDER")[6:])
    replies = exchange(sock, b"\x00" * (16 << 20), timeout=10)
    assert replies and replies[0][0] == codec.A_ASSOCIATE_RJ, replies
    # a P-DATA-TF on an established association
    sock = associate(target.port, target.aet, pynetdicom_path=pynetdicom_path)
    replies = exchange(sock, codec.header(codec.P_DATA_TF, 0xFFFFFFFF)
                       + struct.pack(">LBB", 0xFFFFFFFB, 1, 0) + b"\x00" * (16 << 20), timeout=10)
    assert replies and replies[-1][0] == codec.A_ABORT, replies
    assert rss(target.pid) < before + (16 << 20)
    target.intact()


def test_refusals_are_audited(target: Target) -> None:
    """Every refusal above is in the audit trail, with the peer's address and the reason."""
    import json

    path: Path = target.base / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    alerts = [r for r in records if r["EventIdentification"]["EventID"]["code"] == "110113"]
    assert alerts, "no refusal audited"
    kinds = set()
    for r in alerts:
        source = r["ActiveParticipant"][0]
        assert source["NetworkAccessPointID"].startswith("127.0.0.")
        assert r["EventIdentification"]["EventOutcomeDescription"]
        kinds.add(r["ParticipantObjectIdentification"][0]["ParticipantObjectDetail"][0]["value"])
    assert {"too-large", "protocol"} <= kinds, kinds
