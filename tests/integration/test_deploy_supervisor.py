"""The supervisor with real processes: kill -9 the child, see it restarted; stop; logs; limits."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from support.netns_hosts import NetnsHost, netns_hosts  # noqa: F401 - fixture

from pacsinfra.deploy.local import LocalTransport
from pacsinfra.deploy.ssh import SSHTarget, SSHTransport
from pacsinfra.errors import DeployError
from pacsinfra.services.supervisor import ServiceSpec, ServiceStatus, Supervised, main

pytestmark = pytest.mark.integration

SLEEPER = "import os, time; print('up', os.getpid(), flush=True); time.sleep(300)"


def _wait(pred, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ")[1][0] != "Z"


def test_kill_9_restarts_then_stop(tmp_path: Path) -> None:
    spec = ServiceSpec(name="sleeper", argv=[sys.executable, "-c", SLEEPER],
                       run_dir=str(tmp_path), backoff_initial=0.2)
    svc = Supervised(LocalTransport(), spec, python=sys.executable)
    st = svc.start()
    assert st.state == "running" and st.active and st.pid
    first = st.pid
    assert st.supervisor_pid and os.getsid(st.supervisor_pid) == st.supervisor_pid  # setsid
    assert svc.start().pid == first  # idempotent: same spec, nothing restarted

    os.kill(first, signal.SIGKILL)
    st2: ServiceStatus = _wait(lambda: (s := svc.status()).state == "running"
                               and s.pid != first and s)
    assert st2.restarts == 1 and st2.last_exit == {**st2.last_exit, "signal": "SIGKILL"}
    assert not _alive(first) and _alive(st2.pid)  # type: ignore[arg-type]
    logs = svc.logs(20)
    assert f"up {first}" in logs and f"up {st2.pid}" in logs and "signal SIGKILL" in logs

    changed = Supervised(LocalTransport(), ServiceSpec(**{**spec.__dict__, "backoff_max": 5.0}),
                         python=sys.executable)
    with pytest.raises(DeployError, match="another spec"):
        changed.start()  # a running service is not silently reconfigured...
    st3 = changed.restart()  # ...but restarted on request
    assert st3.state == "running" and st3.pid not in (first, st2.pid)
    assert not _alive(st2.pid)  # type: ignore[arg-type]
    st2 = st3

    stopped = svc.stop()
    assert stopped.state == "stopped" and not stopped.active
    assert not _alive(st2.pid)  # type: ignore[arg-type]
    assert not (tmp_path / "sleeper.pid").exists()


def test_stop_after_the_supervisor_was_killed_kills_the_orphan(tmp_path: Path) -> None:
    spec = ServiceSpec(name="orphan", argv=[sys.executable, "-c", SLEEPER], run_dir=str(tmp_path))
    svc = Supervised(LocalTransport(), spec, python=sys.executable)
    st = svc.start()
    assert st.supervisor_pid and st.pid
    _wait(lambda: f"up {st.pid}" in svc.logs(5))  # past its one write to the log pipe
    os.kill(st.supervisor_pid, signal.SIGKILL)
    dead = _wait(lambda: (s := svc.status()).state == "dead" and s)
    assert not dead.active and _alive(st.pid)  # the child lives on in its own group...
    assert svc.stop().state == "stopped"
    _wait(lambda: not _alive(st.pid))  # type: ignore[arg-type]  # ...until stop kills it
    assert (tmp_path / "orphan.spec.json").stat().st_mode & 0o777 == 0o600


def test_clean_exit_is_not_restarted_but_failures_back_off_to_the_limit(tmp_path: Path) -> None:
    ok = Supervised(LocalTransport(), ServiceSpec(
        name="oneshot", argv=[sys.executable, "-c", "print('done')"], run_dir=str(tmp_path)),
        python=sys.executable)
    st = ok.start()
    st = _wait(lambda: (s := ok.status()).state == "exited" and s)
    assert st.restarts == 0 and st.last_exit and st.last_exit["code"] == 0

    spec = ServiceSpec(name="crasher", argv=["sh", "-c", "echo boom; exit 3"],
                       run_dir=str(tmp_path), backoff_initial=0.1, start_limit_burst=3)
    bad = Supervised(LocalTransport(), spec, python=sys.executable)
    started = time.monotonic()
    bad.start()
    # "failed" is written just before the supervisor exits and lets go of its lock.
    st = _wait(lambda: (s := bad.status()).state == "failed" and not s.active and s)
    elapsed = time.monotonic() - started
    assert st.restarts == 2 and st.last_exit and st.last_exit["code"] == 3 and not st.active
    assert elapsed >= 0.1 + 0.2 + 0.4  # backoff doubles: 0.1, 0.2, then 0.4 before the refused 4th
    logs = bad.logs(100)
    assert logs.splitlines().count("boom") == 3 and "start limit hit" in logs
    assert "restarting in 0.40s" in logs


def test_log_rotation_keeps_bounded_files(tmp_path: Path) -> None:
    chatty = "import sys\nfor i in range(3000): print('line %06d' % i + 'x' * 40)\n"
    spec = ServiceSpec(name="chatty", argv=[sys.executable, "-c", chatty], run_dir=str(tmp_path),
                       log_max_bytes=20_000, log_backups=2, restart="no")
    svc = Supervised(LocalTransport(), spec, python=sys.executable)
    svc.start()
    _wait(lambda: svc.status().state == "exited")
    names = sorted(p.name for p in tmp_path.glob("chatty.log*"))
    assert names == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all((tmp_path / n).stat().st_size < 20_000 + 200 for n in names)
    assert "line 002999" in svc.logs(5)


def test_supervised_over_ssh_in_a_namespace(netns_hosts: list[NetnsHost]) -> None:  # noqa: F811
    h = netns_hosts[0]
    t = SSHTransport(SSHTarget(host=h.address, key_file=h.key_file, known_hosts=h.known_hosts))
    # The namespaces share this machine's files, so the checkout's venv is the target's too.
    spec = ServiceSpec(name="web", run_dir=str(h.workdir / "run"), backoff_initial=0.2,
                       argv=[sys.executable, "-m", "http.server", "--bind", h.address, "8080"])
    svc = Supervised(t, spec, python=sys.executable)
    with t:
        st = svc.start()
        assert st.state == "running"
        _wait(lambda: t.run(["python3", "-c", f"import urllib.request as u; u.urlopen("
                                              f"'http://{h.address}:8080/', timeout=1)"]).ok)
        assert t.run(["kill", "-9", str(st.pid)]).ok
        st2 = _wait(lambda: (s := svc.status()).state == "running" and s.pid != st.pid and s)
        assert st2.restarts == 1
        _wait(lambda: t.run(["python3", "-c", f"import urllib.request as u; u.urlopen("
                                              f"'http://{h.address}:8080/', timeout=1)"]).ok)
        assert svc.stop().state == "stopped"
        assert t.run(["kill", "-0", str(st2.pid)]).rc != 0


def test_bad_spec_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "spec.json"
    bad.write_text('{"name": "x"}')
    assert main(["start", "--spec", str(bad)]) == 2
    assert "bad spec" in capsys.readouterr().err


def test_a_slow_start_says_which_setting_gives_more_time(tmp_path: Path) -> None:
    """No start reported within the wait: the message names deploy.start_timeout; the
    supervisor keeps trying and the service comes up."""
    from pacsinfra.services.supervisor import start, stop

    spec = ServiceSpec(name="slow", argv=[sys.executable, "-c", SLEEPER], run_dir=str(tmp_path))
    with pytest.raises(DeployError, match=r"within 0s .*raise deploy\.start_timeout"):
        start(spec, wait=0.0)  # no supervisor reports a start in no time
    try:
        _wait(lambda: (tmp_path / "slow.state.json").exists()
              and Supervised(LocalTransport(), spec, python=sys.executable).status().state
              == "running")
    finally:
        stop(tmp_path, "slow", 10.0)


def test_a_service_still_logging_gets_more_time_and_a_stuck_one_does_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The health wait's deadline is extended while the service's log moves (up to three
    times the timeout); a quiet one fails at the deadline, naming the setting to raise."""
    import socket

    from pacsinfra.errors import ServiceCheckError
    from pacsinfra.services import health

    monkeypatch.setattr(health, "LOG_SAMPLE_S", 0.1)
    monkeypatch.setattr(health, "LOG_QUIET_S", 0.5)
    with socket.socket() as s:  # a port nothing listens on: every C-ECHO fails at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    alive = lambda: ServiceStatus(name="svc", active=True, state="running", pid=1)  # noqa: E731
    lines: list[str] = []

    def moving() -> str:
        lines.append("building index ...")
        return "\n".join(lines[-5:]) + str(len(lines))

    # timeout 2 s: a moving log waits to the cap (6 s), a quiet one fails at about 2 s
    for log, least, most in ((moving, 5.9, 12.0), (lambda: "nothing new", 1.9, 4.5)):
        t0 = time.monotonic()
        with pytest.raises(ServiceCheckError) as err:
            health.wait_healthy("svc", ("SVC", "127.0.0.1", closed), alive, log,
                                log_where="here", timeout=2.0, poll=0.05)
        took = time.monotonic() - t0
        assert least <= took <= most, (took, str(err.value))
        assert "raise deploy.start_timeout (now 2s)" in str(err.value)
        said = "still writing its log at 3 times" if log is moving else "did not change while"
        assert said in str(err.value), str(err.value)
