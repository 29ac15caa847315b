"""The local state file: atomic writes, serial and lineage, the lock, no secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pacsinfra.errors import StateError, StateLockedError
from pacsinfra.specs import NetworkSpec, Ownership
from pacsinfra.state.local import LocalStateStore, default_state_path
from pacsinfra.state.store import ResourceState, State

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pacsinfra.state.local import LocalStateStore
    with LocalStateStore(sys.argv[1]).lock("apply"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _record(addr: str = "network.dicom", **settings: object) -> ResourceState:
    spec = NetworkSpec(address=addr, name="st-mary-dicom", purpose="dicom", settings=settings)
    return ResourceState(addr, "uuid-1", spec, Ownership("st-mary", addr, "L"))


def test_write_read_serial_lineage(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path / "s" / "site.state.json")
    assert store.read() is None
    st = State(site="st-mary", driver="kvm")
    lineage = st.lineage
    store.write(st)
    st.resources["network.dicom"] = _record()
    store.write(st)
    back = store.read()
    assert back is not None
    assert (back.serial, back.lineage) == (2, lineage)
    assert back.resources["network.dicom"].spec == st.resources["network.dicom"].spec
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


def test_corrupt_and_foreign_state_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text("{not json")
    with pytest.raises(StateError, match="corrupt state file"):
        LocalStateStore(p).read()
    p.write_text(json.dumps({"version": 99}))
    with pytest.raises(StateError, match="unsupported state version"):
        LocalStateStore(p).read()


def test_secrets_are_never_written(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path / "s.json")
    st = State(site="x", driver="kvm")
    st.resources["network.dicom"] = _record(password="hunter2")
    with pytest.raises(StateError, match="secret-looking field"):
        store.write(st)
    assert not store.path.exists()
    assert st.serial == 0
    # a reference to where a secret lives is fine
    st.resources["network.dicom"] = _record(password={"env": "VSPHERE_PASSWORD"})
    store.write(st)
    assert "hunter2" not in store.path.read_text()


def test_default_state_path_is_next_to_the_blueprint(tmp_path: Path) -> None:
    bp = tmp_path / "sites" / "site.yaml"
    assert (
        default_state_path(bp, "st-mary", None)
        == tmp_path / "sites" / ".pacsinfra" / "st-mary.state.json"
    )
    assert default_state_path(bp, "st-mary", "dr").name == "st-mary-dr.state.json"


def _spawn_holder(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_another_process_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    proc = _spawn_holder(path, 30)
    try:
        store = LocalStateStore(path)
        t0 = time.monotonic()
        with pytest.raises(StateLockedError) as err, store.lock("apply", timeout=0.5):
            pass
        assert time.monotonic() - t0 >= 0.5
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "operation apply" in msg and "force-unlock" in msg
        info = store.lock_info()
        assert info is not None and info.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_waiting_for_the_lock_succeeds_when_released(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    proc = _spawn_holder(path, 0.5)
    with LocalStateStore(path).lock("apply", timeout=10) as info:
        assert info.pid == os.getpid()
    proc.wait()


def test_a_killed_holder_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    proc = _spawn_holder(path, 30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = LocalStateStore(path)
    assert store.lock_info() is None
    with store.lock("apply") as info:
        assert info.pid == os.getpid()


def test_force_unlock_needs_the_matching_id(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    proc = _spawn_holder(path, 30)
    try:
        store = LocalStateStore(path)
        holder = store.lock_info()
        assert holder is not None
        with pytest.raises(StateError, match="does not match"):
            store.force_unlock("nope")
        assert store.force_unlock(holder.id).pid == proc.pid
        with store.lock("apply"):  # a fresh lock file
            pass
    finally:
        proc.kill()
        proc.wait()
