"""Fetching, verifying and unpacking the OHIF package, with real tarballs built here and a
real HTTP server on loopback standing in for the npm registry."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacsinfra.viewer import ohif
from pacsinfra.viewer.config import OhifPackage
from pacsinfra.viewer.errors import ViewerError

VERSION = "9.9.9"


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def npm_tarball(members: list[tuple[str, Any]], version: str = VERSION) -> bytes:
    """An npm-style .tgz: ``package/package.json`` plus ``members`` (name, bytes | TarInfo)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        meta = json.dumps({"name": "@ohif/app", "version": version}).encode()
        for name, body in [("package/package.json", meta), *members]:
            if isinstance(body, tarfile.TarInfo):
                tar.addfile(body)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(body)
            info.mtime = 499_137_600  # npm's 1985-10-26
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


GOOD = [("package/dist/index.html", b'<div id="root"></div>'),
        ("package/dist/app.bundle.0123456789abcdef.js", b"console.log(1)"),
        ("package/dist/assets/images/logo.svg", b"<svg/>"),
        ("package/README.md", b"not served")]


def staged(tmp_path: Path, data: bytes, **kw: Any) -> OhifPackage:
    path = tmp_path / "app.tgz"
    path.write_bytes(data)
    return OhifPackage(version=kw.pop("version", VERSION), tarball=str(path),
                       cache_dir=str(tmp_path / "cache"), **kw)


def test_a_staged_tarball_is_verified_unpacked_and_cached(tmp_path: Path) -> None:
    data = npm_tarball(GOOD)
    pkg = staged(tmp_path, data, integrity=sri(data))
    dist = ohif.ensure(pkg)
    assert dist == tmp_path / "cache" / VERSION / "dist"
    assert sorted(str(p.relative_to(dist)) for p in dist.rglob("*") if p.is_file()) == [
        "app.bundle.0123456789abcdef.js", "assets/images/logo.svg", "index.html"]
    assert (dist / "index.html").stat().st_mtime > time.time() - 600  # not 1985
    assert (dist / "index.html").stat().st_mode & 0o777 == 0o644
    Path(pkg.tarball or "").unlink()
    assert ohif.ensure(pkg) == dist  # from the cache now


def test_a_tarball_that_does_not_match_its_integrity_is_refused(tmp_path: Path) -> None:
    pkg = staged(tmp_path, npm_tarball(GOOD), integrity=sri(b"something else"))
    with pytest.raises(ViewerError, match="does not match its integrity.*refusing"):
        ohif.ensure(pkg)
    assert not (tmp_path / "cache" / VERSION / "dist").exists()


def test_the_pinned_release_is_checked_without_being_told(tmp_path: Path) -> None:
    pkg = staged(tmp_path, npm_tarball(GOOD, version="3.13.2"), version="3.13.2")
    with pytest.raises(ViewerError, match="expected sha512-WZdxmpmG7rq"):
        ohif.ensure(pkg)


def test_an_unpinned_staged_version_needs_an_integrity(tmp_path: Path) -> None:
    with pytest.raises(ViewerError, match="set ohif.integrity"):
        ohif.ensure(staged(tmp_path, npm_tarball(GOOD)))


