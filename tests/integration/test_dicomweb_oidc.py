"""OpenID Connect against a real local identity provider stand-in: an HTTP server this
test starts on loopback, serving a discovery document and a JWK set of keys the test
generates (RS256 and ES256). Valid tokens get their scopes; expired ones, wrong
audience or issuer, unknown key ids, "none" and the HS256-with-the-public-key
confusion, and a valid-looking token signed by a key the provider does not hold are
all 401; random key ids do not make the archive hammer the provider."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module
from dicomweb_support import multipart, part10, start_web_archive

pytestmark = pytest.mark.integration

need_module("jwt")
need_module("cryptography")
need_module("httpx")

import httpx  # noqa: E402
import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402

AUDIENCE = "pacs-archive"


class Provider:
    """A minimal OIDC provider: discovery document and JWKS over HTTP on loopback."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.jwks_fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/.well-known/openid-configuration":
                    doc: Any = {"issuer": provider.issuer,
                                "jwks_uri": f"{provider.issuer}/keys"}
                elif self.path == "/keys":
                    provider.jwks_fetches += 1
                    doc = {"keys": provider.keys}
                else:
                    self.send_error(404)
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, kid: str, private: Any, alg: str) -> None:
        algo = jwt.get_algorithm_by_name(alg)
        jwk = json.loads(algo.to_jwk(private.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": alg})

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def idp() -> Iterator[Any]:
    p = Provider()
    keys = {"rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec1": ec.generate_private_key(ec.SECP256R1()),
            "rogue": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    p.publish("rsa1", keys["rsa1"], "RS256")
    p.publish("ec1", keys["ec1"], "ES256")
    yield p, keys
    p.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, idp: Any) -> Iterator[Any]:
    provider, _ = idp
    base = tmp_path_factory.mktemp("oidc")
    arch, url, _ = start_web_archive(base, {"oidc": {
        "issuer": provider.issuer, "audience": AUDIENCE, "algorithms": ["RS256", "ES256"],
        "leeway_seconds": 5, "jwks_min_refresh_seconds": 2}})
    yield arch, url
    assert arch.stop() == 0


def _token(key: Any, kid: str, alg: str, issuer: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": issuer, "aud": AUDIENCE, "sub": "dr-house", "iat": now, "exp": now + 300,
            **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand, the way an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = b"" if secret is None else hmac.new(secret, signing_input.encode(),
                                              hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def _get(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/studies", headers={"Authorization": f"Bearer {token}"},
                     timeout=30)


def test_valid_tokens_carry_their_scopes(web: Any, idp: Any) -> None:
    _, url = web
    provider, keys = idp
    reader = _token(keys["rsa1"], "rsa1", "RS256", provider.issuer, scope="openid read")
    assert _get(url, reader).status_code == 200
    ds = make_instance(patient_id="OIDCPAT")
    stow = {"Content-Type": 'multipart/related; type="application/dicom"; '
                            'boundary=pacsinfra-test-boundary'}
    r = httpx.post(f"{url}/studies", content=multipart([part10(ds)]), timeout=30,
                   headers={**stow, "Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and 'scope="write"' in r.headers["www-authenticate"]
    # ES256, scopes as a list in "scp" (Azure AD's form)
    writer = _token(keys["ec1"], "ec1", "ES256", provider.issuer, scp=["write", "read"])
    r = httpx.post(f"{url}/studies", content=multipart([part10(ds)]), timeout=30,
                   headers={**stow, "Authorization": f"Bearer {writer}"})
    assert r.status_code == 200, r.text
    assert _get(url, writer).status_code == 200


def test_bad_tokens_are_refused(web: Any, idp: Any) -> None:
    arch, url = web
    provider, keys = idp
    iss = provider.issuer
    now = int(time.time())
    claims = {"iss": iss, "aud": AUDIENCE, "sub": "x", "exp": now + 300, "scope": "read admin"}
    public_pem = keys["rsa1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    bad = {
        "expired": _token(keys["rsa1"], "rsa1", "RS256", iss, exp=now - 600, scope="read"),
        "wrong audience": _token(keys["rsa1"], "rsa1", "RS256", iss, aud="other-app",
                                 scope="read"),
        "wrong issuer": _token(keys["rsa1"], "rsa1", "RS256", "https://evil.example",
                               scope="read"),
        "no expiry": _token(keys["rsa1"], "rsa1", "RS256", iss, exp=None, scope="read"),
        "unknown kid": _token(keys["rsa1"], "nope", "RS256", iss, scope="read"),
        "rogue key, known kid": _token(keys["rogue"], "rsa1", "RS256", iss, scope="read"),
        "ES256 key named as RSA": _token(keys["ec1"], "rsa1", "ES256", iss, scope="read"),
        "alg none": _forged({"alg": "none", "kid": "rsa1"}, claims, None),
        "alg None": _forged({"alg": "None", "typ": "JWT"}, claims, None),
        "HS256 with the public key": _forged({"alg": "HS256", "kid": "rsa1"}, claims,
                                             public_pem),
        "garbage": "a.b.c",
        "not base64": "!!!.???.***",
    }
    for what, token in bad.items():
        r = _get(url, token)
        assert r.status_code == 401, what
        assert 'error="invalid_token"' in r.headers["www-authenticate"], what
    assert "Traceback" not in arch.logs()


def test_random_key_ids_do_not_hammer_the_provider_and_rotation_works(
        web: Any, idp: Any) -> None:
    _, url = web
    provider, keys = idp
    time.sleep(2.1)  # past the refetch interval of earlier tests
    before = provider.jwks_fetches
    t0 = time.monotonic()
    for i in range(30):
        assert _get(url, _token(keys["rsa1"], f"random-{i}", "RS256", provider.issuer,
                                scope="read")).status_code == 401
    elapsed = time.monotonic() - t0
    # not one fetch per request: at most one per refetch interval (2 s) that passed, so a
    # loaded machine that takes longer over the 30 requests is not a failure
    assert provider.jwks_fetches - before <= 2 + int(elapsed / 2.0), elapsed
    # the provider rotates in a new key: accepted once the refetch interval has passed
    provider.publish("rsa2", keys["rsa2"], "RS256")
    time.sleep(2.1)
    rotated = _token(keys["rsa2"], "rsa2", "RS256", provider.issuer, scope="read")
    assert _get(url, rotated).status_code == 200


def test_scope_map_from_roles(tmp_path: Path, idp: Any) -> None:
    provider, keys = idp
    arch, url, _ = start_web_archive(tmp_path, {"oidc": {
        "issuer": provider.issuer, "audience": [AUDIENCE, "other"],
        "jwks_url": f"{provider.issuer}/keys", "scope_claim": "realm_access.roles",
        "scope_map": {"radiologist": ["read"], "pacs-admin": ["admin"]}}})
    try:
        radiologist = _token(keys["rsa1"], "rsa1", "RS256", provider.issuer,
                             realm_access={"roles": ["radiologist", "read-nothing"]},
                             scope="admin")  # "scope" is not the configured claim
        assert _get(url, radiologist).status_code == 200
        r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {radiologist}"},
                      timeout=30)
        assert r.status_code == 403
        nobody = _token(keys["rsa1"], "rsa1", "RS256", provider.issuer,
                        realm_access={"roles": ["read"]})  # unmapped: no scope at all
        assert _get(url, nobody).status_code == 403
    finally:
        assert arch.stop() == 0
