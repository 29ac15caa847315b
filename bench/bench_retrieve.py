"""Benchmark: C-MOVE of a compressed study, pacsinfra archive vs Orthanc, side by side.

Run on demand (not part of the test suite)::

    .venv/bin/python bench/bench_retrieve.py              # 200 instances per syntax, best of 3
    .venv/bin/python bench/bench_retrieve.py --count 50 --repeat 1

Data: one 512x512 CT-like image (a noisy elliptic phantom, 12 bits stored) compressed by
DCMTK (``dcmcrle``, ``dcmcjpeg`` lossless SV1 and extended 12-bit, ``dcmcjpls``
lossless) and by OpenJPEG through pydicom (JPEG 2000 lossless), copied under new UIDs
into one study per syntax. Both archives receive every study (as stored), then
``movescu`` moves each study to three DCMTK ``storescp`` destinations: one without
``+xa`` (uncompressed only: every instance must be decoded), one with it (every syntax
accepted: sent as stored, the fast path), both with ``TCP_NODELAY=1``, and one with
``+xa`` as DCMTK is installed (no ``TCP_NODELAY``: its responses wait for the sender's
ACK). The figure is instances per second
from the C-MOVE request to its final response, best of ``--repeat``; each destination's
received count is checked. Orthanc (Debian's 1.10, DCMTK codecs built in, no GDCM
plugin) may refuse a syntax it cannot decode: its row then says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from bench_archive import Receiver, free_port, table, wait_port  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.uid import JPEG2000Lossless, generate_uid  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

# name -> how to make it from the uncompressed original (None: pydicom's encoder)
SYNTAXES: dict[str, list[str] | None] = {
    "RLE": ["dcmcrle"],
    "JPEG lossless SV1": ["dcmcjpeg", "+e1"],
    "JPEG extended 12-bit": ["dcmcjpeg", "+ee"],
    "JPEG-LS lossless": ["dcmcjpls", "+el"],
    "JPEG 2000 lossless": None,
}


def phantom() -> np.ndarray:
    """A CT-like 512x512 image: an ellipse of soft tissue, a bright ring, noise."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[-256:256, -256:256].astype(np.float32)
    r = (x / 200) ** 2 + (y / 150) ** 2
    img = np.where(r < 1, 1040.0, 24.0) + np.where((r > 0.9) & (r < 1), 900.0, 0.0)
    img += rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def make_sets(root: Path, count: int) -> dict[str, list[Path]]:
    """For each syntax: ``count`` files of one study (generated once under ``root``)."""
    base = make_instance(rows=512, cols=512, modality="CT", private=False)
    base.BitsStored, base.HighBit = 12, 11
    base.PixelData = phantom().tobytes()
    original = write(base, root / "original.dcm")
    out: dict[str, list[Path]] = {}
    for name, tool in SYNTAXES.items():
        d = root / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        first = d / "first.dcm"
        if tool is None:
            ds = dcmread(original)
            ds.compress(JPEG2000Lossless)
            ds.save_as(first, enforce_file_format=True)
        else:
            subprocess.run([f"/usr/bin/{tool[0]}", *tool[1:], str(original), str(first)],
                           check=True, capture_output=True)
        ds = dcmread(first)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID = f"RETRIEVE-{name}"
        files = []
        for i in range(count):
            uid = generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = i + 1
            path = d / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        first.unlink()
        out[name] = files
    return out


def start_archive(work: Path, dests: dict[str, int]) -> Receiver:
    port = free_port()
    cfg = {"ae_title": "ARCHIVE", "bind": "127.0.0.1", "port": port,
           "data_dir": str(work / "data"), "dicomweb": {"enabled": False},
           "limits": {"max_pdu": 1048576},
           "peers": {aet: {"ae_title": aet, "host": "127.0.0.1", "port": p}
                     for aet, p in dests.items()}}
    (work / "archive.yaml").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
         str(work / "archive.yaml"), "--log-level", "WARNING"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))  # noqa: SIM115
    wait_port(port)
    return Receiver("pacsinfra archive", "ARCHIVE", port, proc, work)


def start_orthanc(work: Path, dests: dict[str, int]) -> Receiver:
    port, http = free_port(), free_port()
    modalities = {aet.lower(): [aet, "127.0.0.1", p] for aet, p in dests.items()}
    modalities["benchscu"] = ["BENCHSCU", "127.0.0.1", free_port()]  # may ask for C-MOVE
    cfg = {
        "Name": "bench", "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"), "DicomAet": "ORTHANC", "DicomPort": port,
        "HttpPort": http, "HttpServerEnabled": True, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "StorageCompression": False, "Plugins": [], "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities, "LoadPrivateDictionary": False,
    }
    (work / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(["Orthanc", str(work / "config.json")], cwd=work,
                            env=dict(os.environ, TCP_NODELAY="1"),
                            stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))  # noqa: SIM115
    wait_port(port)
    return Receiver("Orthanc", "ORTHANC", port, proc, work)