def test_the_environment_names_a_staged_tarball(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = npm_tarball(GOOD)
    (tmp_path / "staged.tgz").write_bytes(data)
    monkeypatch.setenv(ohif.STAGED_ENV, str(tmp_path / "staged.tgz"))
    pkg = OhifPackage(version=VERSION, integrity=sri(data), cache_dir=str(tmp_path / "c"),
                      registry="http://127.0.0.1:9")  # never asked
    assert (ohif.ensure(pkg) / "index.html").exists()


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(("member", "match"), [
    (("package/dist/../../escape.js", b"x"), "unsafe path"),
    (("/etc/cron.d/evil", b"x"), "unsafe path"),
    (("package/dist/passwd", _link("package/dist/passwd", "/etc/passwd", tarfile.SYMTYPE)),
     "link or device"),
    (("package/dist/h", _link("package/dist/h", "package/dist/index.html", tarfile.LNKTYPE)),
     "link or device"),
])
def test_unsafe_members_are_refused(tmp_path: Path, member: tuple[str, Any], match: str) -> None:
    data = npm_tarball([*GOOD, member])
    with pytest.raises(ViewerError, match=match):
        ohif.ensure(staged(tmp_path, data, integrity=sri(data)))
    assert not (tmp_path / "cache" / VERSION / "dist").exists()
    assert not (tmp_path / "escape.js").exists()


def test_the_wrong_package_or_version_is_refused(tmp_path: Path) -> None:
    data = npm_tarball(GOOD, version="1.0.0")
    with pytest.raises(ViewerError, match="is @ohif/app 1.0.0, not 9.9.9"):
        ohif.ensure(staged(tmp_path, data, integrity=sri(data)))
    data = npm_tarball([("package/dist/app.js", b"x")])
    with pytest.raises(ViewerError, match="no package/dist/index.html"):
        ohif.ensure(staged(tmp_path, data, integrity=sri(data)))
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    pkg = OhifPackage(version=VERSION, tarball=str(tmp_path / "junk.tgz"),
                      integrity=sri(b"not a tarball"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ViewerError, match="not a readable npm tarball"):
        ohif.ensure(pkg)


# -- from a registry ---------------------------------------------------------------------------

class Registry:
    """An npm-registry-shaped HTTP server on loopback: package document and tarball."""

    def __init__(self, tarball: bytes, published: str) -> None:
        self.tarball, self.published, self.requests = tarball, published, []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                registry.requests.append(self.path)
                host = f"http://127.0.0.1:{self.server.server_address[1]}"
                if self.path == f"/@ohif%2Fapp/{VERSION}":
                    body = json.dumps({"name": "@ohif/app", "version": VERSION, "dist": {
                        "tarball": f"{host}/@ohif/app/-/app-{VERSION}.tgz",
                        "integrity": registry.published}}).encode()
                elif self.path == f"/@ohif/app/-/app-{VERSION}.tgz":
                    body = registry.tarball
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def registry() -> Iterator[Any]:
    made: list[Registry] = []

    def make(tarball: bytes, published: str) -> Registry:
        made.append(Registry(tarball, published))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()


def test_a_download_is_checked_against_the_pinned_integrity(tmp_path: Path,
                                                            registry: Any) -> None:
    data = npm_tarball(GOOD)
    reg = registry(data, sri(data))
    pkg = OhifPackage(version=VERSION, integrity=sri(data), registry=reg.url,
                      cache_dir=str(tmp_path / "c"))
    assert (ohif.ensure(pkg) / "index.html").exists()
    assert len(reg.requests) == 2
    # the verified tarball is kept (to ship to other hosts), nothing half-downloaded
    assert [p.name for p in (tmp_path / "c" / VERSION).glob("*.tgz*")] == [f"app-{VERSION}.tgz"]
    ohif.ensure(pkg)
    assert ohif.tarball(pkg) == (ohif.kept_tarball(pkg), sri(data))
    assert len(reg.requests) == 2  # cached: the registry is not asked again
    # a kept tarball that no longer matches is fetched again, never shipped
    ohif.kept_tarball(pkg).write_bytes(b"tampered")
    assert ohif.tarball(pkg)[1] == sri(data) and len(reg.requests) == 4


def test_a_registry_publishing_another_integrity_is_refused(tmp_path: Path,
                                                            registry: Any) -> None:
    data = npm_tarball(GOOD)
    reg = registry(data, sri(b"tampered"))
    pkg = OhifPackage(version=VERSION, integrity=sri(data), registry=reg.url,
                      cache_dir=str(tmp_path / "c"))
    with pytest.raises(ViewerError, match="publishes integrity .* refusing the download"):
        ohif.ensure(pkg)
    assert reg.requests == [f"/@ohif%2Fapp/{VERSION}"]  # the tarball was never fetched


def test_a_tampered_download_is_refused(tmp_path: Path, registry: Any) -> None:
    data = npm_tarball(GOOD)
    reg = registry(npm_tarball([*GOOD, ("package/dist/x.js", b"evil")]), sri(data))
    pkg = OhifPackage(version=VERSION, integrity=sri(data), registry=reg.url,
                      cache_dir=str(tmp_path / "c"))
    with pytest.raises(ViewerError, match="does not match"):
        ohif.ensure(pkg)


def test_an_unreachable_registry_says_how_to_stage(tmp_path: Path) -> None:
    pkg = OhifPackage(version=VERSION, registry="http://127.0.0.1:9",
                      cache_dir=str(tmp_path / "c"))
    with pytest.raises(ViewerError, match=f"cannot reach .*{ohif.STAGED_ENV}"):
        ohif.ensure(pkg)
