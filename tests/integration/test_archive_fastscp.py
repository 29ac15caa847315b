"""The streaming storage SCP (``pacsinfra.pacs.fastscp``) against hostile peers.

A pynetdicom SCU that proposes only storage gets the streaming path; once it is
established, raw PDUs that break PS3.8 are written on its socket. Each must end
that association with an A-ABORT, leave nothing stored or indexed, and not disturb
the next association.
"""

from __future__ import annotations

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
    assert not list((archive.data / "default" / ".incoming").glob("*")), "temp file left"


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
