"""A pynetdicom association server that serves storage-only associations itself.

Each accepted connection already has its own thread (pynetdicom's
``ThreadingMixIn``). There, before pynetdicom sees a byte, the A-ASSOCIATE-RQ is
*peeked* (``MSG_PEEK``, nothing consumed): if :func:`~.negotiate.negotiate` says it
is ours (plain TCP; only storage, verification and, with a query sink, C-FIND
contexts), :class:`FastPath`
consumes it and runs a :class:`~.association.FastAssociation`; otherwise the
connection goes to pynetdicom untouched, as if this module did not exist (C-MOVE,
C-GET, TLS, role selection, user identity, anything malformed).

Both kinds count against the same limits: ``active_associations`` lists both, so
the services' per-calling-AE checks and shutdown drains see every association.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from pacsinfra.pacs.dicom import open_associations, tune_socket
from pacsinfra.pacs.fastscp import pdu
from pacsinfra.pacs.fastscp.association import FastAssociation, QuerySink, StoreSink
from pacsinfra.pacs.fastscp.negotiate import encode_accept, encode_reject, negotiate, parse_request

LOG = logging.getLogger("pacsinfra.fastscp")
# A-ASSOCIATE-RJ (result, source, reason), as pynetdicom sends them
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_LIMIT = (0x02, 0x03, 0x02)


class FastPath:
    """The policy and bookkeeping of the streaming path for one listening AE."""

    def __init__(self, ae: AE, sink: StoreSink, supported: Mapping[str, Sequence[str]], *,
                 per_ae_limit: int, draining: Callable[[], bool] = lambda: False,
                 queries: QuerySink | None = None) -> None:
        self.ae = ae
        self.sink = sink
        self.queries = queries  # answers C-FIND when ``supported`` lists query models
        self.supported = supported
        self.per_ae_limit = per_ae_limit
        self.draining = draining
        self.active: set[FastAssociation] = set()
        self.server: Any = None
        self._lock = threading.Lock()

    def _reject_reason(self, calling: str) -> tuple[int, int, int] | None:
        allowed = [a.strip() for a in (self.ae.require_calling_aet or [])]
        if allowed and calling not in allowed:
            return REJECT_CALLING_AE
        if self.draining():
            return REJECT_LIMIT
        if self.server is None:
            return None
        if len(self.server.active_associations) >= self.ae.maximum_associations:
            return REJECT_LIMIT
        if open_associations(self.server, calling) >= self.per_ae_limit:
            return REJECT_LIMIT
        return None

    def serve(self, sock: socket.socket, address: Any) -> bool:
        """Serve ``sock`` here and return True, or return False (nothing consumed)."""
        if isinstance(sock, ssl.SSLSocket):
            return False
        raw = pdu.peek_pdu(sock, float(self.ae.acse_timeout or 30))
        rq = parse_request(raw) if raw is not None else None
        if rq is None or raw is None:
            return False
        neg = negotiate(rq, self.supported, ae_title=self.ae.ae_title,
                        max_pdu=self.ae.maximum_pdu_size,
                        implementation_uid=str(self.ae.implementation_class_uid),
                        implementation_version=str(self.ae.implementation_version_name or ""))
        if neg is None or neg.primitive is None:
            return False
        pdu.recv_exact(sock, memoryview(bytearray(len(raw))))  # consume what was peeked
        tune_socket(sock)
        sock.settimeout(self.ae.network_timeout)
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        assoc = FastAssociation(sock, neg, self.sink, max_pdu=self.ae.maximum_pdu_size,
                                peer=peer, queries=self.queries)
        with self._lock:
            reason = self._reject_reason(neg.calling)
            if reason is None:
                self.active.add(assoc)
        if reason is not None:
            LOG.warning("rejecting association from %s (%s): %s", neg.calling, peer,
                        "calling AE not allowed" if reason == REJECT_CALLING_AE
                        else "association limit or shutting down")
            try:
                sock.sendall(encode_reject(*reason))
            except OSError:
                pass
            sock.close()
            return True
        try:
            assoc.run(encode_accept(neg.primitive))
        finally:
            with self._lock:
                self.active.discard(assoc)
        return True

    def abort_all(self) -> None:
        """Abort every association of this path (shutdown)."""
        with self._lock:
            active = list(self.active)
        for assoc in active:
            assoc.abort()


class StreamingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with storage-only associations served by ``fast``."""

    fast: FastPath | None = None
    # A connection thread must not keep a stopped server's process alive (one can sit
    # in the A-ASSOCIATE-RQ peek for up to the ACSE timeout).
    daemon_threads = True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        fast = self.fast
        if fast is not None:
            try:
                if fast.serve(request, client_address):
                    return
            except pdu.PeerClosed:
                self.shutdown_request(request)
                return
            except Exception:  # noqa: BLE001 - one bad connection must not stop the server
                LOG.exception("streaming path failed for %s", client_address)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    @property
    def active_associations(self) -> list[Any]:
        fast = list(self.fast.active) if self.fast is not None else []
        return [*super().active_associations, *fast]

    def shutdown(self) -> None:
        if self.fast is not None:
            self.fast.abort_all()
        super().shutdown()


class SharedListenerServer(StreamingServer):
    """The same, accepting on a listening socket it is given instead of binding one:
    the archive supervisor's, shared by its worker processes. The socket is
    non-blocking, so a connection goes to whichever worker accepts first (an idle one;
    the others' ``accept`` fails with EAGAIN and they go back to waiting), not to a
    hash of the client's address and port as SO_REUSEPORT does (four connections over
    two workers hashed 3-1 or 4-0 in half of the measured runs)."""

    listener: socket.socket | None = None  # set on a per-socket subclass (shared_listener)

    def server_bind(self) -> None:
        assert self.listener is not None and self.socket is not None
        self.socket.close()  # the one socketserver made and pynetdicom would bind
        self.socket = self.listener
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Nothing: the owner of the socket listens."""


def start_server(ae: AE, address: tuple[str, int], fast: FastPath, *,
                 evt_handlers: list[Any], ssl_context: ssl.SSLContext | None,
                 listener: socket.socket | None = None) -> StreamingServer:
    """``AE.start_server(block=False)`` with the streaming path in front; ``listener``:
    accept on this listening socket (see :class:`SharedListenerServer`) instead of
    binding ``address``."""
    cls: type[StreamingServer] = StreamingServer
    if listener is not None:
        cls = type("SharedListenerServer", (SharedListenerServer,), {"listener": listener})
    server = ae.make_server(address, evt_handlers=evt_handlers, ssl_context=ssl_context,
                            server_class=cls)
    assert isinstance(server, StreamingServer)
    fast.server = server
    server.fast = fast
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}",
                     daemon=True).start()
    ae._servers.append(server)
    return server
