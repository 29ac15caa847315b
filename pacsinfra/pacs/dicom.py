"""Shared DICOM plumbing for the archive and the router (pynetdicom + pydicom).

The small API the PACS services build on; everything here is pure or touches only
the socket it is given:

- :class:`Status` — the DIMSE status codes both services return.
- :data:`TRANSFER_SYNTAXES` — every transfer syntax accepted *as received* (never transcoded).
- :func:`storage_contexts` — SCP presentation contexts: all storage SOP classes x all syntaxes.
- :func:`accept_proposed` — per-association contexts from the proposal, sender's syntax first.
- :func:`prefer_requestor_syntaxes` — same ordering over an AE's full supported list.
- :func:`scu_contexts` — SCU contexts for sending stored files, as stored or decoded.
- :func:`ssl_context` — a TLS 1.2+ :class:`ssl.SSLContext` from a :class:`TlsConfig`.
- :func:`valid_uid` / :func:`uid_path` — UID syntax check and a traversal-proof file path.
- :func:`tune_socket` / :data:`TCP_TUNING_HANDLER` — TCP_NODELAY (and bigger buffers) per connection;
  a requestor also ACKs at once (:func:`quick_ack`) before each read.
- :func:`make_ae` — an :class:`~pynetdicom.AE` with the limits and timeouts of a :class:`Limits`.
- :func:`association_limit` — whether one more association would exceed a listener's limits.
- :func:`associate` — open an association to a :class:`Peer` (TLS when the peer says so).
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, Association, build_context, evt
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext

from pacsinfra.pacs.compat import (
    before_each_read,
    keep_responses,
    set_dul_loop_delay,
    tcp_socket_of,
)
from pacsinfra.pacs.config_common import Limits, Peer, TlsConfig


class Status(IntEnum):
    """DIMSE status codes (PS3.4 B.2.3, C.4; PS3.7 C)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported
    CANCEL = 0xFE00
    WARNING_SUBOPS = 0xB000  # C-MOVE/C-GET: one or more sub-operations failed
    WARNING_COERCED = 0xB000  # C-STORE: coercion of data elements (same code point)
    DUPLICATE_SOP_INSTANCE = 0x0111
    NOT_AUTHORIZED = 0x0124
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700  # C-STORE / C-FIND
    OUT_OF_RESOURCES_MATCHES = 0xA701  # C-MOVE/C-GET: cannot calculate matches
    OUT_OF_RESOURCES_SUBOPS = 0xA702  # C-MOVE/C-GET: cannot perform sub-operations
    MOVE_DESTINATION_UNKNOWN = 0xA801
    DATASET_MISMATCH = 0xA900  # identifier does not match SOP class
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110


# Every syntax pydicom knows (uncompressed, deflated, JPEG family, JPEG-LS, JPEG 2000, HTJ2K,
# RLE, MPEG-2/4, H.264, HEVC, ...). pynetdicom's acceptor picks the first syntax of *our*
# list that the requestor proposed unless prefer_requestor_syntaxes() reorders it per
# association (the archive does): then the sender's own first choice wins.
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
TRANSFER_SYNTAXES: list[str] = [
    str(ts)
    for ts in AllTransferSyntaxes
    if ts not in _UNCOMPRESSED and ts != ExplicitVRBigEndian
] + [*_UNCOMPRESSED, ExplicitVRBigEndian]


def storage_contexts(
    transfer_syntaxes: Iterable[str] | None = None,
) -> list[PresentationContext]:
    """SCP contexts: every storage SOP class x every transfer syntax (as received)."""
    syntaxes = list(transfer_syntaxes or TRANSFER_SYNTAXES)
    return [build_context(str(cx.abstract_syntax), syntaxes) for cx in AllStoragePresentationContexts]


def _proposed(assoc: Association) -> dict[str, list[str]] | None:
    """Abstract syntax -> the transfer syntaxes the requestor proposed, in its order."""
    primitive = assoc.requestor.primitive
    if primitive is None:
        return None
    proposed: dict[str, list[str]] = {}
    for rq in primitive.presentation_context_definition_list or []:
        proposed.setdefault(str(rq.abstract_syntax), []).extend(
            str(t) for t in rq.transfer_syntax)
    return proposed


def prefer_requestor_syntaxes(assoc: Association) -> None:
    """Make this association accept, per context, the requestor's *first* syntax we support.

    pynetdicom's acceptor picks by its own list order; a sender offering [JPEG, Explicit
    LE] for an uncompressed file, or [Explicit LE, JPEG lossy] for a JPEG file, would
    then be pushed to transcode (possibly lossy). Call from an ``EVT_REQUESTED`` handler
    (before negotiation); only this association's copy of the contexts changes.
    """
    proposed = _proposed(assoc)
    if proposed is None:
        return
    out: list[PresentationContext] = []
    for cx in assoc.acceptor.supported_contexts:
        wanted = proposed.get(str(cx.abstract_syntax))
        if not wanted:
            out.append(cx)
            continue
        ours = [str(t) for t in cx.transfer_syntax]
        ordered = [t for t in dict.fromkeys(wanted) if t in ours]
        ordered += [t for t in ours if t not in ordered]
        copy = build_context(str(cx.abstract_syntax), ordered)
        copy.scu_role, copy.scp_role = cx.scu_role, cx.scp_role
        out.append(copy)
    assoc.acceptor.supported_contexts = out


