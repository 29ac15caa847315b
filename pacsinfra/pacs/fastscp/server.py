"""The listener: a pynetdicom association server with admission control in front.

The accept loop only accepts: each connection is checked against the per-address
limit and given a pending slot (:mod:`.admission`), or refused at once; TLS
handshakes happen later, on the connection's own thread, within its request
deadline. That thread then runs :meth:`.fastpath.FastPath.serve`, which serves the
association on the streaming path, refuses it, or hands it to pynetdicom (on a
guarded socket), as if this module did not exist.

Both kinds of association count against the same limits: ``active_associations``
lists both, so the services' per-calling-AE checks and shutdown drains see every
association. The listening socket has a receive buffer large enough to peek at an
association request of the full PDU size limit, and a listen backlog of
``listen_backlog``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from datetime import datetime
from typing import Any

from pynetdicom import AE, evt

from pacsinfra.pacs.compat import (
    ThreadedAssociationServer,
    association_peer,
    register_server,
    rejection_of,
)
from pacsinfra.pacs.fastscp import codec
from pacsinfra.pacs.fastscp.fastpath import FastPath
from pacsinfra.pacs.fastscp.guard import GuardedSocket, GuardedSSLSocket
from pacsinfra.pacs.refusals import Refusal

LOG = logging.getLogger("pacsinfra.fastscp")
LISTEN_RCVBUF = 4 << 20  # inherited by accepted sockets (tune_socket sets the same later)
_RJ_REASONS = {(1, 3): "calling AE title not recognized", (1, 7): "called AE title not recognized",
               (1, 2): "application context not supported", (1, 1): "no reason given",
               (2, 2): "protocol version not supported", (3, 1): "temporary congestion",
               (3, 2): "local limit exceeded"}


class StreamingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with admission control and the streaming path."""

    fast: FastPath  # set by start_server before the first connection
    # A connection thread must not keep a stopped server's process alive.
    daemon_threads = True

    def server_bind(self) -> None:
        assert self.socket is not None
        _size_receive_buffer(self.socket, self.fast.limits.pdu_size_limit)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only: no TLS handshake on the accept loop (a silent peer would stall
        every other connection), that happens on the connection's thread."""
        assert self.socket is not None
        sock, address = self.socket.accept()
        return GuardedSocket.adopt(sock), address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admission: a pending slot, or a refusal at once (too many connections from that
        address): an A-ASSOCIATE-RJ on plain TCP, a close on TLS."""
        host = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        pending = self.fast.gate.admit(request, host)
        if pending is None:
            if self.ssl_context is None:  # a TLS peer could not read a plain refusal
                try:
                    request.setblocking(False)
                    request.send(codec.associate_rj(*codec.RJ_LIMIT))
                except OSError:
                    pass
            self.fast.refused(Refusal(host, "per-address", (
                f"{self.fast.limits.max_per_address} connections from this address already "
                "open (max_connections_per_address)")))
            return False
        request.pending = pending
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        fast, pending = self.fast, request.pending
        sock = request
        try:
            if self.ssl_context is not None:
                sock = self._handshake(request, client_address)
                if sock is None:
                    return
            if fast.serve(sock, client_address, pending):
                return
        except Exception:  # noqa: BLE001 - one bad connection must not stop the server
            LOG.exception("connection from %s failed", client_address)
            self.shutdown_request(sock)
            return
        finally:
            fast.gate.done(pending)
        super().process_request_thread(sock, client_address)

    def _handshake(self, raw: GuardedSocket, client_address: Any) -> ssl.SSLSocket | None:
        """The TLS handshake, within the connection's request deadline."""
        pending = raw.pending
        host = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        assert self.ssl_context is not None
        tls: ssl.SSLSocket | None = None
        try:
            tls = self.ssl_context.wrap_socket(raw, server_side=True,
                                               do_handshake_on_connect=False)
            pending.sock = tls  # an eviction shuts this one down now
            tls.settimeout(max(pending.deadline - time.monotonic(), 0.001))
            tls.do_handshake()
            tls.settimeout(None)
            return tls
        except (OSError, ValueError) as exc:
            if not pending.evicted:
                self.fast.refused(Refusal(host, "tls", f"TLS handshake failed: {exc}"))
            for sock in (tls, raw):
                try:
                    if sock is not None:
                        sock.close()
                except OSError:
                    pass
            return None

    @property
    def active_associations(self) -> list[Any]:
        return [*super().active_associations, *list(self.fast.active)]

    def shutdown(self) -> None:
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

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.setblocking(True)  # accepted from a non-blocking listener
        return sock, address


def listening_socket(address: tuple[str, int], pdu_size_limit: int) -> socket.socket:
    """A bound TCP socket (not yet listening) sized like :class:`StreamingServer`'s."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _size_receive_buffer(sock, pdu_size_limit)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _size_receive_buffer(sock: socket.socket, pdu_size_limit: int) -> None:
    """Room to peek at a whole A-ASSOCIATE-RQ of up to ``pdu_size_limit`` bytes (set
    before ``listen``: accepted sockets inherit it; the kernel caps it at rmem_max)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                        max(LISTEN_RCVBUF, pdu_size_limit + codec.HEADER_SIZE))
    except OSError:
        pass


def start_server(ae: AE, address: tuple[str, int], fast: FastPath, *,
                 evt_handlers: list[Any], ssl_context: ssl.SSLContext | None,
                 listener: socket.socket | None = None) -> StreamingServer:
    """``AE.start_server(block=False)`` with admission control and the streaming path in
    front; ``listener``: accept on this listening socket (see
    :class:`SharedListenerServer`) instead of binding ``address``."""
    base: type[StreamingServer] = StreamingServer
    attrs: dict[str, Any] = {"fast": fast, "request_queue_size": fast.limits.listen_backlog}
    if listener is not None:
        base = SharedListenerServer
        attrs["listener"] = listener
    cls = type(base.__name__, (base,), attrs)
    if ssl_context is not None:
        ssl_context.sslsocket_class = GuardedSSLSocket
    handlers = [*evt_handlers, (evt.EVT_REJECTED, _on_rejected(fast))]
    server = ae.make_server(address, evt_handlers=handlers, ssl_context=ssl_context,
                            server_class=cls)
    assert isinstance(server, StreamingServer)
    fast.server = server
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}",
                     daemon=True).start()
    register_server(ae, server)
    return server


def _on_rejected(fast: FastPath) -> Any:
    """An ``EVT_REJECTED`` handler: pynetdicom's rejections, and the services', audited."""

    def handler(event: Any) -> None:
        assoc = event.assoc
        rsd = rejection_of(assoc)
        why = _RJ_REASONS.get((rsd[1], rsd[2]), "rejected") if rsd else "rejected"
        calling = str(getattr(assoc.requestor, "ae_title", "") or "").strip()
        kind = "calling-ae" if rsd and rsd[1:] == (1, 3) else (
            "limit" if rsd and rsd[1:] == (3, 2) else "rejected")
        fast.refused(Refusal(association_peer(assoc), kind, why, calling,
                             str(assoc.acceptor.ae_title or "").strip()))

    return handler