def storescp(work: Path, aet: str, accept_all: bool, nodelay: bool = True
             ) -> tuple[subprocess.Popen[bytes], int, Path]:
    out = work / aet
    out.mkdir()
    port = free_port()
    flags = ["+xa"] if accept_all else []
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    proc = subprocess.Popen(["/usr/bin/storescp", *flags, "-aet", aet, "-od", str(out), str(port)],
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, out


def store(rcv: Receiver, files: list[Path]) -> None:
    """C-STORE the files as they are, over one association proposing their own syntax."""
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE
    from pynetdicom import _config as pnd_config

    pnd_config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes, not re-encoded
    meta = read_file_meta_info(files[0])
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", rcv.port, ae_title=rcv.aet)
    if not assoc.is_established:
        raise RuntimeError(f"{rcv.name} refused the association")
    try:
        for f in files:
            status = assoc.send_c_store(f)
            if int(getattr(status, "Status", -1)) != 0:
                raise RuntimeError(f"storing {f} in {rcv.name}: {status}")
    finally:
        assoc.release()


def move(rcv: Receiver, dest: str, study: str, out: Path, expected: int) -> float | str:
    """Seconds for one C-MOVE of ``study`` to ``dest`` (or why it failed)."""
    for p in out.iterdir():
        p.unlink()
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/movescu", "-S", "-aet", "BENCHSCU", "-aec", rcv.aet,
                        "-aem", dest, "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(rcv.port)],
                       capture_output=True, text=True, timeout=1800)
    dt = time.perf_counter() - t0
    got = sum(1 for _ in out.iterdir())
    if r.returncode or got != expected:
        return f"failed ({got}/{expected} received)"
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="instances per syntax")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "pacsinfra-bench")
    args = ap.parse_args()
    for tool in ("storescu", "storescp", "movescu", "dcmcjpeg", "dcmcjpls", "dcmcrle"):
        if not Path(f"/usr/bin/{tool}").exists():
            sys.exit(f"missing /usr/bin/{tool}: apt-get install -y dcmtk")
    if not shutil.which("Orthanc"):
        sys.exit("missing Orthanc: apt-get install -y orthanc")
    base = Path(tempfile.mkdtemp(prefix="bench-retrieve-", dir=args.data.mkdir(
        parents=True, exist_ok=True) or args.data))
    procs: list[subprocess.Popen[bytes]] = []
    receivers: list[Receiver] = []
    try:
        sets = make_sets(base / "sets", args.count)
        studies = {name: str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                   for name, files in sets.items()}
        plain, plain_port, plain_out = storescp(base, "PLAINDEST", accept_all=False)
        anything, any_port, any_out = storescp(base, "ANYDEST", accept_all=True)
        # DCMTK as installed: no TCP_NODELAY, so its responses wait for the sender's ACK
        stock, stock_port, stock_out = storescp(base, "STOCKDEST", accept_all=True,
                                                nodelay=False)
        procs += [plain, anything, stock]
        dests = {"PLAINDEST": plain_port, "ANYDEST": any_port, "STOCKDEST": stock_port}
        for start in (start_archive, start_orthanc):
            work = Path(tempfile.mkdtemp(dir=base, prefix="rcv-"))
            rcv = start(work, dests)
            receivers.append(rcv)
            for files in sets.values():
                store(rcv, files)
        rows = []
        for name, study in studies.items():
            for dest, out, label in (("PLAINDEST", plain_out, "decoded"),
                                     ("ANYDEST", any_out, "as stored"),
                                     ("STOCKDEST", stock_out, "as stored, stock storescp")):
                rates: list[float | str] = []
                for rcv in receivers:
                    best: float | str = "failed"
                    for _ in range(args.repeat):
                        dt = move(rcv, dest, study, out, args.count)
                        if isinstance(dt, str):
                            best = dt
                            break
                        best = dt if isinstance(best, str) else min(best, dt)
                    rates.append(args.count / best if isinstance(best, float) else best)
                ours, theirs = rates
                ratio = (f"x{ours / theirs:.2f}" if isinstance(ours, float)
                         and isinstance(theirs, float) else "-")
                rows.append([name, label, *(f"{r:.0f}" if isinstance(r, float) else r
                                            for r in rates), ratio])
                print(" | ".join(rows[-1]), flush=True)
        print()
        print(f"C-MOVE of {args.count} instances (512x512, 16 bits allocated), instances/s, "
              f"best of {args.repeat}:")
        print(table(["stored as", "sent", "pacsinfra", "Orthanc", "ratio"], rows))
    finally:
        for rcv in receivers:
            rcv.stop()
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
