"""Send spooled files to one destination over a kept-open association.

Transfer syntax choice per file: the file's own syntax if the destination accepted
it (sent byte for byte, never decoded), else the destination's preferred syntaxes,
then Explicit VR LE, then Implicit VR LE. Uncompressed syntaxes convert into each
other without touching pixel data; a compressed file is decoded
(:mod:`pacsinfra.pacs.transcode`) unless the destination has ``transcode: false``.

Plain-TCP destinations get a :class:`~pacsinfra.pacs.fastscp.requestor.StreamingRequestor`
(the file goes from disk to the socket with ``sendfile``, the response is read on
this thread); TLS destinations a pynetdicom association.

Outcomes are returned (:class:`Outcome`), never raised: a DICOM status, or a
transport failure, each classified transient or permanent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context

from pacsinfra.pacs.compat import encode_dataset
from pacsinfra.pacs.config_common import Limits, Peer
from pacsinfra.pacs.dicom import associate, make_ae
from pacsinfra.pacs.fastscp.codec import ProtocolError
from pacsinfra.pacs.fastscp.part10 import Part10Meta, read_meta
from pacsinfra.pacs.fastscp.requestor import AssociationFailed, StreamingRequestor
from pacsinfra.pacs.fastscp.wire import PeerClosed
from pacsinfra.pacs.router.config import Destination
from pacsinfra.pacs.transcode import Choice, Refusal, prepare

LOG = logging.getLogger("pacsinfra.router")
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128


def is_permanent(status: int) -> bool:
    """DIMSE failures that no retry will fix (PS3.4 B.2.3 / PS3.7 C)."""
    return (
        status in (0x0122, 0x0124, 0x0111)  # SOP class not supported, not authorized, duplicate
        or 0xA900 <= status <= 0xA9FF  # data set does not match SOP class
        or 0xC000 <= status <= 0xCFFF  # cannot understand
    )


def is_success(status: int) -> bool:
    """Success and the storage warnings (coercion, elements discarded, not matching)."""
    return status == 0x0000 or status in (0xB000, 0xB006, 0xB007)


@dataclass
class Outcome:
    """What happened to one file."""

    ok: bool
    status: int | None = None
    error: str = ""
    permanent: bool = False
    transport: bool = False  # the destination could not be reached / association failed
    sop_class: str = ""  # of the instance sent (for a storage commitment request)


class Sender:
    """One association's worth of sending to ``dest`` (used by one worker thread)."""

    def __init__(self, name: str, dest: Destination, calling_ae: str,
                 limits: Limits | None = None) -> None:
        self.name = name
        self.dest = dest
        limits = limits or Limits()
        self.ae = make_ae(calling_ae, limits)
        self.ae.acse_timeout = min(limits.acse_timeout, 10)
        self.ae.network_timeout = min(limits.network_timeout, 30)
        self.max_pdu = limits.max_pdu
        self.assoc: Any = None  # pynetdicom (TLS destinations)
        self.link: StreamingRequestor | None = None  # plain TCP destinations
        self._wanted: dict[str, list[str]] = {}  # SOP class -> syntaxes to propose

    @property
    def _streaming(self) -> bool:
        return not self.dest.tls.enabled

    def _syntaxes(self, file_ts: str) -> list[str]:
        out: list[str] = []
        for ts in (file_ts, *self.dest.transfer_syntaxes, *_UNCOMPRESSED):
            if ts not in out:
                out.append(ts)
        return out

    def _contexts(self) -> list[Any]:
        # One context per (SOP class, syntax): each is accepted or refused on its own, so
        # we learn exactly which syntaxes the destination takes.
        out: list[Any] = []
        for sop, syntaxes in self._wanted.items():
            for ts in syntaxes:
                if len(out) < _MAX_CONTEXTS:
                    out.append(build_context(sop, [ts]))
        return out

    def _accepted(self, sop: str) -> list[str]:
        if self.link is not None:
            return self.link.syntaxes(sop)
        if self.assoc is None:
            return []
        return [str(cx.transfer_syntax[0]) for cx in self.assoc.accepted_contexts
                if str(cx.abstract_syntax) == sop]

    def _established(self) -> bool:
        if self.link is not None:
            return self.link.is_established
        return self.assoc is not None and bool(self.assoc.is_established)

    def _ensure(self, sop: str, file_ts: str) -> str | None:
        """An established association that negotiated ``sop``; None (with reason) if not."""
        wanted = self._syntaxes(file_ts)
        known = self._wanted.get(sop, [])
        new = [ts for ts in wanted if ts not in known]
        if self._established() and not new:
            return None
        self._wanted[sop] = known + new
        if sum(len(v) for v in self._wanted.values()) > _MAX_CONTEXTS:
            # Too many SOP classes for one association: start over with this one only,
            # so a class is never refused merely because we ran out of contexts.
            self._wanted = {sop: wanted}
        self.close()
        if self._streaming:
            try:
                self.link = StreamingRequestor.open(
                    self.dest.host or "", self.dest.port, calling=str(self.ae.ae_title),
                    called=self.dest.ae_title, max_pdu=self.max_pdu,
                    contexts=[(s, ts) for s, tss in self._wanted.items() for ts in tss
                              ][:_MAX_CONTEXTS],
                    timeout=float(self.ae.acse_timeout or 10),
                    network_timeout=float(self.ae.network_timeout or 30))
            except AssociationFailed as exc:
                return str(exc)
            return None
        peer = Peer(ae_title=self.dest.ae_title, host=self.dest.host or "", port=self.dest.port,
                    tls=self.dest.tls)
        try:
            assoc = associate(self.ae, peer, contexts=self._contexts())
        except Exception as exc:  # noqa: BLE001 - TLS/socket setup errors are transport errors
            return f"association failed: {exc}"
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            return f"association {why} by {self.dest.ae_title}@{self.dest.host}:{self.dest.port}"
        self.assoc = assoc
        return None

    def send(self, path: Path) -> Outcome:
        """C-STORE one spooled file; classify the result."""
        try:
            meta = read_meta(path)
        except (OSError, ValueError) as exc:  # a broken spool file is a permanent failure
            return Outcome(False, error=f"unreadable spool file: {exc}", permanent=True)
        sop, file_ts = meta.sop_class, meta.transfer_syntax
        problem = self._ensure(sop, file_ts)
        if problem:
            self.close()
            return Outcome(False, error=problem, transport=True)
        accepted = self._accepted(sop)
        if not accepted:
            # Refused at association negotiation: no C-STORE was sent, so there is no
            # DIMSE status to record (the destination never said 0x0122).
            offered = ", ".join(self._syntaxes(file_ts))
            return Outcome(False, permanent=True, error=(
                f"association: {self.dest.ae_title} rejected the presentation context for "
                f"SOP class {sop} (transfer syntaxes offered: {offered}); nothing was sent"))
        target = next((ts for ts in self._syntaxes(file_ts) if ts in accepted), None)
        if self.link is not None:
            return self._send_streaming(self.link, path, meta, file_ts, target, accepted)
        try:
            if target == file_ts:
                status = self.assoc.send_c_store(path)  # raw bytes, chunked from the file
            else:
                payload = self._convert(path, file_ts, accepted)
                if isinstance(payload, Outcome):
                    return payload
                status = self.assoc.send_c_store(payload)
        except Exception as exc:  # noqa: BLE001 - socket/encoding trouble mid-association
            self.close()
            return Outcome(False, error=f"send failed: {exc}", transport=True)
        if not self.assoc.is_established or status is None or "Status" not in status:
            self.close()
            return Outcome(False, error="association lost (no C-STORE response)", transport=True)
        code = int(status.Status)
        if is_success(code):
            return Outcome(True, status=code, sop_class=sop)
        return Outcome(False, status=code, error=f"C-STORE status 0x{code:04X}",
                       permanent=is_permanent(code))

    def _send_streaming(self, link: StreamingRequestor, path: Path, meta: Part10Meta,
                        file_ts: str, target: str | None, accepted: list[str]) -> Outcome:
        sop, sop_uid = meta.sop_class, meta.sop_uid
        try:
            if target == file_ts:  # bytes as stored
                code = link.store_file(path, sop, sop_uid, file_ts, meta.dataset_offset)
            else:
                payload = self._convert(path, file_ts, accepted)
                if isinstance(payload, Outcome):
                    return payload
                target = target or accepted[0]
                try:
                    data = encode_dataset(payload, target == ImplicitVRLittleEndian, True)
                except Exception:  # noqa: BLE001 - pydicom cannot encode it in that syntax
                    return Outcome(False, permanent=True, error=f"cannot encode in {target}")
                code = link.store_bytes(data, sop, sop_uid, target)
        except (PeerClosed, ProtocolError, OSError, ValueError) as exc:
            self.close()
            return Outcome(False, error=f"send failed: {exc}", transport=True)
        if is_success(code):
            return Outcome(True, status=code, sop_class=sop)
        return Outcome(False, status=code, error=f"C-STORE status 0x{code:04X}",
                       permanent=is_permanent(code))

    def _convert(self, path: Path, file_ts: str, accepted: list[str]) -> Any:
        ds = dcmread(path)
        if UID(file_ts).is_compressed:
            if not self.dest.transcode:
                return Outcome(False, permanent=True, error=(
                    f"{self.dest.ae_title} does not accept {UID(file_ts).name} and transcoding "
                    "is not enabled for this destination"))
            try:
                prepare(ds, Choice(ExplicitVRLittleEndian, decode=True))
            except Refusal as exc:
                return Outcome(False, permanent=True, error=f"cannot decompress: {exc}")
        # pynetdicom re-encodes an uncompressed dataset for the accepted uncompressed syntax.
        return ds

    def echo(self) -> bool:
        """C-ECHO on a fresh association (health check)."""
        return self.echo_problem() is None

    def echo_problem(self) -> str | None:
        """C-ECHO on a fresh association: None when it answered Success, else why not."""
        where = f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"
        peer = Peer(ae_title=self.dest.ae_title, host=self.dest.host or "", port=self.dest.port,
                    tls=self.dest.tls)
        try:
            assoc = associate(self.ae, peer,
                              contexts=[build_context("1.2.840.10008.1.1")])
        except Exception as exc:  # noqa: BLE001 - TLS/socket setup errors
            return f"cannot associate with {where}: {exc}"
        try:
            if not assoc.is_established:
                why = ("rejected the association" if assoc.is_rejected
                       else "aborted the association" if assoc.is_aborted
                       else "did not answer (connection refused or timed out)")
                return f"{where} {why}"
            status = assoc.send_c_echo()
            code = getattr(status, "Status", None) if status is not None else None
            if code is None:
                return f"{where} sent no C-ECHO response"
            return None if int(code) == 0 else f"{where} answered C-ECHO with 0x{int(code):04X}"
        finally:
            if assoc.is_established:
                assoc.release()

    def close(self) -> None:
        """Release the association if open."""
        if self.link is not None:
            self.link.release()
            self.link = None
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            except Exception:  # noqa: BLE001 - closing a broken association
                pass
            self.assoc = None
