"""DICOMweb for viewers (PS3.18): QIDO-RS, WADO-RS, STOW-RS and DELETE, plus
``/metrics`` (Prometheus); a Starlette application run by uvicorn in a thread.

The endpoints live in :mod:`pacsinfra.pacs.archive.web` (one module per job); this
module puts them together: routes, the per-client limiter, refusal handling, and the
uvicorn server with the connection guard. Which scope each route needs: QIDO-RS and
WADO-RS ``read``, STOW-RS ``write``, DELETE ``delete``, metrics ``metrics``; UPS-RS
workitems ``read`` to search and read, ``write`` to create and change.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from pacsinfra.pacs.archive.config import DicomWebConfig
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.archive.web import admin, bulk, qido, rendered, stow, wado, workitems
from pacsinfra.pacs.archive.web.auth import Authenticator
from pacsinfra.pacs.archive.web.context import WebContext
from pacsinfra.pacs.archive.web.errors import RefusalLog, exception_handlers
from pacsinfra.pacs.archive.web.forwarded import ForwardedHeaders
from pacsinfra.pacs.archive.web.guard import ClientLimiter, ConnectionGuard, guarded_protocol
from pacsinfra.pacs.archive.web.metacache import MetadataCache
from pacsinfra.pacs.archive.web.warm import MetadataWarmer
from pacsinfra.pacs.web_config import is_loopback

LOG = logging.getLogger("pacsinfra.archive.dicomweb")
WORKER_THREADS = 64  # blocking calls (disk, index) in flight, all clients together
START_TIMEOUT_S = 15.0


def routes() -> list[Route]:
    """Every DICOMweb route."""
    s = "/studies/{study}"
    out = [
        Route("/studies", qido.search_studies, methods=["GET"]),
        Route("/series", qido.search_series, methods=["GET"]),
        Route("/instances", qido.search_instances, methods=["GET"]),
        Route(f"{s}/series", qido.search_series, methods=["GET"]),
        Route(f"{s}/instances", qido.search_instances, methods=["GET"]),
        Route(f"{s}/series/{{series}}/instances", qido.search_instances, methods=["GET"]),
        Route("/studies", stow.store_instances, methods=["POST"]),
        Route(s, stow.store_instances, methods=["POST"]),
        Route(s, admin.delete, methods=["DELETE"]),
        Route(f"{s}/series/{{series}}", admin.delete, methods=["DELETE"]),
        Route(f"{s}/series/{{series}}/instances/{{sop}}", admin.delete, methods=["DELETE"]),
        Route("/metrics", admin.metrics, methods=["GET"]),
    ]
    out += [Route(s + path, endpoint, methods=["GET"])
            for path, endpoint in (*wado.ROUTES, *bulk.ROUTES, *rendered.ROUTES)]
    out += [Route(path, endpoint, methods=[method])
            for path, endpoint, method in workitems.ROUTES]
    return out


class DicomWeb:
    """The DICOMweb server over one :class:`ArchiveService`."""

    def __init__(self, service: ArchiveService, cfg: DicomWebConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.refusals = RefusalLog(service.audit)
        ctx = WebContext(service, cfg, Authenticator(cfg),  # reads the token secrets now
                         MetadataCache(cfg.metadata_cache_mb * 1024 * 1024))

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
            yield

        self.app = Starlette(
            routes=routes(), exception_handlers=exception_handlers(), lifespan=lifespan,
            middleware=[Middleware(ForwardedHeaders, trusted=list(cfg.limits.trusted_proxies),
                                   refusals=self.refusals),
                        Middleware(ClientLimiter, max_requests=cfg.limits.max_requests_per_client,
                                   max_header_bytes=cfg.limits.max_header_bytes,
                                   refusals=self.refusals)])
        self.app.state.web = ctx
        # Only the process that serves DICOMweb warms (with workers > 1: worker 0's stores).
        self.warmer = (MetadataWarmer(ctx) if cfg.metadata_cache_mb and cfg.warm_metadata
                       else None)
        if self.warmer is not None:
            service.on_stored.append(self.warmer.offer)
        self.app.state.refusals = self.refusals
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _warn(self) -> None:
        cfg = self.cfg
        where = f"{cfg.bind}:{cfg.port}"
        if cfg.allow_anonymous:
            LOG.warning("SECURITY: DICOMweb on %s serves requests without authentication "
                        "(allow_anonymous) with scopes %s: anyone who reaches it can use them "
                        "on patient data; for labs only", where,
                        ",".join(cfg.anonymous_scopes))
        elif cfg.anonymous:
            LOG.info("DICOMweb on %s: requests from this machine without a token get "
                     "scopes %s", where, ",".join(cfg.anonymous_scopes))
        if not is_loopback(cfg.bind) and not cfg.tls.enabled:
            LOG.warning("SECURITY: DICOMweb on %s without TLS: bearer tokens and patient "
                        "data cross the network in clear", where)

    def start(self) -> None:
        """Serve in a background thread (uvicorn; TLS when configured); raises OSError
        when the port cannot be opened."""
        import uvicorn

        cfg, limits = self.cfg, self.cfg.limits
        kwargs: dict[str, Any] = {}
        if cfg.tls.enabled:
            import ssl

            kwargs.update(ssl_certfile=cfg.tls.cert_file, ssl_keyfile=cfg.tls.key_file,
                          ssl_ca_certs=cfg.tls.ca_file,
                          ssl_cert_reqs=(ssl.CERT_REQUIRED if cfg.tls.require_client_cert
                                         else ssl.CERT_NONE))
        guard = ConnectionGuard(limits, self.refusals)
        config = uvicorn.Config(
            self.app, host=cfg.bind, port=cfg.port, log_level="warning", access_log=False,
            http=guarded_protocol(guard), lifespan="on", server_header=False,
            h11_max_incomplete_event_size=limits.max_header_bytes,
            timeout_keep_alive=limits.keep_alive_seconds, timeout_graceful_shutdown=5,
            proxy_headers=False,  # web.forwarded does it, for trusted proxies only
            **kwargs)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dicomweb", daemon=True)
        self._thread.start()
        if self.warmer is not None:
            self.warmer.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise OSError(f"DICOMweb cannot listen on {cfg.bind}:{cfg.port} "
                              "(see the log above)")
            time.sleep(0.02)
        self._warn()

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.warmer is not None:
            self.warmer.stop()
