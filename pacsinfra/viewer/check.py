"""Is a running viewer healthy? Probe it as a browser would, from this machine.

Four probes against the address the config listens on (a wildcard bind is probed on
loopback): the page (``/``, with OHIF's cross-origin isolation headers),
``/app-config.js``, a QIDO-RS study search through the proxy with a user's credentials
(the archive answers), and the same search without credentials (refused with 401).
With TLS, the certificate served must be the configured one.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pacsinfra.errors import SecretError
from pacsinfra.viewer.config import ViewerConfig
from pacsinfra.viewer.nginx import DICOMWEB_PATH


@dataclass
class Probe:
    """One probe's outcome: ``ok`` is None when it was not applicable (skipped)."""

    name: str
    ok: bool | None
    detail: str
    facts: dict[str, str] = field(default_factory=dict)  # what a caller may verify further


@dataclass
class Report:
    """All probes of one check, and where they went."""

    url: str
    probes: list[Probe] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No probe failed (skipped ones do not count)."""
        return all(p.ok is not False for p in self.probes)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {"url": self.url, "healthy": self.healthy,
                "probes": [asdict(p) for p in self.probes]}

    def text(self) -> str:
        """One line per probe, then the verdict."""
        marks = {True: "ok  ", False: "FAIL", None: "skip"}
        lines = [f"{marks[p.ok]} {p.name}: {p.detail}" for p in self.probes]
        lines.append(f"viewer at {self.url}: {'healthy' if self.healthy else 'NOT healthy'}")
        return "\n".join(lines)


def probe_host(bind: str) -> str:
    """Where to reach a viewer bound to ``bind`` from this machine."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind in ("::", "[::]"):
        return "::1"
    return bind.strip("[]")


def _pem_der(path: str) -> bytes | None:
    """The first certificate of a PEM file, DER-encoded (None if unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        return None
    return ssl.PEM_cert_to_DER_cert(text[begin:end + len("-----END CERTIFICATE-----")])


class _Client:
    """Tiny HTTP(S) client pinned to one address; no proxies from the environment."""

    def __init__(self, cfg: ViewerConfig, timeout: float) -> None:
        self.cfg = cfg
        self.host = probe_host(cfg.bind)
        self.timeout = timeout
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.netloc = f"{host}:{cfg.port}"
        self.peer_cert: bytes | None = None

    def get(self, path: str, auth: str | None,
            accept: str = "*/*") -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if self.cfg.tls.enabled:
            # Verified below by pinning: the served certificate must be the configured one
            # (a loopback address rarely appears in a certificate's names).
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(self.host, self.cfg.port, timeout=self.timeout,
                                               context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, self.cfg.port, timeout=self.timeout)
        headers = {"Host": self.netloc, "Accept": accept, "User-Agent": "pacsinfra-viewer-check"}
        if auth:
            headers["Authorization"] = auth
        try:
            conn.request("GET", path, headers=headers)
            if isinstance(conn.sock, ssl.SSLSocket):
                self.peer_cert = conn.sock.getpeercert(binary_form=True)
            resp = conn.getresponse()
            body = resp.read(64 * 1024 * 1024)  # one frame of a large image fits
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()


def _credentials(cfg: ViewerConfig, user: str | None,
                 password: str | None) -> tuple[str | None, str]:
    """(Authorization header or None, who it is) for the authenticated probes."""
    if user is not None and password is not None:
        pair = f"{user}:{password}"
    elif user is not None:
        entry = cfg.auth.users.get(user)
        if entry is None:
            raise SecretError(f"user {user} is not in auth.users: give its password with "
                              "--password-env")
        pair = f"{user}:{entry.password.resolve()}"
    elif cfg.auth.users:
        user, entry = next(iter(cfg.auth.users.items()))
        pair = f"{user}:{entry.password.resolve()}"
    else:
        return None, "no credentials"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii"), f"as {user}"


def check(cfg: ViewerConfig, *, user: str | None = None, password: str | None = None,
          timeout: float = 10.0, study: str | None = None) -> Report:
    """Probe the viewer ``cfg`` describes; never raises for an unhealthy viewer.

    With ``study`` (a Study Instance UID), also open that study as OHIF does through the
    proxy: find it, list its series, read a series' metadata and fetch one frame, whose
    size must be what the metadata says (rows x columns x samples x bits allocated).
    """
    client = _Client(cfg, timeout)
    report = Report(f"{cfg.scheme}://{client.netloc}/")
    add = report.probes.append
    try:
        auth, who = _credentials(cfg, user, password)
    except SecretError as exc:
        add(Probe("credentials", False, str(exc)))
        return report
    if cfg.auth.enabled and auth is None:
        add(Probe("credentials", False, "users come only from an htpasswd file: give "
                  "--user and --password-env to check the proxy"))
        return report

    def get(path: str, with_auth: bool = True,
            accept: str = "*/*") -> tuple[int, dict[str, str], bytes] | None:
        try:
            return client.get(path, auth if with_auth else None, accept)
        except (OSError, http.client.HTTPException) as exc:
            add(Probe(path, False, f"no answer: {exc}"))
            return None

    page = get("/")
    if page is None:
        return report
    status, headers, body = page
    isolated = (headers.get("cross-origin-opener-policy") == "same-origin"
                and headers.get("cross-origin-embedder-policy") == "require-corp")
    if status == 200 and b'id="root"' in body and isolated:
        add(Probe("page", True, f"/ is OHIF's page, cross-origin isolated ({who})"))
    else:
        add(Probe("page", False, f"/ answered {status}"
                  + ("" if isolated else ", without COOP/COEP headers")))
    if cfg.tls.enabled:
        want = _pem_der(cfg.tls.cert_file or "")
        same = want is not None and want == client.peer_cert
        add(Probe("tls", same, "serves the configured certificate" if same
                  else f"the certificate served is not {cfg.tls.cert_file}"))

    found = get("/app-config.js")
    if found is not None:
        status, _, body = found
        ok = status == 200 and b"window.config" in body and \
            f'"{DICOMWEB_PATH}"'.encode() in body
        add(Probe("app-config", ok, "/app-config.js points OHIF at " + DICOMWEB_PATH if ok
                  else f"/app-config.js answered {status} without the DICOMweb data source"))

    qido = f"{DICOMWEB_PATH}/studies?limit=1"
    found = get(qido, accept="application/dicom+json")
    if found is not None:
        status, _, body = found
        detail = f"{qido} answered {status}"
        ok = status == 204
        if status == 200:
            try:
                ok = isinstance(json.loads(body or b"[]"), list)
            except ValueError:
                detail += " with a body that is not DICOM JSON"
        if ok:
            detail += f" through the proxy ({who})"
        elif status == 502:
            detail += ": the archive is down or refused the viewer's token"
        add(Probe("dicomweb", ok, detail))

    if study is not None:
        add(_open_study(study, get))

    if cfg.auth.enabled:
        found = get(qido, with_auth=False, accept="application/dicom+json")
        if found is not None:
            status = found[0]
            add(Probe("refuses anonymous", status == 401,
                      f"{qido} without credentials answered {status}"
                      + ("" if status == 401 else " (expected 401)")))
    else:
        add(Probe("refuses anonymous", None, "no users configured: anonymous access is "
                  + ("allowed (allow_anonymous)" if cfg.allow_anonymous else
                     "allowed on loopback only")))
    return report


def _value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object (None when absent)."""
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def _json_list(found: tuple[int, dict[str, str], bytes] | None) -> list[dict[str, Any]] | None:
    if found is None or found[0] != 200:
        return None
    try:
        data = json.loads(found[2])
    except ValueError:
        return None
    return data if isinstance(data, list) else None


