"""``pacsinfra viewer serve`` and ``pacsinfra viewer check`` as a supervisor or systemd runs
them: real nginx, a real pacsinfra archive, real processes and exit codes; no browser."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import free_port, need
from test_viewer_support import (
    PASSWORD,
    REPO,
    TOKEN,
    USER,
    ArchiveWeb,
    Viewer,
    need_viewer_tools,
)

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsinfra", "viewer", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveWeb]:
    need_viewer_tools()
    arch = ArchiveWeb(tmp_path_factory.mktemp("archive")).start()
    yield arch
    arch.stop()


@pytest.fixture
def viewer(archive: ArchiveWeb, tmp_path: Path) -> Iterator[Viewer]:
    v = Viewer(tmp_path / "viewer", archive.viewer_settings()).start()
    yield v
    if v.proc is not None and v.proc.poll() is None:
        v.stop()


def nginx_pids(prefix: Path) -> list[int]:
    """Live nginx processes (master or workers) of the viewer whose prefix is ``prefix``."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (p / "status").read_text()
        except OSError:
            continue
        if "nginx" in cmd and str(prefix) in cmd and "State:\tZ" not in status:
            out.append(int(p.name))
        elif "nginx: worker" in cmd:
            ppid = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid")))
            try:
                parent = Path(f"/proc/{ppid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(prefix) in parent:
                out.append(int(p.name))
    return out


def test_check_reports_a_healthy_viewer(viewer: Viewer) -> None:
    done = cli("check", "--config", str(viewer.config_path), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["healthy"] is True
    assert [p["name"] for p in report["probes"]] == [
        "page", "app-config", "dicomweb", "refuses anonymous"]
    assert all(p["ok"] for p in report["probes"])
    text = cli("check", "--config", str(viewer.config_path))
    assert text.returncode == 0 and "healthy" in text.stdout and PASSWORD not in text.stdout


def test_check_fails_when_the_archive_refuses_the_token(archive: ArchiveWeb,
                                                        tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-archive-token")
    v = Viewer(tmp_path / "viewer", {"upstream": archive.upstream,
                                     "upstream_token": {"file": str(wrong)}}).start()
    try:
        r = requests.get(f"{v.url}/dicom-web/studies", auth=(USER, PASSWORD), timeout=10)
        # the archive's 401 is the viewer's fault, not the user's: a 502, on which no
        # browser asks for a password (nginx keeps the archive's Bearer challenge on it)
        assert r.status_code == 502
        assert not r.headers.get("www-authenticate", "").startswith("Basic")
        assert "refused the viewer's token" in r.text
        done = cli("check", "--config", str(v.config_path))
        assert done.returncode == 1
        assert "FAIL dicomweb" in done.stdout and "refused the viewer's token" in done.stdout
        # a wrong user password stays a 401 with the login challenge
        r = requests.get(f"{v.url}/dicom-web/studies", auth=(USER, "wrong"), timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
    finally:
        assert v.stop() == 0


def test_check_fails_when_nothing_listens(tmp_path: Path) -> None:
    path = tmp_path / "viewer.yaml"
    path.write_text(yaml.safe_dump({"port": free_port(), "upstream": "http://127.0.0.1:9"}))
    done = cli("check", "--config", str(path))
    assert done.returncode == 1 and "no answer" in done.stdout


def test_sigterm_stops_nginx_and_all_its_workers(viewer: Viewer) -> None:
    prefix = Path(viewer.config["data_dir"])
    assert viewer.proc is not None
    pids = nginx_pids(prefix)
    assert viewer.proc.pid in pids and len(pids) >= 2  # exec'd: the serve PID is the master
    assert viewer.stop() == 0
    deadline = time.monotonic() + 10
    while nginx_pids(prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nginx_pids(prefix) == []
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", viewer.port), 1):
        pass


def test_files_modes_and_logs_hold_no_secrets_or_queries(viewer: Viewer) -> None:
    run = Path(viewer.config["data_dir"])
    r = requests.get(f"{viewer.url}/dicom-web/studies?PatientName=DOE*&includefield=all",
                     auth=(USER, PASSWORD), timeout=10)
    assert r.status_code == 200
    requests.get(f"{viewer.url}/dicom-web/studies", auth=(USER, "a-wrong-password"), timeout=10)
    viewer.stop()
    mode = {p.relative_to(run).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in run.rglob("*")}
    assert mode["secrets"] == 0o700
    assert mode["secrets/htpasswd"] == mode["secrets/upstream-auth.conf"] == 0o600
    assert mode["logs/access.log"] == mode["logs/error.log"] == mode["nginx.conf"] == 0o640
    access = (run / "logs" / "access.log").read_text()
    assert f'{USER} [' in access and '"GET /dicom-web/studies" 200' in access
    assert "DOE" not in access and "PatientName" not in access
    everything = viewer.logs() + "".join(
        p.read_text(errors="replace") for p in run.rglob("*")
        if p.is_file() and p.parent.name != "secrets")
    for secret in (PASSWORD, TOKEN, "a-wrong-password"):
        assert secret not in everything


def test_bad_config_exits_2_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "viewer.yaml"
    for raw, says in (({"port": 3000, "upstrem": "x"}, "upstrem: Extra inputs are not permitted"),
                      ({"bind": "0.0.0.0", "upstream": "http://127.0.0.1:8042"},
                       "bind 0.0.0.0 is not loopback"),
                      ({"port": 70000}, "port: Input should be less than or equal to 65535")):
        path.write_text(yaml.safe_dump(raw))
        for command in ("serve", "check", "prepare"):
            done = cli(command, "--config", str(path))
            assert done.returncode == 2, (command, done.stderr)
            assert "invalid viewer configuration" in done.stderr and says in done.stderr
            assert "Traceback" not in done.stderr
    path.write_text("port: [unclosed")
    done = cli("serve", "--config", str(path))
    assert done.returncode == 2 and "not valid YAML" in done.stderr
    done = cli("serve", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_a_missing_secret_exits_2_naming_the_reference(archive: ArchiveWeb,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "viewer.yaml"
    path.write_text(yaml.safe_dump({
        "port": free_port(), "upstream": archive.upstream, "data_dir": str(tmp_path / "run"),
        "auth": {"users": {"bob": {"password": {"env": "PACSINFRA_TEST_NO_SUCH_VAR"}}}}}))
    done = cli("serve", "--config", str(path))
    assert done.returncode == 2
    assert "environment variable PACSINFRA_TEST_NO_SUCH_VAR is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_nginx_refusals_are_reported(archive: ArchiveWeb, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "viewer.yaml"
    path.write_text(yaml.safe_dump({
        "port": port, "upstream": archive.upstream, "data_dir": str(tmp_path / "run"),
        "tls": {"enabled": True, "cert_file": str(tmp_path / "none.crt"),
                "key_file": str(tmp_path / "none.key")}}))
    done = cli("serve", "--config", str(path))
    assert done.returncode == 1
    assert "nginx refuses the viewer's configuration" in done.stderr
    assert "none.crt" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as busy:  # the port is taken: nginx's own words, exit 1
        busy.bind(("127.0.0.1", port))
        busy.listen()
        path.write_text(yaml.safe_dump({"port": port, "upstream": archive.upstream,
                                        "data_dir": str(tmp_path / "run")}))
        done = cli("serve", "--config", str(path))
    assert done.returncode == 1 and "Address already in use" in done.stderr


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "viewer.crt", tmp_path / "viewer.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=viewer.test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def test_tls_with_users_on_a_non_loopback_config(archive: ArchiveWeb, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings: dict[str, Any] = {**archive.viewer_settings(), "tls": {
        "enabled": True, "cert_file": str(cert), "key_file": str(key)}}
    v = Viewer(tmp_path / "viewer", settings)
    # what a site would write: every address, so users and TLS are required
    v.config["bind"] = "0.0.0.0"
    v.config_path.write_text(yaml.safe_dump(v.config))
    v.start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(f"https://127.0.0.1:{v.port}/healthz")
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert resp.status == 200
            assert "max-age" in resp.headers.get("Strict-Transport-Security", "max-age")
        r = requests.get(f"https://127.0.0.1:{v.port}/dicom-web/studies",
                         auth=(USER, PASSWORD), verify=str(cert), timeout=10)
        assert r.status_code == 200 and r.headers["strict-transport-security"]
        done = cli("check", "--config", str(v.config_path), "--json")
        report = json.loads(done.stdout)
        assert done.returncode == 0, done.stdout
        assert {"name": "tls", "ok": True, "detail": "serves the configured certificate",
            "facts": {}} in report["probes"]
        plain = requests.get(f"http://127.0.0.1:{v.port}/dicom-web/studies",
                             auth=(USER, PASSWORD), timeout=5)
        assert plain.status_code == 400 and "HTTPS" in plain.text
    finally:
        assert v.stop() == 0


def test_prepare_prints_the_command_a_unit_runs(archive: ArchiveWeb, tmp_path: Path) -> None:
    path = tmp_path / "viewer.yaml"
    path.write_text(yaml.safe_dump({"port": free_port(), "upstream": archive.upstream,
                                    "data_dir": str(tmp_path / "run")}))
    done = cli("prepare", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert f"-p {tmp_path}/run/ -c {tmp_path}/run/nginx.conf -e stderr -g 'daemon off;'" in \
        done.stdout
    assert (tmp_path / "run" / "app-config.js").exists()


def test_sighup_reloads_and_sigquit_stops_gracefully(viewer: Viewer) -> None:
    assert viewer.proc is not None
    os.kill(viewer.proc.pid, signal.SIGHUP)
    time.sleep(1)
    assert viewer.proc.poll() is None
    r = requests.get(f"{viewer.url}/dicom-web/studies", auth=(USER, PASSWORD), timeout=10)
    assert r.status_code == 200
    os.kill(viewer.proc.pid, signal.SIGQUIT)
    assert viewer.proc.wait(20) == 0


def _fake_cache(root: Path) -> str:
    """An OHIF cache holding a stand-in build (an index.html only) for the pinned version."""
    from pacsinfra.viewer import ohif
    from pacsinfra.viewer.config import OhifPackage

    pkg = OhifPackage(cache_dir=str(root / "cache"))
    dist = ohif.dist_dir(pkg)
    dist.mkdir(parents=True)
    (dist / "index.html").write_text('<html><div id="root"></div></html>')
    (dist.parent / ".complete").write_text(ohif.PINNED_INTEGRITY[pkg.version] + "\n")
    return str(root / "cache")


def test_started_as_root_the_workers_run_as_worker_user(archive: ArchiveWeb) -> None:
    need(os.geteuid() == 0, "only a root-started nginx switches its workers to another account")
    import pwd
    import shutil
    import tempfile

    # outside pytest's 0700 temp root, so the worker account can reach it
    base = Path(tempfile.mkdtemp(prefix="pacsinfra-viewer-", dir="/tmp"))
    try:
        base.chmod(0o755)
        cfg = {"port": free_port(), "data_dir": str(base / "run"), "worker_user": "nobody",
               "ohif": {"cache_dir": _fake_cache(base)}, **archive.viewer_settings(),
               "auth": {"users": {USER: {"password": {"env": "PACSINFRA_TEST_PW"}}}}}
        for path in base.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        conf = base / "viewer.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, PYTHONPATH=str(REPO), PACSINFRA_TEST_PW=PASSWORD)
        proc = subprocess.Popen([sys.executable, "-m", "pacsinfra", "viewer", "serve",
                                 "--config", str(conf)], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            from test_archive_support import wait_port

            try:
                wait_port(cfg["port"], proc=proc)  # type: ignore[arg-type]
            except RuntimeError:
                raise AssertionError(proc.communicate()[1].decode()) from None
            done = cli("check", "--config", str(conf), env={"PACSINFRA_TEST_PW": PASSWORD})
            assert done.returncode == 0, done.stdout
            nobody = pwd.getpwnam("nobody").pw_uid
            workers = [pid for pid in nginx_pids(base / "run") if pid != proc.pid]
            assert workers and all(
                Path(f"/proc/{pid}").stat().st_uid == nobody for pid in workers)
            secrets = base / "run" / "secrets"
            assert secrets.stat().st_uid == 0 and stat.S_IMODE(secrets.stat().st_mode) == 0o710
            assert (secrets / "htpasswd").stat().st_uid == nobody
            assert (secrets / "upstream-auth.conf").stat().st_uid == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        # a build the workers cannot reach is refused before nginx starts
        (base / "cache").chmod(0o700)
        done = cli("serve", "--config", str(conf), env={"PACSINFRA_TEST_PW": PASSWORD})
        assert done.returncode == 2 and "cannot read OHIF's files" in done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_htpasswd_users_log_in_and_check_needs_a_password_for_them(
        archive: ArchiveWeb, tmp_path: Path) -> None:
    from pacsinfra.viewer import htpasswd

    users = tmp_path / "viewer.htpasswd"
    users.write_text("# managed elsewhere\n" + htpasswd.line("bob", "bobs-password") + "\n")
    users.chmod(0o600)
    v = Viewer(tmp_path / "viewer", {**archive.viewer_settings(),
                                     "auth": {"htpasswd": {"file": str(users)}}}, users=False)
    v.start()
    try:
        r = requests.get(f"{v.url}/dicom-web/studies", auth=("bob", "bobs-password"), timeout=10)
        assert r.status_code == 200
        done = cli("check", "--config", str(v.config_path))
        assert done.returncode == 1 and "give --user and --password-env" in done.stdout
        done = cli("check", "--config", str(v.config_path), "--user", "carol")
        assert done.returncode == 1 and "carol is not in auth.users" in done.stdout
        done = cli("check", "--config", str(v.config_path), "--user", "bob", "--password-env",
                   "BOB_PW", env={"BOB_PW": "bobs-password"})
        assert done.returncode == 0, done.stdout
        done = cli("check", "--config", str(v.config_path), "--user", "bob", "--password-env",
                   "NOT_SET_ANYWHERE")
        assert done.returncode == 2 and "NOT_SET_ANYWHERE" in done.stderr
    finally:
        assert v.stop() == 0
