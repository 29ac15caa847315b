"""The S3 state backend on moto's server (a process): leases, fencing, CAS, the self-test.

A small proxy in front of the same server drops ``If-None-Match`` and ``If-Match``,
as some S3-compatible stores do: the backend must notice and refuse to run there.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from s3_fixture import BUCKET, CREDS, S3Server, s3_server  # noqa: F401  # the fixture

from pacsinfra.errors import StateError, StateLockedError
from pacsinfra.specs import NetworkSpec, Ownership
from pacsinfra.state.store import ResourceState, State

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _record(addr: str) -> ResourceState:
    spec = NetworkSpec(address=addr, name=f"st-mary-{addr}", purpose="dicom", settings={})
    return ResourceState(addr, f"id-{addr}", spec, Ownership("st-mary", addr, "L"))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)


def _store(s3: S3Server, site: str = "st-mary", prefix: str = "", **kw: object):  # type: ignore[no-untyped-def]
    from pacsinfra.state.s3 import S3StateStore

    return S3StateStore(BUCKET, prefix or f"t{time.monotonic_ns()}", site,
                        endpoint=s3.endpoint, **kw)  # type: ignore[arg-type]


def test_write_read_history_and_cas(s3_server: S3Server, aws_env: None,  # noqa: F811
                                    tmp_path: Path) -> None:
    store = _store(s3_server, errored_dir=tmp_path)
    assert store.read() is None
    st = State(site="st-mary", driver="kvm")
    with store.lock("apply") as info:
        assert info.token == 1
        store.write(st)
        st.resources["a"] = _record("a")
        store.write(st)
        stale = store.read()
        st.resources["b"] = _record("b")
        store.write(st)
        assert stale is not None
        with pytest.raises(StateError, match="moved under this run"):
            store.write(stale)
    back = store.read()
    assert back is not None and (back.serial, sorted(back.resources)) == (3, ["a", "b"])
    assert [h["serial"] for h in store.history()] == [1, 2, 3]
    assert sorted(store.version(2).resources) == ["a"]
    assert (tmp_path / "st-mary.errored.state.json").exists()
    with store.lock("apply") as again:
        assert again.token == 2  # released leases keep their token: it only grows


def test_lock_contention_sites_and_fencing(s3_server: S3Server, aws_env: None) -> None:  # noqa: F811
    prefix = f"f{time.monotonic_ns()}"
    slow, fast = _store(s3_server, prefix=prefix, lease=1.0), _store(s3_server, prefix=prefix,
                                                                    lease=1.0)
    other = _store(s3_server, "st-john", prefix=prefix)
    with slow.lock("apply") as old:
        with other.lock("apply", timeout=0):
            pass
        with pytest.raises(StateLockedError, match=f"force-unlock {old.id}"), fast.lock("plan"):
            pass
        st = State(site="st-mary", driver="kvm")
        slow.write(st)
        assert slow._heartbeat is not None
        slow._heartbeat.stop()  # frozen holder: no renewals
        time.sleep(1.2)
        with fast.lock("apply", timeout=5) as new:
            assert new.token == old.token + 1
            theirs = fast.read()
            assert theirs is not None
            fast.write(theirs)
            with pytest.raises(StateLockedError, match="taken over"):
                slow.write(st)
    final = fast.read()
    assert final is not None and final.serial == 2


class _Stripper(BaseHTTPRequestHandler):
    """Forwards to the real server without the precondition headers."""

    upstream = ""

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("if-none-match", "if-match", "host")}
        up = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=10)
        conn.request(self.command, self.path, body=body or None, headers=headers)
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def stripping_proxy(s3_server: S3Server) -> Iterator[str]:  # noqa: F811
    handler = type("Stripper", (_Stripper,), {"upstream": s3_server.endpoint})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_ignores_preconditions_is_refused(
        stripping_proxy: str, s3_server: S3Server, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsinfra.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACSINFRA_STATE", raising=False)
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "site.yaml").write_text((ROOT / "examples" / "quickstart.yaml").read_text())
    for endpoint, ok in ((stripping_proxy, False), (s3_server.endpoint, True)):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["state", "list", "site.yaml", "--state",
                  f"s3://{BUCKET}/cli?endpoint={endpoint}&region=us-east-1"])
        err = capsys.readouterr().err
        assert exit_.value.code == 1, err
        if ok:
            assert "no state at s3://" in err, err
        else:
            assert f"the S3 endpoint {stripping_proxy} ignores the If-None-Match: * and " \
                   "If-Match precondition(s)" in err, err
        assert "Traceback" not in err and CREDS["AWS_SECRET_ACCESS_KEY"] not in err
    listing = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix="cli/")
    assert [o["Key"] for o in listing.get("Contents", [])] == []  # the test objects are gone
