"""DICOMweb pieces that need no server: secure-default config validation, the streaming
multipart parser (against a whole-body split of the same bytes, over every way a body
can arrive in pieces), Content-Type parsing."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pacsinfra.pacs.archive.config import ArchiveConfig, DicomWebConfig
from pacsinfra.pacs.archive.web.multipart import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    TooManyParts,
    parse_content_type,
)
from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.pacs.web_config import OidcConfig, is_loopback

# -- configuration ---------------------------------------------------------------------------


def test_dicomweb_is_on_loopback_by_default() -> None:
    cfg = ArchiveConfig()
    assert cfg.dicomweb.enabled and cfg.dicomweb.bind == "127.0.0.1"
    # no authentication on loopback: anonymous callers may read and store, never delete
    assert cfg.dicomweb.anonymous and "delete" not in cfg.dicomweb.anonymous_scopes


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.1.2.3", "pacs.example.org"])
def test_a_network_bind_needs_authentication(bind: str) -> None:
    with pytest.raises(ValidationError) as err:
        DicomWebConfig(bind=bind)
    message = str(err.value)
    assert "dicomweb.tokens" in message and "allow_anonymous" in message
    # any of these makes it valid
    DicomWebConfig.model_validate({"bind": bind, "token": {"env": "T"}})
    DicomWebConfig.model_validate({"bind": bind, "tokens": [
        {"token": {"file": "/etc/t"}, "scopes": ["read"]}]})
    DicomWebConfig.model_validate({"bind": bind, "oidc": {
        "issuer": "https://idp.example/realms/pacs", "audience": "pacs"}})
    lab = DicomWebConfig(bind=bind, allow_anonymous=True)
    assert lab.anonymous
    DicomWebConfig(bind=bind, enabled=False)  # nothing listens


def test_with_authentication_nobody_is_anonymous() -> None:
    cfg = DicomWebConfig.model_validate({"token": {"env": "T"}})
    assert not cfg.anonymous


def test_token_entries_are_checked() -> None:
    with pytest.raises(ValidationError, match="scopes"):
        DicomWebConfig.model_validate({"tokens": [{"token": {"env": "T"}, "scopes": []}]})
    with pytest.raises(ValidationError):
        DicomWebConfig.model_validate({"tokens": [{"token": {"env": "T"}, "scopes": ["root"]}]})
    with pytest.raises(ValidationError):  # a literal secret is not a reference
        DicomWebConfig.model_validate({"tokens": [{"token": "s3cret", "scopes": ["read"]}]})


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "rs256"])
def test_oidc_allows_asymmetric_algorithms_only(alg: str) -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        OidcConfig(issuer="https://idp.example", audience="pacs", algorithms=[alg])


def test_oidc_keys_come_over_https_or_loopback() -> None:
    with pytest.raises(ValidationError, match="https"):
        OidcConfig(issuer="http://idp.example", audience="pacs")
    with pytest.raises(ValidationError, match="https"):
        OidcConfig(issuer="https://idp.example", audience="pacs",
                   jwks_url="http://idp.example/jwks")
    OidcConfig(issuer="http://127.0.0.1:8080", audience="pacs")
    # with a key file, the issuer is only compared with the tokens' iss
    OidcConfig(issuer="http://idp.example", audience="pacs", jwks_file="/etc/jwks.json")


def test_router_metrics_stay_on_loopback_unless_said() -> None:
    assert RouterConfig(metrics_port=9100).metrics_bind == "127.0.0.1"
    with pytest.raises(ValidationError, match="metrics_allow_anonymous"):
        RouterConfig(metrics_port=9100, metrics_bind="0.0.0.0")
    RouterConfig(metrics_port=9100, metrics_bind="0.0.0.0", metrics_allow_anonymous=True)
    RouterConfig(metrics_bind="0.0.0.0")  # no metrics_port: nothing listens


@pytest.mark.parametrize(("host", "loop"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("localhost.evil.example", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


# -- multipart -------------------------------------------------------------------------------


def _reference(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a complete, well-formed body, split all at once."""
    delim = b"\r\n--" + boundary.encode()
    assert body.startswith(b"--" + boundary.encode())
    chunks = (b"\r\n" + body).split(delim)[1:]
    out = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk[2:].partition(b"\r\n\r\n") if not chunk[2:].startswith(
            b"\r\n") else (b"", b"", chunk[4:])
        headers = {}
        for line in head.decode("latin-1").split("\r\n") if head else []:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        out.append((headers, payload))
    return out


