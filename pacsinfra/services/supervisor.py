"""A small process supervisor for targets without systemd (containers, test hosts, ``local``).

Semantics follow systemd's where they overlap:

- ``restart``: ``on-failure`` (default: restart after a non-zero exit or a death by signal),
  ``always``, or ``no``. A clean ``stop`` never triggers a restart.
- Backoff: the n-th consecutive quick failure waits ``min(backoff_initial * 2**(n-1),
  backoff_max)``; a child that stayed up ``reset_after`` seconds resets the count.
- Start limit: more than ``start_limit_burst`` starts within ``start_limit_interval`` seconds
  puts the service in state ``failed`` (systemd's start-limit-hit) and the supervisor exits.
- ``stop``: ``stop_signal`` (SIGTERM unless the spec says otherwise) to the child's process
  group, SIGKILL after ``stop_timeout``.

Files in ``<run_dir>``: ``<name>.spec.json`` (what to run), ``<name>.lock`` (held by a live
supervisor: the truth about "is it running", immune to stale pidfiles), ``<name>.pid``
(supervisor pid), ``<name>.state.json`` (state, child pid, restarts, last exit; replaced
atomically), ``<name>.log`` (child stdout+stderr and supervisor notes, rotated by size to
``.log.1`` .. ``.log.<backups>``).

Command line (on the target; pacsinfra installed there)::

    python -m pacsinfra.services.supervisor start  --spec SPEC.json   # detached (setsid), waits
    python -m pacsinfra.services.supervisor status --run-dir D --name N [--json]
    python -m pacsinfra.services.supervisor stop   --run-dir D --name N
    python -m pacsinfra.services.supervisor logs   --run-dir D --name N [--tail 50]

:class:`Supervised` drives the same commands through any Transport.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pacsinfra.deploy.transport import Transport, put_text
from pacsinfra.errors import DeployError

RestartPolicy = Literal["no", "on-failure", "always"]


@dataclass
class ServiceSpec:
    """What to run and how to keep it running."""

    name: str
    argv: list[str]
    run_dir: str
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    restart: RestartPolicy = "on-failure"
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    reset_after: float = 10.0
    start_limit_burst: int = 10
    start_limit_interval: float = 60.0
    stop_timeout: float = 10.0
    # What asks the child to stop: PostgreSQL's fast shutdown is SIGINT (its SIGTERM
    # waits for every client to disconnect, which a connected archive never does).
    stop_signal: str = "SIGTERM"
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5

    def path(self, suffix: str) -> Path:
        return Path(self.run_dir) / f"{self.name}{suffix}"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServiceSpec:
        return cls(**raw)


@dataclass
class ServiceStatus:
    """What ``status`` reports. ``active`` is true only while a supervisor holds the lock."""

    name: str
    active: bool
    state: str  # starting | running | backoff | failed | stopped | exited | unknown
    pid: int | None = None
    supervisor_pid: int | None = None
    restarts: int = 0
    last_exit: dict[str, Any] | None = None
    started_at: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServiceStatus:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        known.setdefault("active", False)
        known.setdefault("state", "unknown")
        known["restarts"] = known.get("restarts") or 0
        return cls(**known)


# -- the daemon ------------------------------------------------------------------------


class RotatingLog:
    """Appends bytes to a log file, rotating it by size; safe to call from several threads."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._lock = threading.Lock()
        self._fh: IO[bytes] = open(path, "ab")  # noqa: SIM115 - lives with the supervisor

    def write(self, data: bytes) -> None:
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            if self._fh.tell() >= self.max_bytes:
                self._rotate()

    def note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.write(f"{stamp} [supervisor] {text}\n".encode())

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically; mode 0600 because a spec's ``env`` may hold secrets."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


