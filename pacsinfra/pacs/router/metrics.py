"""Router metrics in the Prometheus text exposition format, served over plain HTTP.

Queue depth per destination and state, age of the oldest waiting row, per-node
delivered/failed/dead-lettered counters and the delivery rate over the last minute.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pacsinfra.pacs.router.forwarder import Forwarder
from pacsinfra.pacs.router.queue import Queue
from pacsinfra.pacs.web_config import is_loopback

LOG = logging.getLogger("pacsinfra.router")
TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(queue: Queue, fwd: Forwarder, received: int, dropped: int) -> str:
    """The metrics page."""
    lines = [
        "# TYPE pacsinfra_router_received_total counter",
        f"pacsinfra_router_received_total {received}",
        "# TYPE pacsinfra_router_dropped_total counter",
        f"pacsinfra_router_dropped_total {dropped}",
        "# TYPE pacsinfra_router_queue_depth gauge",
    ]
    stats = queue.stats()
    for dest, d in sorted(stats.items()):
        for state in ("held", "pending", "inflight", "committing", "dead", "done"):
            lines.append(f'pacsinfra_router_queue_depth{{dest="{_esc(dest)}",state="{state}"}} '
                         f"{int(d.get(state, 0))}")
    lines.append("# TYPE pacsinfra_router_oldest_item_age_seconds gauge")
    for dest, d in sorted(stats.items()):
        lines.append(f'pacsinfra_router_oldest_item_age_seconds{{dest="{_esc(dest)}"}} '
                     f"{d.get('oldest_age', 0.0):.3f}")
    for name, table in (("sent", fwd.stats.sent), ("failed", fwd.stats.failed),
                        ("dead", fwd.stats.dead)):
        lines.append(f"# TYPE pacsinfra_router_{name}_total counter")
        for node in sorted(fwd.nodes):
            lines.append(f'pacsinfra_router_{name}_total{{node="{_esc(node)}"}} '
                         f"{table.get(node, 0)}")
    lines.append("# TYPE pacsinfra_router_rate_per_second gauge")
    for node in sorted(fwd.nodes):
        lines.append(f'pacsinfra_router_rate_per_second{{node="{_esc(node)}"}} '
                     f"{fwd.stats.rate(node):.3f}")
    lines.append("# TYPE pacsinfra_router_node_up gauge")
    for node, n in sorted(fwd.nodes.items()):
        lines.append(f'pacsinfra_router_node_up{{node="{_esc(node)}"}} {int(n.healthy)}')
    return "\n".join(lines) + "\n"


class _BoundedServer(ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONNECTIONS`` at once: connections
    beyond that are closed at once instead of each pinning a thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(bind: str, port: int, page: Callable[[], str]) -> Any:
    """Start the HTTP endpoint (GET /metrics) in a thread; returns the server.

    A client gets ``TIMEOUT_S`` seconds of socket silence before it is dropped, and
    at most ``MAX_CONNECTIONS`` connections are served at once, so slow or numerous
    clients cannot pin threads. The endpoint has no authentication: the router's
    config refuses a non-loopback bind unless ``metrics_allow_anonymous`` is set.
    """

    class Handler(BaseHTTPRequestHandler):
        timeout = TIMEOUT_S  # socket timeout: a request line or header that stalls ends here

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = page().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    if not is_loopback(bind):
        LOG.warning("SECURITY: the router's metrics endpoint listens on %s:%d without "
                    "authentication (metrics_allow_anonymous); anyone who reaches it reads "
                    "destination names and queue state", bind, port)
    httpd = _BoundedServer((bind, port), Handler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd
