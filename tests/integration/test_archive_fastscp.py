"""The streaming storage SCP (``pacsinfra.pacs.fastscp``) against hostile peers.

A pynetdicom SCU that proposes only storage gets the streaming path; once it is
established, raw PDUs that break PS3.8 are written on its socket. Each must end
that association with an A-ABORT, leave nothing stored or indexed, and not disturb
the next association.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_module
from test_archive_support import Archive, scu_ae

pytestmark = pytest.mark.integration

need_module("pynetdicom")

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom.sop_class import CTImageStorage, Verification  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

_HEADER = struct.Struct(">BxL")


def _p_data(*pdvs: tuple[int, int, bytes], claimed: int | None = None) -> bytes:
    """A P-DATA-TF with the given (context, control, payload) PDVs; ``claimed``
    overrides the first PDV's item length (to lie about it)."""
    items = b""
    for i, (ctx, control, payload) in enumerate(pdvs):
        length = claimed if (i == 0 and claimed is not None) else len(payload) + 2
        items += struct.pack(">LBB", length, ctx, control) + payload
    return _HEADER.pack(0x04, len(items)) + items


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    arc = Archive(tmp_path_factory.mktemp("fastscp") / "data").start()
    yield arc
    arc.stop()


def _instance_count(archive: Archive) -> int:
    import sqlite3

    with sqlite3.connect(archive.data / "index.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM instance").fetchone()[0])


