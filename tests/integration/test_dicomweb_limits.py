"""Slow and greedy clients against a real archive's DICOMweb: a request head that
trickles or never comes is 408 and closed; a stalled or endless body is 408; one
address's connections and requests in progress are capped (429) while another address
(127.0.0.2: another client on the same machine) is still served; malformed HTTP is a
JSON 400; a body nobody reads is drained for a bounded time only."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import need_module
from dicomweb_support import Raw, error_of, request, start_web_archive, stow_headers

pytestmark = pytest.mark.integration

need_module("starlette")
need_module("uvicorn")

OTHER = "127.0.0.2"  # a second client: Linux answers for all of 127/8 on lo
LIMITS = {"header_timeout_seconds": 2, "body_timeout_seconds": 2, "keep_alive_seconds": 1,
          "stow_timeout_seconds": 4, "max_connections_per_client": 4,
          "max_requests_per_client": 2}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("limits")
    arch, _, port = start_web_archive(base, {"limits": LIMITS})
    yield arch, port
    assert arch.stop() == 0


def _stow_head(length: int) -> bytes:
    return (f"POST /studies HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
            f"Content-Type: {stow_headers()['Content-Type']}\r\n\r\n").encode()


def test_a_request_head_has_a_deadline(web: Any) -> None:
    _, port = web
    for opening in (b"", b"GET /stu", b"GET /studies HTTP/1.1\r\nHost: t\r\nX-Slow: 1"):
        raw = Raw(port)
        started = time.monotonic()
        raw.send(opening)
        if opening:
            time.sleep(1.0)
            raw.send(b"\r\nX-More: still typing")  # trickling does not extend the deadline
        status, headers, body = raw.response()
        took = time.monotonic() - started
        assert status == 408 and 1.5 < took < 4, (opening, status, took)
        assert headers["content-type"] == "application/json" and error_of(body)
        assert raw.closed_within(1)
        raw.close()


def test_a_stalled_or_endless_body_is_408(web: Any) -> None:
    _, port = web
    raw = Raw(port)
    raw.send(_stow_head(1000) + b"--pacsinfra-test-boundary\r\n")
    started = time.monotonic()
    status, _, body = raw.response()
    assert status == 408 and 1.5 < time.monotonic() - started < 4
    assert "stopped sending" in error_of(body)
    raw.close()
    # a byte every 0.5 s never stalls, but the whole body has stow_timeout_seconds
    raw = Raw(port)
    raw.send(_stow_head(10_000))
    started = time.monotonic()
    answer: list[Any] = []
    t = threading.Thread(target=lambda: answer.append(raw.response()))
    t.start()
    while t.is_alive() and time.monotonic() - started < 10:
        try:
            raw.send(b"x")
        except OSError:
            break
        time.sleep(0.5)
    t.join(5)
    assert answer and answer[0][0] == 408, answer
    assert 3.5 < time.monotonic() - started < 7
    assert "longer than 4 s" in error_of(answer[0][2])
    raw.close()


def test_one_address_cannot_take_every_connection(web: Any) -> None:
    _, port = web
    idle = [Raw(port) for _ in range(LIMITS["max_connections_per_client"])]
    try:
        time.sleep(0.2)
        extra = Raw(port)
        status, headers, body = extra.response()
        assert status == 429 and headers["retry-after"] == "1"
        assert "open connections" in error_of(body)
        extra.close()
        status, _, _ = request(port, "GET", "/studies", source=OTHER)  # someone else: served
        assert status == 200
    finally:
        for r in idle:
            r.close()
    time.sleep(0.3)
    assert request(port, "GET", "/studies")[0] == 200  # and the first address again


def test_one_address_cannot_take_every_worker(web: Any) -> None:
    _, port = web
    slow = []
    for _ in range(LIMITS["max_requests_per_client"]):
        raw = Raw(port)
        raw.send(_stow_head(100_000) + b"--pacsinfra-test-boundary\r\n")
        slow.append(raw)
    time.sleep(0.3)
    try:
        status, headers, body = request(port, "GET", "/studies")
        assert status == 429 and headers["retry-after"] == "1"
        assert "requests in progress" in error_of(body)
        assert request(port, "GET", "/studies", source=OTHER)[0] == 200
    finally:
        for raw in slow:
            raw.close()
    time.sleep(0.3)
    assert request(port, "GET", "/studies")[0] == 200


def test_malformed_http_is_a_json_4xx(web: Any) -> None:
    _, port = web
    big = b"a" * 70_000
    for junk, expected in (
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /studies HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            # both lengths: Transfer-Encoding wins (RFC 9112 6.3); no Content-Type: 415
            (b"POST /studies HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n", 415),
            (b"POST /studies HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n", 400),
            (b"POST /studies HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
             b"Content-Length: 6\r\n\r\n", 400),
            (b"GET /studies HTTP/1.1\r\nHost: t\r\nX: " + big + b"\r\n\r\n", 431),
            (b"GET /studies?PatientID=" + big + b" HTTP/1.1\r\nHost: t\r\n\r\n", 431)):
        raw = Raw(port)
        raw.send(junk)
        status, headers, body = raw.response()
        assert status == expected, junk[:30]
        assert headers["content-type"] == "application/json", junk[:30]
        assert error_of(body)
        raw.close()


def test_an_unread_body_is_drained_for_a_bounded_time(web: Any) -> None:
    _, port = web
    raw = Raw(port)
    raw.send(b"GET /studies HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\nabc")
    status, _, _ = raw.response()
    assert status == 200
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 8:  # the client keeps sending: closed anyway
        try:
            raw.send(b"x" * 1024)
        except OSError:
            closed = True
            break
        time.sleep(0.1)
    assert closed and time.monotonic() - started < 4
    raw.close()
    # an idle kept-alive connection goes after keep_alive_seconds
    raw = Raw(port)
    raw.send(b"GET /studies HTTP/1.1\r\nHost: t\r\n\r\n")
    assert raw.response()[0] == 200
    assert raw.closed_within(3)
    raw.close()
