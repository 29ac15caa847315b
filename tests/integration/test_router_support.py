"""Helpers shared by the router integration tests and bench/bench_router.py (no tests here).

The router always runs as a real subprocess (``python -m pacsinfra router serve``) on
a free loopback port. Destinations are real peers: DCMTK storescp, Orthanc, the
pacsinfra archive, or a small pynetdicom SCP that answers a chosen status.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset
from support.ports import free_port

from pacsinfra.pacs.dicom import TCP_TUNING_HANDLER, keep_responses

REPO = Path(__file__).resolve().parents[2]
CT, MR, CR, US = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
                  "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.6.1")
SOP_OF = {"CT": CT, "MR": MR, "CR": CR, "US": US}


def port() -> int:
    """A free loopback port (tests/support/ports.py)."""
    return free_port()


def dcmtk(name: str) -> str:
    """Absolute path of a DCMTK tool (Debian's /usr/bin first: a pynetdicom app of the
    same name may shadow it on PATH)."""
    path = Path("/usr/bin") / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        from conftest import need_binary

        need_binary(name)
    assert found
    return found


def wait_port(p: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:p."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", p), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {p} after {timeout}s")


def wait_for(pred: Any, timeout: float, what: str, step: float = 0.2) -> None:
    """Poll ``pred()`` until true or fail with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- synthetic instances -------------------------------------------------------------------


def instance(*, modality: str = "CT", study: str | None = None, number: int = 1,
             station: str = "ST1", institution: str = "General", body_part: str = "CHEST",
             accession: str = "ACC1", private: str | None = None, rows: int = 4,
             series: str | None = None) -> Dataset:
    """A small valid instance (Explicit VR LE) with the tags the routing rules look at."""
    from pacsinfra.pacs.archive.synth import make_instance

    ds = make_instance(sop_class=SOP_OF[modality], modality=modality, study_uid=study,
                       series_uid=series, instance_number=number, accession=accession,
                       rows=rows, cols=rows, private=private is not None)
    ds.StationName = station
    ds.InstitutionName = institution
    ds.BodyPartExamined = body_part
    if private is not None:
        block = ds.private_block(0x0041, "PACSINFRA TEST")
        block[0x01].value = private
    return ds