def _store_one(archive: Archive, tmp_path: Path) -> int:
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        ds = make_instance(rows=64, cols=64, patient_id="FASTOK")
        st = assoc.send_c_store(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
        return int(st.Status)
    finally:
        assoc.release()


# Each payload breaks the protocol on an established storage association.
HOSTILE = {
    "pdv-longer-than-pdu": lambda ctx: _p_data((ctx, 0x03, b"\x00" * 10), claimed=4000),
    "pdv-too-short": lambda ctx: _p_data((ctx, 0x03, b""), claimed=1),
    "unaccepted-context": lambda ctx: _p_data((ctx + 100, 0x03, b"\x00" * 8)),
    "data-before-command": lambda ctx: _p_data((ctx, 0x02, b"\x08\x00\x18\x00" * 4)),
    "garbage-command": lambda ctx: _p_data((ctx, 0x03, b"\xff" * 33)),
    "pdu-over-max": lambda ctx: _HEADER.pack(0x04, 0x7FFF0000) + b"\x00" * 64,
    "unknown-pdu-type": lambda ctx: _HEADER.pack(0x09, 4) + b"\x00" * 4,
    "assoc-rq-again": lambda ctx: _HEADER.pack(0x01, 4) + b"\x00" * 4,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_protocol_violation_aborts_only_that_association(archive: Archive, tmp_path: Path,
                                                         name: str) -> None:
    before = _instance_count(archive)
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
    assert assoc.is_established
    ctx = next(cx.context_id for cx in assoc.accepted_contexts
               if cx.abstract_syntax == CTImageStorage)
    assoc.dul.socket.socket.sendall(HOSTILE[name](ctx))
    deadline = time.monotonic() + 10
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted, f"{name}: association not aborted"
    assert _store_one(archive, tmp_path) == 0  # the next one is served normally
    assert _instance_count(archive) == before + 1
    incoming = archive.data / "fast" / ".incoming"  # the default tier
    assert incoming.is_dir() and not list(incoming.glob("*")), "temp file left"


def test_release_in_the_middle_of_a_data_set_stores_nothing(archive: Archive,
                                                            tmp_path: Path) -> None:
    before = _instance_count(archive)
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
    assert assoc.is_established
    ctx = next(iter(assoc.accepted_contexts)).context_id
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = CTImageStorage
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = generate_uid()
    raw = encode(cmd, True, True)
    assert raw is not None
    sock = assoc.dul.socket.socket
    sock.sendall(_p_data((ctx, 0x03, raw)) + _p_data((ctx, 0x00, b"\x08\x00\x05\x00CS\x00\x00")))
    sock.sendall(_HEADER.pack(0x05, 4) + b"\x00" * 4)  # A-RELEASE-RQ, data set unfinished
    deadline = time.monotonic() + 10
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted
    assert _instance_count(archive) == before
    assert _store_one(archive, tmp_path) == 0


def test_those_associations_took_the_streaming_path(archive: Archive, tmp_path: Path) -> None:
    """The tests above are about fastscp only if it served them: its log says so."""
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
    assoc.dul.socket.socket.sendall(HOSTILE["garbage-command"](1))
    deadline = time.monotonic() + 10
    while "bad command set" not in archive.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "aborting association from TESTSCU: bad command set" in archive.logs()


def _find_pdus(ctx: int, ident: bytes, msg_id: int, *, cancel: bool) -> bytes:
    """A C-FIND-RQ (command + identifier), then optionally a C-CANCEL-RQ, as raw PDUs."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    def command(**values: object) -> bytes:
        cmd = Dataset()
        cmd.CommandGroupLength = 0
        for k, v in values.items():
            setattr(cmd, k, v)
        raw = encode(cmd, True, True)
        assert raw is not None
        return raw

    model = "1.2.840.10008.5.1.4.1.2.2.1"
    out = _p_data((ctx, 0x03, command(AffectedSOPClassUID=model, CommandField=0x0020,
                                      MessageID=msg_id, Priority=0, CommandDataSetType=0)))
    out += _p_data((ctx, 0x02, ident))
    if cancel:
        out += _p_data((ctx, 0x03, command(CommandField=0x0FFF,
                                           MessageIDBeingRespondedTo=msg_id,
                                           CommandDataSetType=0x0101)))
    return out


def _raw_association(port: int, model: str, syntax: str) -> socket.socket:
    """A plain socket with an association established by hand (A-ASSOCIATE-RQ encoded
    with pynetdicom's PDU classes), context 1 = (model, syntax); nobody else reads it."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.presentation import build_context

    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = "TESTSCU"
    prim.called_ae_title = "ARCHIVE"
    cx = build_context(model, [syntax])
    cx.context_id = 1
    prim.presentation_context_definition_list = [cx]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.1"
    prim.user_information = [length, impl]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(prim)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(bytes(rq.encode()))
    kind, body = _read_pdu(sock)
    assert kind == 0x02, f"association not accepted (PDU type 0x{kind:02X})"
    return sock


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf

    kind, length = _HEADER.unpack(exact(6))
    return kind, exact(length)


def _responses(sock: socket.socket) -> list[int]:
    """Statuses of the C-FIND-RSPs on ``sock``, up to the final one."""
    from io import BytesIO

    from pydicom.filereader import read_dataset

    statuses: list[int] = []
    command = b""
    while True:
        kind, body = _read_pdu(sock)
        assert kind == 0x04, f"PDU type 0x{kind:02X} instead of P-DATA-TF"
        pos = 0
        while pos < len(body):
            length, _ctx, control = struct.unpack_from(">LBB", body, pos)
            data, pos = body[pos + 6:pos + 4 + length], pos + 4 + length
            if not control & 0x01:
                continue  # an identifier
            command += data
            if control & 0x02:
                status = int(read_dataset(BytesIO(command), True, True).Status)
                command = b""
                statuses.append(status)
                if status not in (0xFF00, 0xFF01):
                    return statuses


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_find_on_the_streaming_path_and_cancel(archive: Archive, tmp_path: Path,
                                               syntax: str) -> None:
    """C-FIND is answered by fastscp (identifiers in Implicit or Explicit VR LE); a
    C-CANCEL-RQ that is already waiting when the answers start ends it with Cancel."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    pid = f"FASTFIND{syntax[-1]}"
    for _ in range(3):
        ae = scu_ae()
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
        ds = make_instance(rows=8, cols=8, patient_id=pid)
        assert assoc.send_c_store(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")).Status == 0
        assoc.release()
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientID = pid
    ident.StudyInstanceUID = ""
    raw = encode(ident, syntax == "1.2.840.10008.1.2", True)
    assert raw is not None
    sock = _raw_association(archive.port, "1.2.840.10008.5.1.4.1.2.2.1", syntax)
    try:
        sock.sendall(_find_pdus(1, raw, 1, cancel=False))
        assert _responses(sock) == [0xFF00] * 3 + [0x0000]
        sock.sendall(_find_pdus(1, raw, 2, cancel=True))
        assert _responses(sock) == [0xFE00]
        # the association still works after a cancel, and releases normally
        sock.sendall(_find_pdus(1, raw, 3, cancel=False))
        assert _responses(sock) == [0xFF00] * 3 + [0x0000]
        sock.sendall(_HEADER.pack(0x05, 4) + b"\x00" * 4)
        assert _read_pdu(sock)[0] == 0x06  # A-RELEASE-RP
    finally:
        sock.close()