def _parse(body: bytes, boundary: str, cuts: list[int], max_parts: int = 1000
           ) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(boundary, max_parts=max_parts)
    parts: list[tuple[dict[str, str], bytes]] = []
    current: bytearray | None = None
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    for piece in pieces:
        for ev in reader.feed(piece):
            if isinstance(ev, PartStart):
                parts.append((ev.headers, b""))
                current = bytearray()
            elif isinstance(ev, PartData):
                assert current is not None
                current += ev.data
            else:
                assert isinstance(ev, PartEnd) and current is not None
                parts[-1] = (parts[-1][0], bytes(current))
                current = None
    reader.close()
    return parts


BOUNDARIES = st.text(alphabet="abcXYZ0189'()+_,-./:=?", min_size=1, max_size=40)
# payloads that contain near-boundaries, CRLFs and dashes: where parsers go wrong
PAYLOADS = st.lists(st.sampled_from([b"\r\n", b"--", b"-", b"\r", b"\n", b"x", b"\x00",
                                     b"DICM", b"\r\n--"]), max_size=30).map(b"".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(boundary=BOUNDARIES, payloads=st.lists(PAYLOADS, min_size=1, max_size=5),
       data=st.data())
def test_streaming_parse_matches_whole_body_split(boundary: str, payloads: list[bytes],
                                                  data: st.DataObject) -> None:
    dash = b"--" + boundary.encode()
    body = b"".join(dash + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in payloads) + dash + b"--\r\n"
    # a payload that happens to hold the delimiter is another body: not this test's
    assume((b"\r\n" + body).count(b"\r\n" + dash) == len(payloads) + 1)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    expected = _reference(body, boundary)
    assert _parse(body, boundary, cuts) == expected


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), data=st.data())
def test_junk_is_refused_cleanly(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=5)))
    try:
        _parse(body, "b0undary", cuts, max_parts=3)
    except MultipartError:
        pass  # the only way a malformed body may fail


def test_limits_and_malformations() -> None:
    ok = b"--b\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--"
    assert [p for _, p in _parse(ok, "b", [])] == [b"x", b"y"]
    with pytest.raises(TooManyParts):
        _parse(ok, "b", [], max_parts=1)
    with pytest.raises(MultipartError, match="before the closing boundary"):
        _parse(b"--b\r\n\r\nx", "b", [])
    with pytest.raises(MultipartError, match="no multipart boundary"):
        _parse(b"y" * 70_000, "b", [1000, 20_000])
    with pytest.raises(MultipartError, match="headers longer"):
        _parse(b"--b\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", "b", [])
    with pytest.raises(MultipartError, match="header line"):
        _parse(b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "b", [])
    with pytest.raises(MultipartError, match="invalid multipart boundary"):
        MultipartReader("bad\x00boundary", max_parts=1)
    # a part's own Content-Length is not trusted: the boundary ends it
    lying = b"--b\r\nContent-Length: 999999\r\n\r\nshort\r\n--b--"
    assert _parse(lying, "b", [3])[0][1] == b"short"
    # preamble and epilogue are ignored (RFC 2046)
    assert _parse(b"hello\r\n--b\r\n\r\nz\r\n--b--\r\nbye", "b", [])[0][1] == b"z"


def test_content_type_parsing() -> None:
    mime, params = parse_content_type(
        'Multipart/Related; type="application/dicom"; boundary=abc; start="<x>"')
    assert mime == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "abc", "start": "<x>"}
    for bad in ("", "multipart", "a/b/c", 'x/y; boundary="open', "x/y; =v", "x/y; a"):
        with pytest.raises(ValueError):
            parse_content_type(bad)
    assert re.match(r"^\w+/\w+$", parse_content_type("x/y")[0])