def write_all(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """Save datasets as files (named by SOP Instance UID)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ds in datasets:
        p = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


# -- sending ---------------------------------------------------------------------------------


def send(p: int, datasets: Iterable[Dataset], *, called: str = "ROUTER",
         calling: str = "MODALITY") -> dict[str, int]:
    """C-STORE each dataset over one association; SOP UID -> status (-1: not answered)."""
    from pynetdicom import AE

    datasets = list(datasets)
    ae = AE(ae_title=calling)
    for sop in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    out: dict[str, int] = {}
    assoc = ae.associate("127.0.0.1", p, ae_title=called, evt_handlers=[TCP_TUNING_HANDLER])
    assert assoc.is_established, f"association to {called} on port {p} failed"
    keep_responses(assoc)
    try:
        for ds in datasets:
            st = assoc.send_c_store(ds)
            out[str(ds.SOPInstanceUID)] = int(st.Status) if "Status" in st else -1
    finally:
        if assoc.is_established:
            assoc.release()
    return out


# -- processes ------------------------------------------------------------------------------


class Proc:
    """A subprocess with a log file; stop() = SIGTERM then SIGKILL; kill() = SIGKILL."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.cwd, self.env = args, log, cwd, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT,
                                         cwd=self.cwd, env=self.env, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


class StoreSCP(Proc):
    """DCMTK storescp writing every received instance under ``folder`` (forking per assoc)."""

    def __init__(self, folder: Path, aet: str = "DEST", fork: bool = True,
                 p: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.aet, self.port = folder, aet, p or port()
        args = [dcmtk("storescp"), "-aet", aet, "-od", str(folder), "-uf"]
        if fork:
            args.append("--fork")
        args.append(str(self.port))
        env = dict(os.environ, TCP_NODELAY="1")
        super().__init__(args, folder.parent / f"{folder.name}.log", env=env)

    def start(self) -> None:
        super().start()
        wait_port(self.port, proc=self.proc)

    def files(self) -> list[Path]:
        """Received files (named ``<modality>.<SOP Instance UID>``), oldest first."""
        return sorted((p for p in self.folder.iterdir() if p.is_file() and "." in p.name),
                      key=lambda p: p.stat().st_mtime_ns)

    @staticmethod
    def uid_of(p: Path) -> str:
        return p.name.split(".", 1)[1]

    def sop_uids(self) -> set[str]:
        return {self.uid_of(p) for p in self.files()}

    def dest(self) -> dict[str, Any]:
        return {"ae_title": self.aet, "host": "127.0.0.1", "port": self.port}


class Orthanc(Proc):
    """Orthanc with its own JSON config, SQLite index and storage in ``folder``."""

    def __init__(self, folder: Path, aet: str = "ORTHANC") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.aet, self.port, self.http = folder, aet, port(), port()
        cfg = {
            "Name": "router-test", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "DicomAet": aet, "DicomPort": self.port,
            "HttpPort": self.http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "HttpBindAddress": "127.0.0.1",
            "DicomServerEnabled": True, "Plugins": [], "StorageCompression": False,
        }
        (folder / "orthanc.json").write_text(json.dumps(cfg))
        orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        super().__init__([orthanc, str(folder / "orthanc.json")], folder / "orthanc.log")

    def start(self) -> None:
        super().start()
        wait_port(self.port, proc=self.proc, timeout=30)

    def datasets(self) -> list[Dataset]:
        out = []
        for root, _dirs, names in os.walk(self.folder / "storage"):
            for n in names:
                if "." in n:
                    continue
                try:
                    out.append(dcmread(os.path.join(root, n)))
                except Exception:  # noqa: BLE001 - Orthanc's json attachments
                    continue
        return out

    def dest(self) -> dict[str, Any]:
        return {"ae_title": self.aet, "host": "127.0.0.1", "port": self.port}


class StatusSCP:
    """A real pynetdicom storage SCP in a thread that answers ``status`` (changeable)."""

    def __init__(self, status: int, aet: str = "PICKY",
                 syntaxes: list[str] | None = None, ssl_context: Any = None,
                 sop_classes: list[str] | None = None) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.status, self.aet, self.port = status, aet, port()
        self.received: list[str] = []
        self.syntax_of: dict[str, str] = {}
        self.datasets: dict[str, Any] = {}  # what arrived, decoded by pynetdicom
        ae = AE(ae_title=aet)
        classes = sop_classes or [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        for sop_class in classes:
            ae.add_supported_context(sop_class, syntaxes or ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context("1.2.840.10008.1.1")

        def on_store(event: Any) -> int:
            if self.status == 0:
                uid = str(event.request.AffectedSOPInstanceUID)
                self.received.append(uid)
                self.syntax_of[uid] = str(event.context.transfer_syntax)
                self.datasets[uid] = event.dataset
            return self.status

        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, on_store)],
                                       ssl_context=ssl_context)

    def stop(self) -> None:
        self._server.shutdown()

    def dest(self) -> dict[str, Any]:
        return {"ae_title": self.aet, "host": "127.0.0.1", "port": self.port}


class Router(Proc):
    """``pacsinfra router serve`` with the given config (port/bind/spool filled in)."""

    def __init__(self, folder: Path, cfg: dict[str, Any], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, port()
        cfg = dict(cfg)
        cfg.setdefault("ae_title", "ROUTER")
        cfg.update(bind="127.0.0.1", port=self.port)
        cfg.setdefault("spool_dir", str(folder / "spool"))
        self.cfg = cfg
        self.config = folder / "router.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        super().__init__([sys.executable, "-m", "pacsinfra", "router", "serve", "--config",
                          str(self.config)], folder / "router.log", cwd=cwd or REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO), **env) if env else None)

    def start(self) -> None:
        super().start()
        wait_port(self.port, proc=self.proc)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsinfra", "router", *args, "--config",
                               str(self.config)], capture_output=True, text=True, cwd=REPO,
                              timeout=60)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(str(Path(self.cfg["spool_dir"]) / "queue.sqlite"), timeout=30)

    def states(self) -> dict[str, int]:
        with self.db() as c:
            return dict(c.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())

    def drained(self) -> bool:
        s = self.states()
        return not any(s.get(k) for k in ("held", "pending", "inflight"))


class Sender(threading.Thread):
    """Sends datasets to the router in a loop, keeping what the router acknowledged.

    A store that fails (router killed mid-association) is tried again later, so every
    instance is eventually acknowledged once the router stays up.
    """

    def __init__(self, router_port: Any, datasets: list[Dataset]) -> None:
        super().__init__(daemon=True)
        self.router_port = router_port  # callable: the current port
        self.todo = list(datasets)
        self.acked: set[str] = set()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        from pynetdicom import AE

        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
        for sop in {str(ds.SOPClassUID) for ds in self.todo}:
            ae.add_requested_context(sop, ["1.2.840.10008.1.2.1"])
        while self.todo and not self.stop_flag.is_set():
            try:
                assoc = ae.associate("127.0.0.1", self.router_port(), ae_title="ROUTER",
                                     evt_handlers=[TCP_TUNING_HANDLER])
            except Exception:  # noqa: BLE001
                time.sleep(0.1)
                continue
            if not assoc.is_established:
                time.sleep(0.1)
                continue
            keep_responses(assoc)
            try:
                while self.todo and not self.stop_flag.is_set():
                    ds = self.todo[0]
                    try:
                        st = assoc.send_c_store(ds)
                    except Exception:  # noqa: BLE001 - killed router
                        break
                    if "Status" in st and int(st.Status) == 0:
                        self.acked.add(str(ds.SOPInstanceUID))
                        self.todo.pop(0)
                    else:
                        break
            finally:
                if assoc.is_established:
                    assoc.release()
