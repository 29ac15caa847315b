"""DICOMweb access control against a real archive: loopback by default, bearer tokens
with scopes (401 / 403 with WWW-Authenticate), refusals audited with the source address,
a network bind without authentication refused at start, secrets never logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, need_module
from dicomweb_support import (
    TOKENS,
    auth,
    error_of,
    listening_addresses,
    multipart,
    part10,
    start_web_archive,
    stow_headers,
    token_entries,
)
from test_archive_support import REPO

pytestmark = pytest.mark.integration

need_module("starlette")
need_module("uvicorn")
need_module("httpx")

import httpx  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("auth")
    audit = base / "audit.jsonl"
    arch, url, _ = start_web_archive(base, {"tokens": token_entries(base)},
                                     audit={"file": str(audit)})
    yield arch, url, audit
    assert arch.stop() == 0


def _events(audit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.read_text().splitlines()]


def test_scopes_decide_what_each_token_may_do(web: Any) -> None:
    arch, url, audit = web
    study = generate_uid()
    ds = make_instance(study_uid=study, patient_id="AUTHPAT")
    body = multipart([part10(ds)])
    with httpx.Client(base_url=url, timeout=30) as c:
        # no credentials, another scheme, a wrong token: 401 with a Bearer challenge
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"},
                        {"Authorization": "Bearer not-a-token"}):
            r = c.get("/studies", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert error_of(r.content)
        assert 'error="invalid_token"' in c.get(
            "/studies", headers={"Authorization": "Bearer nope"}).headers["www-authenticate"]

        # STOW needs write
        r = c.post("/studies", content=body, headers=stow_headers("reader"))
        assert r.status_code == 403 and 'scope="write"' in r.headers["www-authenticate"]
        r = c.post("/studies", content=body, headers=stow_headers("writer"))
        assert r.status_code == 200, r.text

        # QIDO and WADO need read
        r = c.get("/studies", params={"PatientID": "AUTHPAT"}, headers=auth("writer"))
        assert r.status_code == 403 and 'error="insufficient_scope"' in \
            r.headers["www-authenticate"]
        r = c.get("/studies", params={"PatientID": "AUTHPAT"}, headers=auth("reader"))
        assert r.status_code == 200 and len(r.json()) == 1
        assert c.get(f"/studies/{study}", headers=auth("reader")).status_code == 200
        assert c.get(f"/studies/{study}", headers=auth("scraper")).status_code == 403

        # metrics needs metrics; admin may do everything
        assert c.get("/metrics", headers=auth("reader")).status_code == 403
        assert c.get("/metrics", headers=auth("scraper")).status_code == 200
        assert c.get("/metrics", headers=auth("admin")).status_code == 200
        assert c.get("/studies", headers=auth("admin")).status_code == 200

        # DELETE needs delete
        for who in ("reader", "writer", "scraper"):
            assert c.delete(f"/studies/{study}", headers=auth(who)).status_code == 403
        assert c.get("/studies", params={"PatientID": "AUTHPAT"},
                     headers=auth("reader")).json(), "a refused DELETE deleted something"
        assert c.delete(f"/studies/{study}", headers=auth("deleter")).status_code == 204
        assert c.get("/studies", params={"PatientID": "AUTHPAT"},
                     headers=auth("reader")).json() == []

    events = _events(audit)
    logins = [e for e in events if e["EventIdentification"]["EventID"]["code"] == "110114"]
    assert len(logins) >= 4
    assert all(e["ActiveParticipant"][0]["NetworkAccessPointID"] == "127.0.0.1"
               and e["EventIdentification"]["EventOutcomeIndicator"] == 4 for e in logins)
    alerts = [e for e in events if e["EventIdentification"]["EventID"]["code"] == "110113"]
    users = {e["ActiveParticipant"][0]["UserID"] for e in alerts}
    assert {"reader", "writer", "scraper"} <= users  # the token's name, never its value
    assert all("scope is required" in e["EventIdentification"]["EventOutcomeDescription"]
               for e in alerts)
    deleted = [e for e in events if e["EventIdentification"]["EventID"]["code"] == "110105"
               and e["EventIdentification"]["EventOutcomeIndicator"] == 0]
    assert deleted and deleted[0]["ActiveParticipant"][0]["UserID"].startswith(
        "DICOMweb:deleter@127.0.0.1")
    # no token value in the log or the audit trail
    logs = arch.logs() + audit.read_text()
    assert not any(value in logs for value, _ in TOKENS.values())


def test_loopback_by_default_and_no_anonymous_delete(tmp_path: Path) -> None:
    arch, url, port = start_web_archive(tmp_path, {})
    try:
        assert listening_addresses(port) == {"127.0.0.1"}
        ds = make_instance(patient_id="ANONPAT")
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/studies", content=multipart([part10(ds)]), headers={
                "Content-Type": stow_headers()["Content-Type"]})
            assert r.status_code == 200, r.text
            assert c.get("/studies", params={"PatientID": "ANONPAT"}).json()
            r = c.delete(f"/studies/{ds.StudyInstanceUID}")
            assert r.status_code == 403 and "delete" in error_of(r.content)
    finally:
        assert arch.stop() == 0


def _serve(tmp: Path, dicomweb: dict[str, Any], **extra: Any
           ) -> subprocess.CompletedProcess[str]:
    cfg = {"ae_title": "OPEN", "bind": "127.0.0.1", "port": free_port(),
           "data_dir": str(tmp / "data"), "dicomweb": {"port": free_port(), **dicomweb},
           **extra}
    path = tmp / "archive.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
                           str(path)], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_network_bind_without_authentication_does_not_start(tmp_path: Path) -> None:
    r = _serve(tmp_path, {"bind": "0.0.0.0"})
    assert r.returncode == 2, r.stderr
    assert "dicomweb.tokens" in r.stderr and "allow_anonymous" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was opened


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unreadable_token_is_a_message(tmp_path: Path, workers: int) -> None:
    r = _serve(tmp_path, {"tokens": [{"token": {"env": "PX_NO_SUCH_TOKEN_VAR"},
                                      "scopes": ["read"]}]}, workers=workers)
    assert r.returncode == 1, r.stderr
    assert "PX_NO_SUCH_TOKEN_VAR" in r.stderr and "Traceback" not in r.stderr


def test_allow_anonymous_is_logged_loudly(tmp_path: Path) -> None:
    arch, url, _ = start_web_archive(tmp_path, {"allow_anonymous": True,
                                                "anonymous_scopes": ["read"]})
    try:
        assert httpx.get(f"{url}/studies", timeout=30).status_code == 200
        assert httpx.post(f"{url}/studies", content=b"", timeout=30,
                          headers={"Content-Type": stow_headers()["Content-Type"]}
                          ).status_code == 403
    finally:
        assert arch.stop() == 0
    assert "SECURITY: DICOMweb" in arch.logs() and "allow_anonymous" in arch.logs()


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    from conftest import need_binary

    need_binary("openssl")
    pems = {}
    for name in ("server", "client"):
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                       capture_output=True)
        pems[name] = (str(cert), str(key))
    arch, url, _ = start_web_archive(tmp_path, {"tls": {
        "enabled": True, "cert_file": pems["server"][0], "key_file": pems["server"][1],
        "ca_file": pems["client"][0], "require_client_cert": True}})
    url = url.replace("http:", "https:")
    try:
        import ssl

        without = ssl.create_default_context(cafile=pems["server"][0])
        with pytest.raises(httpx.TransportError):  # no client certificate: no handshake
            httpx.get(f"{url}/studies", verify=without, timeout=10)
        ctx = ssl.create_default_context(cafile=pems["server"][0])
        ctx.load_cert_chain(*pems["client"])
        assert httpx.get(f"{url}/studies", verify=ctx, timeout=10).status_code == 200
    finally:
        assert arch.stop() == 0
