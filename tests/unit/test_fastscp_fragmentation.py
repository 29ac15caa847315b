"""Property tests: however a message is cut up, it arrives byte-identical.

A command set and a data set are split into PDVs of arbitrary sizes, the PDVs
grouped into P-DATA-TF PDUs arbitrarily, and the bytes written to a real socket in
arbitrary pieces (so the reader's ``recv`` calls end at arbitrary places). Read back
with the codec and the socket reader, and through the streaming SCP's real receive
loop into a real instance file, the command and the data set are the originals.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacsinfra.pacs.fastscp import codec, wire
from pacsinfra.pacs.fastscp.association import FastAssociation
from pacsinfra.pacs.fastscp.incoming import IncomingFile, Staging
from pacsinfra.pacs.fastscp.negotiate import Negotiated
from pacsinfra.pacs.fastscp.part10 import PREAMBLE, file_meta
from pacsinfra.pacs.fastscp.sinks import StoreRequest

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@st.composite
def cuts(draw: st.DrawFn) -> dict[str, object]:
    """A data set, and how to cut it: PDV sizes, PDVs per PDU, socket write sizes."""
    size = draw(st.one_of(st.integers(0, 64), st.integers(65, 5000), st.integers(5001, 300_000)))
    seed = draw(st.integers(0, 2**32 - 1))
    return {
        "data": random.Random(seed).randbytes(size),
        "room": draw(st.one_of(st.integers(1, 16), st.integers(17, 70_000))),
        "group": draw(st.lists(st.integers(1, 6), min_size=1, max_size=5)),
        "writes": draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=6)),
        "command_room": draw(st.integers(1, 120)),
    }


def _pdus(ctx: int, command: bytes, data: bytes, room: int, command_room: int,
          group: list[int]) -> bytes:
    """The command's and the data set's PDVs, grouped into P-DATA-TF PDUs."""
    pdvs: list[tuple[int, int, bytes]] = []
    for pos in range(0, len(command), command_room):
        last = pos + command_room >= len(command)
        pdvs.append((ctx, codec.COMMAND | (codec.LAST if last else 0),
                     command[pos:pos + command_room]))
    if not data:
        pdvs.append((ctx, codec.LAST, b""))
    for pos in range(0, len(data), room):
        last = pos + room >= len(data)
        pdvs.append((ctx, codec.LAST if last else 0, data[pos:pos + room]))
    out, i, g = [], 0, 0
    while i < len(pdvs):
        n = group[g % len(group)]
        out.append(codec.p_data_tf(pdvs[i:i + n]))
        i, g = i + n, g + 1
    return b"".join(out)


def _write_in_pieces(sock: socket.socket, blob: bytes, sizes: list[int]) -> None:
    pos, i = 0, 0
    while pos < len(blob):
        n = sizes[i % len(sizes)]
        sock.sendall(blob[pos:pos + n])
        pos, i = pos + n, i + 1


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    return a, b


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts())
def test_codec_and_reader_reassemble_byte_identical(case: dict) -> None:
    data: bytes = case["data"]  # type: ignore[assignment]
    command = codec.store_rq(7, CT, "1.2.3.4")
    blob = _pdus(1, command, data, case["room"], case["command_room"], case["group"])  # type: ignore[arg-type]
    reader, writer = _pair()
    sender = threading.Thread(target=_write_in_pieces, args=(writer, blob, case["writes"]))
    sender.start()
    try:
        messages = codec.MessageAssembler(contexts={1})
        got_command: bytes | None = None
        got = bytearray()
        done = False
        while not done:
            kind, body = wire.read_pdu(reader, 1 << 20)
            assert kind == codec.P_DATA_TF
            for part in messages.feed(body):
                if isinstance(part, codec.Command):
                    got_command = part.raw
                    messages.expect_data(part.context_id)
                else:
                    got += part.data
                    done = part.last
        assert got_command == command
        assert bytes(got) == data
    finally:
        sender.join()
        reader.close()
        writer.close()


class _FileSink:
    """A real sink: the data set streams into an :class:`IncomingFile` (staged in a small
    buffer, so larger instances spill to the file), sealed and kept on finish."""

    def __init__(self, folder: Path, staged: bool) -> None:
        self.folder = folder
        self.staging = Staging(16 << 10) if staged else None
        self.files: list[Path] = []

    def open(self, req: StoreRequest, meta: bytes) -> IncomingFile:
        return IncomingFile(self.folder, meta, staging=self.staging)

    def finish(self, req: StoreRequest, incoming: IncomingFile) -> int:
        incoming.seal()
        incoming.keep()
        incoming.discard()
        self.files.append(incoming.path)
        return 0


def _responses(sock: socket.socket) -> Iterator[dict[int, int | str]]:
    messages = codec.MessageAssembler()
    while True:
        kind, body = wire.read_pdu(sock, 1 << 20)
        assert kind == codec.P_DATA_TF, codec.pdu_name(kind)
        for part in messages.feed(body):
            assert isinstance(part, codec.Command)
            yield codec.decode_command(part.raw)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cuts(), st.booleans())
def test_the_receive_loop_stores_byte_identical(tmp_path: Path, case: dict, staged: bool) -> None:
    data: bytes = case["data"]  # type: ignore[assignment]
    sink = _FileSink(tmp_path, staged)
    server, client = _pair()
    neg = Negotiated("SCU", "SCP", 0, accepted={1: (CT, EXPLICIT)})
    assoc = FastAssociation(server, neg, sink, max_pdu=0, pdu_limit=1 << 20, peer="local")
    loop = threading.Thread(target=assoc.run, args=(b"\x02\x00\x00\x00\x00\x00",))
    loop.start()
    try:
        assert codec.parse_header(client.recv(6)) == (codec.A_ASSOCIATE_AC, 0)
        blob = _pdus(1, codec.store_rq(7, CT, "1.2.3.4"), data, case["room"],  # type: ignore[arg-type]
                     case["command_room"], case["group"])  # type: ignore[arg-type]
        _write_in_pieces(client, blob, case["writes"])  # type: ignore[arg-type]
        rsp = next(_responses(client))
        assert rsp[codec.STATUS] == 0 and rsp[codec.MESSAGE_ID_RESPONDED] == 7
        client.sendall(codec.release_rq())
        assert wire.read_pdu(client, 16) == (codec.A_RELEASE_RP, b"\x00" * 4)
    finally:
        loop.join(10)
        client.close()
    stored = sink.files[0].read_bytes()
    assert stored == PREAMBLE + file_meta(CT, "1.2.3.4", EXPLICIT) + data
    for f in sink.files:
        f.unlink()