def accept_proposed(
    assoc: Association,
    supported: Mapping[str, Sequence[str]],
    *,
    both_roles: Container[str] = (),
    other_syntaxes: Sequence[str] | None = None,
) -> None:
    """Set this association's acceptable contexts from what the requestor proposed.

    Call from an ``EVT_REQUESTED`` handler. For each proposed abstract syntax we
    support (``supported`` maps it to our syntaxes; ``other_syntaxes`` is used for any
    other abstract syntax, None to refuse those), one context whose syntaxes are in the
    *requestor's* order of preference, so nothing is transcoded. ``both_roles``: SOP
    classes for which SCU/SCP role selection is accepted (storage, for C-GET).

    Cheaper than giving the AE every storage class x every syntax: pynetdicom
    deep-copies the AE's supported contexts for each association (~0.1 s for 170
    classes x 39 syntaxes), so the AE keeps a minimal list and this builds the rest.
    """
    proposed = _proposed(assoc)
    if proposed is None:
        return
    out: list[PresentationContext] = []
    for abstract, wanted in proposed.items():
        ours = supported.get(abstract, other_syntaxes)
        if ours is None:
            continue
        ordered = [t for t in dict.fromkeys(wanted) if t in ours]
        if not ordered:
            continue
        cx = build_context(abstract, ordered)
        if abstract in both_roles:
            cx.scu_role, cx.scp_role = True, True
        out.append(cx)
    assoc.acceptor.supported_contexts = out


def scu_contexts(pairs: Iterable[tuple[str, str]], *,
                 decodable: Callable[[str], bool] = lambda ts: False,
                 verification: bool = False) -> list[PresentationContext]:
    """SCU contexts to send stored files: the stored syntaxes, and uncompressed ones to fall
    back on.

    One context per (SOP class, stored syntax), so the peer accepts or refuses each alone;
    an uncompressed one also offers the other uncompressed syntax. A deflated or big-endian
    syntax, or a compressed one that ``decodable`` says can be decoded, also gets the SOP
    class's Explicit (and Implicit) VR Little Endian context: the fallback when the peer
    refuses the stored syntax. ``verification`` adds the Verification SOP class, which
    nearly every SCP accepts: a peer that takes none of the storage contexts still
    associates, and each of its files fails as a sub-operation of its own, instead of the
    whole retrieve. At most 128 contexts (PS3.8 limit); the caller gets fewer if there are
    more, and sub-operations for the rest fail.
    """
    out: list[PresentationContext] = (
        [build_context("1.2.840.10008.1.1")] if verification else [])
    seen: set[tuple[str, str]] = set()
    for sop, ts in pairs:
        wanted = [ts]
        if ts not in _UNCOMPRESSED and (not UID(ts).is_compressed or decodable(ts)):
            wanted.append(ExplicitVRLittleEndian)  # deflated, big endian, or decodable
        for syntax in wanted:
            if (sop, syntax) in seen or len(out) == 128:
                continue
            seen.add((sop, syntax))
            # an uncompressed syntax offers the other one too: pynetdicom converts between
            # them without touching pixel data
            others = [t for t in _UNCOMPRESSED if t != syntax] if syntax in _UNCOMPRESSED else []
            out.append(build_context(sop, [syntax, *others]))
    return out


def ssl_context(tls: TlsConfig, *, server: bool) -> ssl.SSLContext | None:
    """A TLS 1.2+ context for DICOM TLS (BCP 195), or ``None`` when TLS is off.

    Server side: our cert/key; client certs verified against ``ca_file`` and required
    when ``require_client_cert``. Client side: the peer verified against ``ca_file``
    (hostname not checked: DICOM peers are addressed by IP in most sites), our
    cert/key presented when given (mutual TLS).
    """
    if not tls.enabled:
        return None
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    ctx = ssl.create_default_context(purpose, cafile=tls.ca_file)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if server:
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (
            ssl.CERT_OPTIONAL if tls.ca_file else ssl.CERT_NONE
        )
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.ca_file else ssl.CERT_NONE
    return ctx


# PS3.5 9.1: components of digits, no leading zero (except "0"), dot-separated, <= 64 chars.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(uid: object) -> bool:
    """True when ``uid`` is a syntactically valid DICOM UID (so safe in a path)."""
    return isinstance(uid, str) and len(uid) <= 64 and _UID_RE.match(uid) is not None


def uid_path(root: Path, study: str, series: str, sop: str) -> Path:
    """Where an instance lives under ``root``: never outside it, whatever the UIDs say.

    Valid UIDs are used as they are (readable on disk); anything else is replaced by
    its sha256 so a hostile ``../../etc`` cannot escape. Study directories fan out by
    a 2-hex-digit hash prefix to keep directories small.
    """
    parts = [u if valid_uid(u) else "h" + hashlib.sha256(u.encode()).hexdigest()[:40]
             for u in (study, series, sop)]
    fan = hashlib.sha1(parts[0].encode()).hexdigest()[:2]
    path = root / fan / parts[0] / parts[1] / (parts[2] + ".dcm")
    return path


