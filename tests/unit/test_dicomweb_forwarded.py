"""Forwarding headers (RFC 7239 Forwarded, X-Forwarded-*) as the archive's DICOMweb reads
them from a trusted proxy: what they name, what is refused, and who is trusted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsinfra.pacs.archive.web.forwarded import (
    Forwarded,
    ForwardedError,
    is_trusted,
    parse,
    trusted_networks,
)


def read(**headers: str) -> Forwarded:
    given_ = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return parse(given_.get)


def test_nginx_as_the_viewer_configures_it() -> None:
    fwd = read(forwarded="for=192.0.2.7;proto=https", x_forwarded_for="192.0.2.7",
               x_forwarded_proto="https", x_forwarded_host="viewer.example:8443",
               x_forwarded_port="8443", x_forwarded_prefix="/dicom-web")
    assert fwd == Forwarded(client="192.0.2.7", proto="https", host="viewer.example:8443",
                            prefix="/dicom-web")


def test_forwarded_wins_and_its_last_element_counts() -> None:
    fwd = read(forwarded='for=198.51.100.1;host=first, for="[2001:db8::1]:4711";'
               'proto=http;host="viewer.example"', x_forwarded_host="other.example",
               x_forwarded_for="203.0.113.9")
    assert fwd.client == "2001:db8::1" and fwd.host == "viewer.example" and fwd.proto == "http"


def test_x_forwarded_port_joins_a_host_without_one() -> None:
    assert read(x_forwarded_host="viewer", x_forwarded_port="8080").host == "viewer:8080"
    assert read(x_forwarded_host="viewer:1", x_forwarded_port="8080").host == "viewer:1"


def test_nothing_said_changes_nothing() -> None:
    assert read() == Forwarded()
    assert read(forwarded="for=unknown").client is None
    assert read(forwarded="for=_hidden").client is None


@pytest.mark.parametrize("headers", [
    {"x_forwarded_proto": "gopher"},
    {"x_forwarded_host": "evil.example/path"},
    {"x_forwarded_host": "a b"},
    {"x_forwarded_host": "viewer", "x_forwarded_port": "99999"},
    {"x_forwarded_prefix": "/dicom-web/../admin"},
    {"x_forwarded_prefix": "dicom-web"},
    {"x_forwarded_prefix": "/a b"},
    {"x_forwarded_for": "not-an-address"},
    {"forwarded": 'for="192.0.2.1'},
    {"forwarded": "for"},
    {"forwarded": "for=192.0.2.1;for=192.0.2.2"},
])
def test_malformed_values_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ForwardedError):
        read(**headers)


@given(st.dictionaries(st.sampled_from(["forwarded", "x-forwarded-for", "x-forwarded-proto",
                                        "x-forwarded-host", "x-forwarded-port",
                                        "x-forwarded-prefix"]),
                       st.text(st.characters(min_codepoint=32, max_codepoint=255),
                               max_size=40)))
def test_any_header_value_parses_or_is_refused(headers: dict[str, str]) -> None:
    try:
        fwd = parse(headers.get)
    except ForwardedError:
        return
    # what passes can be put into a URL as it is
    for value in (fwd.host or "", fwd.prefix):
        assert not any(c in value for c in ' "<>\\?#')
    assert fwd.proto in (None, "http", "https")


def test_trusted_networks() -> None:
    nets = trusted_networks(["127.0.0.1", "10.20.0.0/16", "::1", "localhost"])
    assert is_trusted("127.0.0.1", nets) and is_trusted("10.20.3.4", nets)
    assert is_trusted("::ffff:10.20.3.4", nets)  # IPv4-mapped, as a dual-stack socket says
    assert not is_trusted("10.21.0.1", nets) and not is_trusted("192.0.2.1", nets)
    assert not is_trusted("unknown", nets)
    assert trusted_networks(["no-such-host.invalid"]) == []  # trusts nobody
