"""A requestor (SCU) association on a plain socket, for sending stored files.

The router forwards files it already holds in DICOM form; pynetdicom would read
each one, queue its PDUs through several threads and poll for the answer. Here
the association is a blocking socket owned by the calling thread: the
A-ASSOCIATE-RQ/AC are encoded and decoded with pynetdicom's own PDU classes, a
C-STORE-RQ is a few bytes (:mod:`.command`), the data set goes from the file to
the socket with ``sendfile`` (no copy through Python), fragmented to the peer's
maximum PDU, and the response is read on the same thread. TLS is not served here
(the caller uses pynetdicom for TLS destinations).

Errors: :class:`AssociationFailed` when the association cannot be established
(refused, rejected, timed out); :class:`pdu.PeerClosed` or :class:`ProtocolError`
when it breaks while in use. Either way the requestor is closed.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from pacsinfra.pacs.dicom import tune_socket
from pacsinfra.pacs.fastscp import command, pdu
from pacsinfra.pacs.fastscp.association import ProtocolError
from pacsinfra.pacs.fastscp.negotiate import DICOM_APPLICATION_CONTEXT, user_information

_PDV = struct.Struct(">LBB")
_HEADER = struct.Struct(">BxL")
_UNLIMITED_CHUNK = 4 << 20  # data set bytes per PDU when the peer sets no limit
_META_GROUP_LENGTH = struct.Struct("<HH2sHL")


class AssociationFailed(Exception):
    """The association could not be established; the message says why."""


@dataclass(frozen=True)
class Part10Meta:
    """What sending a Part 10 file needs from its file meta group."""

    sop_class: str  # (0002,0002)
    sop_uid: str  # (0002,0003)
    transfer_syntax: str  # (0002,0010)
    dataset_offset: int  # where the data set starts


_META_UIDS = {0x0002: "sop_class", 0x0003: "sop_uid", 0x0010: "transfer_syntax"}
_META_LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV")


def read_meta(path: Path) -> Part10Meta:
    """The file meta of a Part 10 file written with a group length (as the router's
    spool files are), read with one open and no pydicom; ValueError when it is not."""
    with path.open("rb") as f:
        head = f.read(1024)
        if len(head) < 144 or head[128:132] != b"DICM":
            raise ValueError(f"{path}: not a DICOM Part 10 file")
        group, elem, vr, _, length = _META_GROUP_LENGTH.unpack_from(head, 132)
        if (group, elem, vr) != (0x0002, 0x0000, b"UL"):
            raise ValueError(f"{path}: file meta group without (0002,0000) group length")
        end = 144 + length
        if end > len(head):
            head += f.read(end - len(head))
    if end > len(head):
        raise ValueError(f"{path}: file meta group longer than the file")
    found: dict[str, str] = {}
    pos = 144
    while pos < end:  # explicit VR little endian, always (PS3.10 7.1)
        if pos + 8 > end:
            raise ValueError(f"{path}: truncated file meta element at byte {pos}")
        group, elem = struct.unpack_from("<HH", head, pos)
        vr = head[pos + 4:pos + 6]
        if vr in _META_LONG_VRS:
            (size,), pos = struct.unpack_from("<L", head, pos + 8), pos + 12
        else:
            (size,), pos = struct.unpack_from("<H", head, pos + 6), pos + 8
        if group != 0x0002 or pos + size > end:
            raise ValueError(f"{path}: malformed file meta element ({group:04X},{elem:04X})")
        if elem in _META_UIDS:
            found[_META_UIDS[elem]] = head[pos:pos + size].decode("ascii").rstrip("\x00 ")
        pos += size
    missing = sorted(set(_META_UIDS.values()) - set(found))
    if missing:
        raise ValueError(f"{path}: file meta without {', '.join(missing)}")
    return Part10Meta(dataset_offset=end, **found)


class StreamingRequestor:
    """One established association to a storage SCP; used by one thread at a time."""

    def __init__(self, sock: socket.socket, accepted: dict[tuple[str, str], int],
                 peer_max_pdu: int) -> None:
        self.sock = sock
        self.accepted = accepted  # (SOP class, transfer syntax) -> presentation context id
        self.peer_max_pdu = peer_max_pdu
        self.is_established = True
        self._message_id = 0

    @classmethod
    def open(cls, host: str, port: int, *, calling: str, called: str,
             contexts: Sequence[tuple[str, str]], max_pdu: int, timeout: float,
             network_timeout: float) -> StreamingRequestor:
        """Associate, proposing one presentation context per (SOP class, syntax)."""
        rq = A_ASSOCIATE()
        rq.application_context_name = DICOM_APPLICATION_CONTEXT
        rq.calling_ae_title = calling
        rq.called_ae_title = called
        proposed = []
        for i, (sop, ts) in enumerate(contexts):
            cx = build_context(sop, [ts])
            cx.context_id = 2 * i + 1
            proposed.append(cx)
        rq.presentation_context_definition_list = proposed
        rq.user_information = user_information(max_pdu, PYNETDICOM_IMPLEMENTATION_UID,
                                               PYNETDICOM_IMPLEMENTATION_VERSION)
        encoded = A_ASSOCIATE_RQ()
        encoded.from_primitive(rq)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise AssociationFailed(f"cannot connect to {called}@{host}:{port}: {exc}") from exc
        tune_socket(sock)
        try:
            sock.sendall(bytes(encoded.encode()))
            kind, body = _read_pdu(sock, 1 << 20)
        except (OSError, pdu.PeerClosed, ProtocolError) as exc:
            sock.close()
            raise AssociationFailed(f"association with {called}@{host}:{port} failed: "
                                    f"{exc}") from exc
        raw = _HEADER.pack(kind, len(body)) + body
        if kind == pdu.A_ASSOCIATE_RJ:
            sock.close()
            rj = A_ASSOCIATE_RJ()
            try:
                rj.decode(raw)
                why = f" (result {rj.result}, source {rj.source}, reason {rj.reason_diagnostic})"
            except Exception:  # noqa: BLE001 - a rejection we cannot read is still one
                why = ""
            raise AssociationFailed(f"association rejected by {called}@{host}:{port}{why}")
        if kind != pdu.A_ASSOCIATE_AC:
            sock.close()
            raise AssociationFailed(f"association aborted by {called}@{host}:{port}")
        ac = A_ASSOCIATE_AC()
        try:
            ac.decode(raw)
            prim = ac.to_primitive()
        except Exception as exc:  # noqa: BLE001 - a malformed A-ASSOCIATE-AC
            sock.close()
            raise AssociationFailed(f"association with {called}@{host}:{port} failed: "
                                    f"malformed A-ASSOCIATE-AC ({exc})") from exc
        if str(prim.application_context_name or "") != DICOM_APPLICATION_CONTEXT:
            # pynetdicom decodes a truncated PDU into an empty one rather than failing
            sock.close()
            raise AssociationFailed(f"association with {called}@{host}:{port} failed: "
                                    "malformed A-ASSOCIATE-AC (no DICOM application context)")
        by_id = {cx.context_id: str(cx.abstract_syntax) for cx in proposed}
        accepted: dict[tuple[str, str], int] = {}
        for cx in prim.presentation_context_definition_results_list:
            if (cx.result == 0 and cx.context_id is not None and cx.context_id in by_id
                    and cx.transfer_syntax):
                accepted[(by_id[cx.context_id], str(cx.transfer_syntax[0]))] = int(cx.context_id)
        peer_max = 0
        for item in prim.user_information:
            if isinstance(item, MaximumLengthNotification):
                peer_max = int(item.maximum_length_received or 0)
        sock.settimeout(network_timeout)
        return cls(sock, accepted, peer_max)

    def syntaxes(self, sop: str) -> list[str]:
        """The transfer syntaxes the peer accepted for SOP class ``sop``."""
        return [ts for (s, ts) in self.accepted if s == sop]

    def store_file(self, path: Path, sop_class: str, sop_uid: str, ts: str,
                   offset: int | None = None) -> int:
        """C-STORE the data set of a Part 10 file as it is on disk (from ``offset``, the
        data set's start, read from the file when not given); the response status."""
        if offset is None:
            offset = read_meta(path).dataset_offset
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            ctx = self._request(sop_class, sop_uid, ts)
            step = self._chunk()
            pos = offset
            while pos < size:
                n = min(step, size - pos)
                last = pos + n >= size
                self._sendall(_HEADER.pack(pdu.P_DATA_TF, n + 6)
                              + _PDV.pack(n + 2, ctx, 0x02 if last else 0x00))
                try:
                    sent = self.sock.sendfile(f, pos, n)
                except OSError as exc:
                    self.close()
                    raise pdu.PeerClosed(str(exc)) from exc
                if sent != n:
                    self.close()
                    raise pdu.PeerClosed("connection closed while sending a data set")
                pos += n
            if pos == offset:  # an empty data set still needs its last fragment
                self._sendall(pdu.p_data(ctx, 0x02, b""))
        return self._response()

    def store_bytes(self, data: bytes, sop_class: str, sop_uid: str, ts: str) -> int:
        """C-STORE a data set already encoded in ``ts``; the response status."""
        ctx = self._request(sop_class, sop_uid, ts)
        step = self._chunk()
        out = [pdu.p_data(ctx, 0x02 if pos + step >= len(data) else 0x00, data[pos:pos + step])
               for pos in range(0, max(len(data), 1), step)]
        self._sendall(b"".join(out))
        return self._response()

    def release(self) -> None:
        """A-RELEASE (waits briefly for the RP), then close."""
        if self.is_established:
            try:
                self._sendall(_HEADER.pack(pdu.A_RELEASE_RQ, 4) + b"\x00" * 4)
                _read_pdu(self.sock, 1 << 16)
            except (OSError, pdu.PeerClosed, ProtocolError):
                pass
        self.close()

    def close(self) -> None:
        """Close the socket (no release)."""
        self.is_established = False
        try:
            self.sock.close()
        except OSError:
            pass

    # -- helpers ------------------------------------------------------------------------------
    def _chunk(self) -> int:
        return max((self.peer_max_pdu or _UNLIMITED_CHUNK) - 6, 1024)

    def _request(self, sop_class: str, sop_uid: str, ts: str) -> int:
        ctx = self.accepted.get((sop_class, ts))
        if ctx is None:
            raise ValueError(f"no accepted presentation context for {sop_class} in {ts}")
        self._message_id = self._message_id % 0xFFFF + 1
        self._sendall(pdu.p_data(ctx, 0x03, command.store_rq(self._message_id, sop_class,
                                                             sop_uid)))
        return ctx

    def _response(self) -> int:
        parts: list[bytes] = []
        while True:
            kind, body = _read_pdu(self.sock, max(self.peer_max_pdu, 1 << 20) + 6)
            if kind == pdu.A_ABORT:
                self.close()
                raise pdu.PeerClosed("association aborted by the peer")
            if kind != pdu.P_DATA_TF:
                self.close()
                raise ProtocolError(f"PDU type 0x{kind:02X} instead of a C-STORE-RSP")
            pos = 0
            while pos + 6 <= len(body):
                length, _ctx, control = _PDV.unpack_from(body, pos)
                if length < 2 or pos + 4 + length > len(body):
                    self.close()
                    raise ProtocolError(f"PDV length {length} does not fit its PDU")
                if control & 0x01:
                    parts.append(body[pos + 6:pos + 4 + length])
                    if control & 0x02:
                        try:
                            rsp = command.decode(b"".join(parts))
                        except command.BadCommand as exc:
                            self.close()
                            raise ProtocolError(f"bad response command set: {exc}") from exc
                        if (rsp.get(command.COMMAND_FIELD) != command.C_STORE_RSP
                                or rsp.get(command.MESSAGE_ID_RESPONDED) != self._message_id):
                            self.close()
                            raise ProtocolError(f"unexpected response {rsp}")
                        return int(rsp.get(command.STATUS, 0xC000))
                pos += 4 + length

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise pdu.PeerClosed(str(exc)) from exc


def _read_pdu(sock: socket.socket, limit: int) -> tuple[int, bytes]:
    header = bytearray(6)
    pdu.recv_exact(sock, memoryview(header))
    kind, length = _HEADER.unpack(header)
    if length > limit:
        raise ProtocolError(f"PDU of {length} bytes announced (limit {limit})")
    body = bytearray(length)
    pdu.recv_exact(sock, memoryview(body))
    return kind, bytes(body)
