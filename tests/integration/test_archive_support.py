"""Helpers shared by the archive integration tests (no tests in here).

The archive always runs as a real subprocess (``python -m pacsinfra archive serve``)
on a free loopback port; DCMTK binaries are taken from /usr/bin when present so a
pynetdicom app of the same name on PATH is never picked by mistake.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import free_port, need_binary

REPO = Path(__file__).resolve().parents[2]


def dcmtk(name: str) -> str:
    """Absolute path of a DCMTK tool (Debian's /usr/bin first)."""
    path = Path("/usr/bin") / name
    if path.exists():
        return str(path)
    need_binary(name)
    found = shutil.which(name)
    assert found
    return found


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class Archive:
    """A running ``pacsinfra archive serve`` subprocess."""

    def __init__(self, data: Path, *, config: dict[str, Any] | None = None,
                 aet: str = "ARCHIVE", peers: dict[str, int] | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.data = data
        self.extra_env = env or {}  # e.g. a private TMPDIR
        self.cwd = cwd or REPO
        self.aet = aet
        self.port = free_port()
        self.config = config
        self.peers = peers or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"{data.name}.log"

    def args(self) -> list[str]:
        base = [sys.executable, "-m", "pacsinfra", "archive", "serve"]
        if self.config is not None:
            cfg = dict(self.config)
            cfg.setdefault("ae_title", self.aet)
            cfg["port"] = self.port
            cfg["bind"] = "127.0.0.1"
            cfg.setdefault("data_dir", str(self.data))
            cfg.setdefault("dicomweb", {"enabled": False})
            path = self.data.parent / f"{self.data.name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            return [*base, "--config", str(path)]
        out = [*base, "--aet", self.aet, "--port", str(self.port), "--bind", "127.0.0.1",
               "--data", str(self.data)]
        for name, port in self.peers.items():
            out += ["--peer", f"{name}=127.0.0.1:{port}"]
        return out

    def start(self) -> Archive:
        env = dict(os.environ, PYTHONPATH=str(REPO), **self.extra_env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.cwd)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> int:
        """SIGTERM and wait (clean shutdown); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill9(self) -> None:
        """Crash it (SIGKILL)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def scu_ae(aet: str = "TESTSCU") -> Any:
    """A pynetdicom AE for clients in tests."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = 10
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    return ae


def store_studies(port: int, studies: int, per_study: int, *, prefix: str = "PAT",
                  aet: str = "ARCHIVE") -> dict[str, int]:
    """C-STORE ``studies`` synthetic studies of ``per_study`` small CT instances over one
    association (each must get Success); Study Instance UID -> instances sent."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom.sop_class import CTImageStorage

    from pacsinfra.pacs.archive.synth import make_instance

    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established, f"cannot associate with {aet} on port {port}"
    out: dict[str, int] = {}
    try:
        for s in range(studies):
            uid = generate_uid()
            for _ in range(per_study):
                ds = make_instance(rows=16, cols=16, patient_id=f"{prefix}{s}", study_uid=uid)
                assert assoc.send_c_store(ds).Status == 0
            out[uid] = per_study
    finally:
        assoc.release()
    return out


def study_counts(port: int, aet: str = "ARCHIVE", *, host: str = "127.0.0.1") -> dict[str, int]:
    """Study Instance UID -> NumberOfStudyRelatedInstances, from a study-level C-FIND."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = scu_ae()
    ae.add_requested_context(FIND)
    assoc = ae.associate(host, port, ae_title=aet)
    assert assoc.is_established, f"cannot associate with {aet} at {host}:{port}"
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.NumberOfStudyRelatedInstances = ""
    try:
        return {str(m.StudyInstanceUID): int(m.NumberOfStudyRelatedInstances)
                for st, m in assoc.send_c_find(q, FIND) if st and st.Status == 0xFF00}
    finally:
        assoc.release()