class _Daemon:
    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.pump: threading.Thread = threading.Thread()
        self.log = RotatingLog(spec.path(".log"), spec.log_max_bytes, spec.log_backups)
        self.state: dict[str, Any] = {"name": spec.name, "state": "starting", "restarts": 0,
                                      "supervisor_pid": os.getpid(), "pid": None,
                                      "last_exit": None, "started_at": None}

    def _set(self, **kw: Any) -> None:
        self.state.update(kw)
        _write_json(self.spec.path(".state.json"), self.state)

    def _on_term(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _pump(self, stream: IO[bytes]) -> None:
        for chunk in iter(lambda: stream.readline(65536), b""):
            self.log.write(chunk)

    def _spawn(self) -> subprocess.Popen[bytes]:
        s = self.spec
        env = {**os.environ, **s.env}
        proc = subprocess.Popen(
            s.argv, cwd=s.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, process_group=0,  # own group: stop reaches grandchildren
        )
        assert proc.stdout is not None
        self.pump = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.pump.start()
        return proc

    def _terminate_child(self) -> None:
        proc = self.child
        if proc is None or proc.poll() is not None:
            return
        sig = signal.Signals[self.spec.stop_signal]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(self.spec.stop_timeout)
        except subprocess.TimeoutExpired:
            self.log.note(f"pid {proc.pid} ignored {sig.name} for {self.spec.stop_timeout:g}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.05, end - time.monotonic()))

    def run(self) -> int:
        s = self.spec
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        starts: list[float] = []
        failures = 0
        spawned = 0
        while not self.stopping:
            now = time.monotonic()
            starts = [t for t in starts if now - t < s.start_limit_interval] + [now]
            if len(starts) > s.start_limit_burst:
                self.log.note(f"start limit hit: {len(starts) - 1} starts within "
                              f"{s.start_limit_interval:g}s; giving up (state failed)")
                self._set(state="failed", pid=None)
                return 1
            try:
                self.child = self._spawn()
            except OSError as exc:
                self.log.note(f"cannot start {s.argv[0]}: {exc}")
                self._set(state="failed", pid=None,
                          last_exit={"code": None, "signal": None, "error": str(exc),
                                     "at": time.time()})
                return 1
            started = time.monotonic()
            restarts = self.state["restarts"] + (1 if spawned else 0)
            spawned += 1
            self._set(state="running", pid=self.child.pid, started_at=time.time(),
                      restarts=restarts)
            self.log.note(f"started pid {self.child.pid}: {' '.join(s.argv)}")
            while not self.stopping:
                try:
                    rc = self.child.wait(0.1)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if self.stopping:
                self._terminate_child()
                break
            # Log the child's last words before its exit (a grandchild holding the pipe
            # open must not stall the restart, hence the bound).
            self.pump.join(2.0)
            exit_info = {"code": rc if rc >= 0 else None,
                         "signal": signal.Signals(-rc).name if rc < 0 else None,
                         "at": time.time()}
            failed = rc != 0
            self.log.note(f"pid {self.child.pid} exited: "
                          + (f"signal {exit_info['signal']}" if rc < 0 else f"code {rc}"))
            restart = s.restart == "always" or (s.restart == "on-failure" and failed)
            if not restart:
                self._set(state="failed" if failed else "exited", pid=None, last_exit=exit_info)
                return 1 if failed else 0
            failures = 1 if time.monotonic() - started >= s.reset_after else failures + 1
            delay = min(s.backoff_initial * 2 ** (failures - 1), s.backoff_max)
            self._set(state="backoff", pid=None, last_exit=exit_info)
            self.log.note(f"restarting in {delay:.2f}s (restart={s.restart})")
            self._sleep(delay)
        self._set(state="stopped", pid=None)
        self.log.note("stopped")
        return 0


def _lock(spec: ServiceSpec) -> int | None:
    """Take the service lock; None when another supervisor holds it."""
    fd = os.open(spec.path(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _is_active(run_dir: Path, name: str) -> bool:
    path = run_dir / f"{name}.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def serve(spec: ServiceSpec) -> int:
    """The supervisor's main loop (runs in the detached process)."""
    fd = _lock(spec)
    if fd is None:
        return 0  # another supervisor already runs this service
    spec.path(".pid").write_text(f"{os.getpid()}\n")
    daemon = _Daemon(spec)
    try:
        return daemon.run()
    finally:
        daemon.log.close()
        spec.path(".pid").unlink(missing_ok=True)
        os.close(fd)


def read_status(run_dir: Path, name: str) -> ServiceStatus:
    """The service's state as its supervisor last wrote it, with ``active`` from the lock."""
    active = _is_active(run_dir, name)
    try:
        raw = json.loads((run_dir / f"{name}.state.json").read_text())
    except (OSError, ValueError):
        raw = {"name": name, "state": "unknown" if active else "stopped"}
    status = ServiceStatus.from_dict(raw)
    status.active = active
    if not active and status.state in ("running", "backoff", "starting"):
        status.state = "dead"  # the supervisor itself was killed
    return status


#: seconds ``start`` waits for the supervisor to report the process started (the
#: deploy passes ``deploy.start_timeout``)
START_WAIT_S = 120.0


def _reported(st: ServiceStatus) -> bool:
    """Whether the supervisor has said how the start went."""
    return st.state in ("running", "failed", "exited") or (st.state == "backoff" and st.restarts > 0)


def start(spec: ServiceSpec, wait: float = START_WAIT_S) -> ServiceStatus:
    """Start the supervisor detached (new session, stdio closed) and wait up to ``wait``
    seconds for it to start the process (on a slow machine the supervisor's own Python
    start-up is most of that); a supervisor that dies first fails at once."""
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.path(".spec.json")
    if _is_active(run_dir, spec.name):
        current = json.loads(spec_path.read_text()) if spec_path.exists() else None
        if current == asdict(spec):
            return read_status(run_dir, spec.name)
        raise DeployError(f"{spec.name} runs with another spec; stop it first")
    _write_json(spec_path, asdict(spec))
    spec.path(".state.json").unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacsinfra.services.supervisor", "serve", "--spec", str(spec_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, cwd="/",
    )
    deadline = time.monotonic() + wait
    while True:
        st = read_status(run_dir, spec.name)
        if _reported(st):
            return st
        code = proc.poll()
        if code is not None:
            st = read_status(run_dir, spec.name)  # it may have recorded why just before
            if _reported(st) or st.state == "backoff":
                return st
            raise DeployError(f"{spec.name}: the supervisor exited ({code}) before starting it; "
                              f"see {spec.path('.log')}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise DeployError(
        f"{spec.name}: the supervisor did not start it within {wait:g}s (it is still trying; "
        "a slow or busy machine: raise deploy.start_timeout in the blueprint)")


def stop(run_dir: Path, name: str, timeout: float = 30.0) -> ServiceStatus:
    """Stop the supervisor (which stops the child); kill an orphaned child if it is gone."""
    pid_file = run_dir / f"{name}.pid"
    if _is_active(run_dir, name):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_active(run_dir, name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_active(run_dir, name):
            raise DeployError(f"{name}: supervisor did not stop within {timeout:g}s")
    status = read_status(run_dir, name)
    if status.state == "dead" and status.pid:
        # The supervisor was killed hard; its child may live on in its own group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(status.pid, signal.SIGKILL)
        state_path = run_dir / f"{name}.state.json"
        raw = json.loads(state_path.read_text())
        raw.update(state="stopped", pid=None)
        _write_json(state_path, raw)
        status = read_status(run_dir, name)
    return status


def tail(run_dir: Path, name: str, lines: int = 50) -> str:
    """The last ``lines`` lines of the service log (reaching into ``.log.1`` when short)."""
    chunks: list[str] = []
    for path in (run_dir / f"{name}.log", run_dir / f"{name}.log.1"):
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 256 * lines))
                chunks.insert(0, fh.read().decode("utf-8", "replace"))
        if sum(c.count("\n") for c in chunks) >= lines:
            break
    last = "".join(chunks).splitlines()[-lines:]
    return "\n".join(last) + "\n" if last else ""


def main(argv: list[str] | None = None) -> int:
    """``python -m pacsinfra.services.supervisor``; bad input exits 2 with a message."""
    p = argparse.ArgumentParser(prog="pacsinfra-supervisor")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("start", "serve"):
        sp = sub.add_parser(name)
        sp.add_argument("--spec", required=True, type=Path)
        sp.add_argument("--wait", type=float, default=START_WAIT_S,
                        help="start: seconds to wait for the process to start")
    for name in ("status", "stop", "logs"):
        sp = sub.add_parser(name)
        sp.add_argument("--run-dir", required=True, type=Path)
        sp.add_argument("--name", required=True)
        sp.add_argument("--json", action="store_true")
        sp.add_argument("--tail", type=int, default=50)
        sp.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    try:
        if args.cmd in ("start", "serve"):
            try:
                spec = ServiceSpec.from_dict(json.loads(args.spec.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                print(f"bad spec {args.spec}: {exc}", file=sys.stderr)
                return 2
            if args.cmd == "serve":
                return serve(spec)
            st = start(spec, args.wait)
        elif args.cmd == "status":
            st = read_status(args.run_dir, args.name)
        elif args.cmd == "stop":
            st = stop(args.run_dir, args.name, args.timeout)
        else:
            sys.stdout.write(tail(args.run_dir, args.name, args.tail))
            return 0
    except DeployError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if getattr(args, "json", False) or args.cmd == "start":
        print(json.dumps(asdict(st), sort_keys=True))
    else:
        print(f"{st.name}: {st.state} (active={st.active}, pid={st.pid}, restarts={st.restarts})")
    return 0


# -- driving it through a Transport ----------------------------------------------------


class Supervised:
    """One supervised service on a target, driven through a Transport.

    ``python`` is the target interpreter that has pacsinfra installed (a deploy venv).
    """

    def __init__(self, transport: Transport, spec: ServiceSpec, python: str = "python3") -> None:
        self.t, self.spec, self.python = transport, spec, python

    def _cli(self, *args: str, timeout: float = 60.0) -> str:
        res = self.t.run([self.python, "-m", "pacsinfra.services.supervisor", *args], timeout)
        if res.rc != 0:
            raise DeployError(f"{self.t.name}: supervisor {args[0]} {self.spec.name} failed "
                              f"(exit {res.rc}): {res.stderr.strip()[-400:]}")
        return res.stdout

    def _where(self) -> tuple[str, ...]:
        return ("--run-dir", self.spec.run_dir, "--name", self.spec.name)

    def start(self, wait: float = START_WAIT_S) -> ServiceStatus:
        """Write the spec and start (a no-op when it already runs with the same spec),
        waiting up to ``wait`` seconds for the process to start."""
        self.t.run(["mkdir", "-p", self.spec.run_dir], 30)
        remote = f"{self.spec.run_dir}/{self.spec.name}.request.json"
        put_text(self.t, json.dumps(asdict(self.spec)), remote, 0o600)
        out = self._cli("start", "--spec", remote, "--wait", f"{wait:g}", timeout=wait + 60)
        return ServiceStatus.from_dict(json.loads(out))

    def status(self) -> ServiceStatus:
        return ServiceStatus.from_dict(json.loads(self._cli("status", *self._where(), "--json")))

    def stop(self, timeout: float = 30.0) -> ServiceStatus:
        out = self._cli("stop", *self._where(), "--json", "--timeout", str(timeout),
                        timeout=timeout + 30)
        return ServiceStatus.from_dict(json.loads(out))

    def restart(self, timeout: float = 30.0) -> ServiceStatus:
        """Stop (if running) and start again, e.g. after the spec or the code changed."""
        self.stop(timeout)
        return self.start()

    def logs(self, lines: int = 50) -> str:
        return self._cli("logs", *self._where(), "--tail", str(lines))


if __name__ == "__main__":
    sys.exit(main())
