"""The router's metrics endpoint: loopback by default (a real router process), a
network bind refused without metrics_allow_anonymous and logged loudly with it, and the
HTTP server itself (real sockets) dropping silent clients and capping connections."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dicomweb_support import listening_addresses
from test_router_support import Router, port

from pacsinfra.pacs.router import metrics

pytestmark = [pytest.mark.integration]


def test_metrics_listen_on_loopback(tmp_path: Path) -> None:
    mport = port()
    router = Router(tmp_path / "router", {"metrics_port": mport})
    router.start()
    try:
        deadline = time.monotonic() + 10
        while not listening_addresses(mport) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listening_addresses(mport) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            assert b"pacsinfra_router_received_total" in r.read()
    finally:
        router.stop()


def test_a_network_bind_needs_metrics_allow_anonymous(tmp_path: Path) -> None:
    router = Router(tmp_path / "router", {"metrics_port": port(), "metrics_bind": "0.0.0.0"})
    r = router.cli("check")
    assert r.returncode == 2 and "metrics_allow_anonymous" in (r.stdout + r.stderr)


def test_silent_clients_are_dropped_and_connections_capped(monkeypatch: Any) -> None:
    monkeypatch.setattr(metrics, "TIMEOUT_S", 1.0)
    monkeypatch.setattr(metrics, "MAX_CONNECTIONS", 3)
    httpd = metrics.serve("127.0.0.1", 0, lambda: "up 1\n")
    mport = httpd.server_address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", mport), timeout=5) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", mport), timeout=5)
        extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert extra.recv(100) == b""  # closed unanswered: every slot is taken
        extra.close()
        started = time.monotonic()
        for s in idle:
            assert s.recv(100) == b""  # silent for TIMEOUT_S: dropped
        assert time.monotonic() - started < 3
        for s in idle:
            s.close()
        time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            assert r.read() == b"up 1\n"  # and the slots are free again
    finally:
        httpd.shutdown()
        httpd.server_close()