def association_limit(server: Any, calling: str, *, max_associations: int, per_ae: int,
                      exclude: object = None) -> str | None:
    """Why one more association from ``calling`` would exceed ``server``'s limits (both
    paths' associations count), or None; ``exclude``: the one asking."""
    active = [a for a in server.active_associations if a is not exclude]
    if len(active) >= max_associations:
        return f"{len(active)} associations open (max_associations {max_associations})"
    same = sum(1 for a in active if a.is_established
               and str(a.requestor.ae_title).strip() == calling)
    if same >= per_ae:
        return f"{same} associations from {calling} open (max_associations_per_ae {per_ae})"
    return None


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY (no Nagle stall between small PDVs) and larger kernel buffers."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    except OSError:  # not a TCP socket (tests with socketpair); nothing to tune
        pass


def quick_ack(sock: socket.socket) -> None:
    """ACK what the peer sent right away (TCP_QUICKACK; Linux drops it on its own, so a
    sender sets it again before every read of a response).

    A sender waits for each C-STORE response. A peer without TCP_NODELAY (DCMTK's
    default) writes its response in two pieces, and Nagle holds the second until the
    first is acknowledged, which Linux delays up to 40 ms on a connection that looks
    interactive: 40 ms per instance, whatever its size (20 instances/s measured)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except (OSError, TypeError):  # closed under us (the read reports it), or not Linux
        pass


_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 12)


def _on_conn_open(event: evt.Event) -> None:
    raw = tcp_socket_of(event.assoc)
    if raw is not None:
        tune_socket(raw)
    # pynetdicom's DUL thread polls with a 1 ms sleep when idle; each C-STORE crosses it
    # several times. A shorter nap cuts per-message latency, but every open association
    # then wakes up 2,000 times a second: 0.5 ms is the compromise (0.2 ms measured
    # faster on one association, and burns visibly more CPU when many are open).
    set_dul_loop_delay(event.assoc, DUL_LOOP_DELAY)
    if raw is not None and event.assoc.is_requestor:
        before_each_read(event.assoc, lambda: quick_ack(raw))


DUL_LOOP_DELAY = 0.0005

# Bind this to evt.EVT_CONN_OPEN (server handlers or associate(evt_handlers=...)).
TCP_TUNING_HANDLER: tuple[Any, Any] = (evt.EVT_CONN_OPEN, _on_conn_open)


def make_ae(ae_title: str, limits: Limits | None = None) -> AE:
    """An AE with the limits, timeouts and max PDU of ``limits`` applied."""
    limits = limits or Limits()
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = limits.max_associations
    ae.maximum_pdu_size = limits.max_pdu
    ae.acse_timeout = limits.acse_timeout
    ae.dimse_timeout = limits.dimse_timeout
    ae.network_timeout = limits.network_timeout
    return ae


def associate(
    ae: AE,
    peer: Peer,
    *,
    contexts: list[PresentationContext] | None = None,
    max_pdu: int | None = None,
    evt_handlers: list[tuple[Any, Any]] | None = None,
    ext_neg: list[Any] | None = None,
) -> Association:
    """Open an association to ``peer`` (TLS when ``peer.tls.enabled``), TCP-tuned;
    ``ext_neg``: extended negotiation items (e.g. SCP/SCU role selection)."""
    kwargs: dict[str, Any] = {"ae_title": peer.ae_title}
    if ext_neg:
        kwargs["ext_neg"] = ext_neg
    if contexts is not None:
        kwargs["contexts"] = contexts
    if max_pdu is not None:
        kwargs["max_pdu"] = max_pdu
    ctx = ssl_context(peer.tls, server=False)
    if ctx is not None:
        kwargs["tls_args"] = (ctx, None)
    kwargs["evt_handlers"] = [TCP_TUNING_HANDLER, *(evt_handlers or [])]
    assoc = ae.associate(peer.host, peer.port, **kwargs)
    keep_responses(assoc)
    return assoc


def associate_kwargs(peer: Peer, contexts: list[PresentationContext]) -> dict[str, Any]:
    """Keyword arguments for ``AE.associate`` to reach ``peer`` (used by C-MOVE handlers)."""
    kwargs: dict[str, Any] = {"contexts": contexts, "evt_handlers": [TCP_TUNING_HANDLER]}
    ctx = ssl_context(peer.tls, server=False)
    if ctx is not None:
        kwargs["tls_args"] = (ctx, None)
    return kwargs


__all__ = [
    "TCP_TUNING_HANDLER",
    "TRANSFER_SYNTAXES",
    "Status",
    "associate",
    "accept_proposed",
    "associate_kwargs",
    "keep_responses",
    "make_ae",
    "prefer_requestor_syntaxes",
    "scu_contexts",
    "ssl_context",
    "storage_contexts",
    "quick_ack",
    "tune_socket",
    "uid_path",
    "valid_uid",
]