def _open_study(study: str, get: Callable[..., Any]) -> Probe:
    """The ``study`` probe: what OHIF's viewport asks for when the study is opened."""
    base = f"{DICOMWEB_PATH}/studies"
    dicom_json = "application/dicom+json"
    name = "study"
    found = _json_list(get(f"{base}?StudyInstanceUID={study}", accept=dicom_json))
    if not found:
        return Probe(name, False, f"study {study} is not found through the proxy")
    series = _json_list(get(f"{base}/{study}/series", accept=dicom_json))
    if not series:
        return Probe(name, False, f"study {study}: no series through the proxy")
    series_uid = _value(series[0], "0020000E")
    meta = _json_list(get(f"{base}/{study}/series/{series_uid}/metadata", accept=dicom_json))
    if not meta:
        return Probe(name, False, f"series {series_uid}: no metadata through the proxy")
    first = meta[0]
    sop = _value(first, "00080018")
    rows, cols = _value(first, "00280010"), _value(first, "00280011")
    samples, bits = _value(first, "00280002") or 1, _value(first, "00280100")
    frame = get(f"{base}/{study}/series/{series_uid}/instances/{sop}/frames/1",
                accept='multipart/related; type="application/octet-stream"')
    if frame is None or frame[0] != 200:
        return Probe(name, False, f"instance {sop}: frame 1 answered "
                     f"{frame[0] if frame else 'nothing'}")
    want = int(rows) * int(cols) * int(samples) * int(bits) // 8 if rows and cols and bits else 0
    payload = _first_part(frame[1].get("content-type", ""), frame[2])
    got = len(payload)
    facts = {"series": str(series_uid), "instance": str(sop),
             "frame_sha256": hashlib.sha256(payload).hexdigest()}
    if want and got != want:
        return Probe(name, False, f"instance {sop}: frame 1 holds {got} bytes, its metadata "
                     f"says {rows}x{cols}x{samples} at {bits} bits ({want} bytes)", facts)
    return Probe(name, True, f"study {study} opens: {len(series)} series, {len(meta)} "
                 f"instances in the first, frame 1 of {sop} ({got} bytes, {rows}x{cols})",
                 facts)


def _first_part(content_type: str, body: bytes) -> bytes:
    """The payload of the first part of a multipart/related body (else the whole body)."""
    marker = "boundary="
    if marker not in content_type:
        return body
    boundary = content_type.split(marker, 1)[1].split(";", 1)[0].strip().strip('"').encode()
    parts = body.split(b"--" + boundary)
    if len(parts) < 3:
        return body
    _, _, payload = parts[1].partition(b"\r\n\r\n")
    return payload.removesuffix(b"\r\n")


__all__ = ["Probe", "Report", "check", "probe_host"]
