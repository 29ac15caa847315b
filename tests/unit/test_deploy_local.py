"""LocalTransport, the Transport helpers, fingerprints and the supervisor's log rotation."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import need_binary

from pacsinfra.deploy.local import LocalTransport
from pacsinfra.deploy.ssh import fingerprint, parse_public_key
from pacsinfra.deploy.transport import Result, Transport, check, put_text, to_shell
from pacsinfra.errors import DeployError, SSHError
from pacsinfra.services.supervisor import RotatingLog
from pacsinfra.verify.smoke import FAIL, PASS, SKIP, SmokeReport, Step


def test_run_returns_status_and_output_and_quotes_lists() -> None:
    t = LocalTransport()
    assert isinstance(t, Transport)
    rc, out, err = t.run("echo out; echo err >&2; exit 4")
    assert (rc, out, err) == (4, "out\n", "err\n")
    assert t.run(["printf", "%s|", "a b", "$HOME", "it's"]).stdout == "a b|$HOME|it's|"
    assert to_shell(["echo", "a b"]) == "echo 'a b'"
    assert t.run("cat", input=b"abc").stdout == "abc"
    assert t.run(["/nonexistent/tool"]).rc == 127
    with pytest.raises(DeployError, match=r"exit 4\)[\s\S]*err"):
        check(t, "echo err >&2; exit 4")


def test_timeout_kills_the_whole_group() -> None:
    t = LocalTransport()
    started = time.monotonic()
    res = t.run("sleep 30 & sleep 30; echo never", timeout=0.5)
    assert res.rc == 124 and "timed out" in res.stderr and "never" not in res.stdout
    assert time.monotonic() - started < 5  # the background sleep did not hold the pipes


def test_put_is_atomic_with_mode_get_and_exists(tmp_path: Path) -> None:
    t = LocalTransport()
    src = tmp_path / "src"
    src.write_bytes(b"x" * 100_000)
    dst = tmp_path / "a" / "b" / "dst"
    assert not t.exists(str(dst))
    t.put(src, str(dst), 0o600)
    assert dst.read_bytes() == src.read_bytes() and dst.stat().st_mode & 0o777 == 0o600
    inode = dst.stat().st_ino
    put_text(t, "new", str(dst), 0o640)
    assert dst.read_text() == "new" and dst.stat().st_ino != inode  # replaced, not rewritten
    assert sorted(os.listdir(dst.parent)) == ["dst"]  # no temp file left behind
    t.get(str(dst), tmp_path / "back")
    assert (tmp_path / "back").read_text() == "new"
    assert Result(0, "", "").ok and not Result(1, "", "").ok


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    need_binary("ssh-keygen")
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = (tmp_path / "k.pub").read_text()
    theirs = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    assert fingerprint(parse_public_key(line)) == theirs
    assert fingerprint(parse_public_key(f"10.0.0.1 {line}")) == theirs  # known_hosts form
    with pytest.raises(SSHError, match="not an SSH public key"):
        parse_public_key("ssh-ed25519 !!!notbase64")


def test_rotating_log(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=1000, backups=2)
    for i in range(100):
        log.write(f"{i:04d} {'y' * 45}\n".encode())
    log.note("hello")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x.log", "x.log.1", "x.log.2"]
    assert "hello" in (tmp_path / "x.log").read_text()
    assert "0099" in (tmp_path / "x.log").read_text() + (tmp_path / "x.log.1").read_text()


def test_smoke_report_table_and_verdict() -> None:
    r = SmokeReport(study_uid="2.25.1", instances=2)
    assert not r.ok  # nothing ran: not a pass
    r.steps += [Step("c-echo", "A@h:1", PASS, 0.0012), Step("delete", "A@h:1", SKIP, 0.0, "why")]
    assert r.ok and "PASSED" in r.table() and "1.2" in r.table()
    r.steps.append(Step("c-move+compare", "A@h:1", FAIL, 0.5, "checksum mismatch"))
    assert not r.ok and "FAILED" in r.table() and r.to_dict()["ok"] is False
