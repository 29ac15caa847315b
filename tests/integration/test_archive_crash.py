"""Crash safety: kill -9 the archive in the middle of a 2,000-instance ingest.

Every instance the archive answered Success must be retrievable and intact after a
restart, and nothing half-written may be indexed.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module
from test_archive_support import Archive, scu_ae

pytestmark = [pytest.mark.integration, pytest.mark.slow]

need_module("pynetdicom")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filereader import read_file_meta_info  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import _config as pnd_config  # noqa: E402
from pynetdicom import build_role, evt  # noqa: E402
from pynetdicom.sop_class import CTImageStorage, Verification  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402
from pacsinfra.pacs.dicom import TCP_TUNING_HANDLER  # noqa: E402

pnd_config.STORE_SEND_CHUNKED_DATASET = True
TOTAL = 2000
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Q/R GET
SENDERS = 2


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    glen = int.from_bytes(data[140:144], "little")
    return data[144 + glen:]


def _sender(port: int, files: list[Path], acked: dict[str, bool], lock: threading.Lock,
            aet: str) -> None:
    ae = scu_ae(aet)
    # After the kill a pynetdicom client may sit on a dead association until its DIMSE
    # timeout: keep that short so the test does not idle.
    ae.dimse_timeout = 5
    ae.network_timeout = 5
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE",
                         evt_handlers=[TCP_TUNING_HANDLER])
    if not assoc.is_established:
        return
    try:
        for f in files:
            try:
                st = assoc.send_c_store(f)
            except (RuntimeError, ValueError, OSError):
                return
            if not assoc.is_established:
                return
            ok = "Status" in st and st.Status == 0
            with lock:
                acked[read_file_meta_info(f).MediaStorageSOPInstanceUID] = ok
    finally:
        if assoc.is_established:
            assoc.release()


def test_kill9_during_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    study = generate_uid()
    series = [generate_uid() for _ in range(10)]
    files = [write(make_instance(study_uid=study, patient_id="CRASH", instance_number=i,
                                 series_uid=series[i % 10], rows=16, cols=16),
                   src / f"{i}.dcm") for i in range(TOTAL)]
    by_sop = {read_file_meta_info(f).MediaStorageSOPInstanceUID: f for f in files}
    data = tmp_path / "data"
    arch = Archive(data).start()
    acked: dict[str, bool] = {}
    lock = threading.Lock()
    chunks = [files[i::SENDERS] for i in range(SENDERS)]
    threads = [threading.Thread(target=_sender, args=(arch.port, c, acked, lock, f"CRASH{i}"))
               for i, c in enumerate(chunks)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with lock:
            n = sum(acked.values())
        if n >= TOTAL // 3:
            break
        time.sleep(0.01)
    arch.kill9()  # mid-ingest: stores are in flight on both associations
    for t in threads:
        t.join(timeout=60)
    ok = {sop for sop, good in acked.items() if good}
    assert TOTAL // 3 <= len(ok) < TOTAL, f"kill did not land mid-ingest ({len(ok)} acked)"

    # Restart: the archive must come back and serve what it acknowledged.
    arch2 = Archive(data)
    arch2.port = arch.port
    arch2.start()
    try:
        con = sqlite3.connect(data / "index.sqlite")
        rows = con.execute("SELECT sop_uid, tier, rel_path, sha256, ds_offset FROM instance"
                           ).fetchall()
        counts = con.execute("SELECT num_instances FROM study WHERE study_uid=?", (study,)
                             ).fetchall()
        con.close()
        indexed = {r[0]: r for r in rows}
        missing = ok - set(indexed)
        assert not missing, f"{len(missing)} acknowledged instances lost"
        # Everything indexed is whole: file present, checksum right, same bytes as sent.
        for sop, tier, rel, sha, off in rows:
            stored = data / tier / rel
            raw = stored.read_bytes()
            assert hashlib.sha256(raw[off:]).hexdigest() == sha, sop
            assert _dataset_bytes(stored) == _dataset_bytes(by_sop[sop]), sop
        assert counts == [(len(indexed),)]  # the aggregate agrees with the rows
        assert not list((data / "fast" / ".incoming").iterdir())  # leftovers swept
        # Retrievable through the protocol too: C-GET a sample of acknowledged instances
        # (list-of-UID matching), and the archive still answers after the crash.
        sample = sorted(ok)[:: max(1, len(ok) // 25)]
        got: list[bytes] = []

        def on_store(event: Any) -> int:
            got.append(event.encoded_dataset(include_meta=False))
            return 0

        ae = scu_ae()
        ae.add_requested_context(Verification)
        ae.add_requested_context(GET_MODEL)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", arch2.port, ae_title="ARCHIVE",
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        ident.StudyInstanceUID = study
        ident.SOPInstanceUID = "\\".join(sample)
        finals = list(assoc.send_c_get(ident, GET_MODEL))
        assoc.release()
        assert finals[-1][0].Status == 0
        assert sorted(got) == sorted(_dataset_bytes(by_sop[sop]) for sop in sample)
    finally:
        assert arch2.stop() == 0
