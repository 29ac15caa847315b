"""Transcoding on retrieve: compressed instances reach peers that take only uncompressed ones.

The archive holds pydicom's bundled compressed test files (RLE, JPEG baseline, extended
and lossless, JPEG-LS lossless and near-lossless, JPEG 2000 lossless and lossy,
deflated), each under a fresh SOP Instance UID in one study. DCMTK's ``storescp``
without ``+xa`` (uncompressed syntaxes only) is the C-MOVE destination, DCMTK's
``getscu`` (uncompressed only) the C-GET requestor, dicomweb-client asking for Explicit
VR Little Endian the WADO-RS client. The pixels received equal a
reference decoder's: DCMTK's ``dcmdrle`` / ``dcmdjpeg`` / ``dcmdjpls``, the uncompressed
original a lossless file was made from, or Pillow's OpenJPEG for JPEG 2000 — exactly,
except 12-bit JPEG extended, where two IDCT implementations may differ by one.

A destination that takes none of a SOP class's syntaxes gets those sub-operations failed
(0xB000 with the counts and the failed UIDs, 0xA702 when all fail), never 0xA801 "Move
Destination Unknown"; a file that does not decode fails alone, with the reason in the
archive's log; an accept-all destination still gets the compressed bytes as stored.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from test_archive_support import Archive, dcmtk, scu_ae, wait_port

pytestmark = pytest.mark.integration
need_module("pynetdicom")
need_module("pylibjpeg")

import numpy as np  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from test_archive_dicom import send_files  # noqa: E402


@dataclass(frozen=True)
class Case:
    """A bundled file, and where the pixels it must decode to come from."""

    name: str
    reference: str  # "dcmdrle" | "dcmdjpeg" | "dcmdjpls" | "original:<file>" | "pillow"
    tolerance: int = 0


CASES = [
    Case("MR_small_RLE.dcm", "original:MR_small.dcm"),
    Case("MR_small_jpeg_ls_lossless.dcm", "original:MR_small.dcm"),
    Case("MR_small_jp2klossless.dcm", "original:MR_small.dcm"),
    Case("SC_rgb_rle_16bit_2frame.dcm", "dcmdrle"),
    Case("SC_rgb_jpeg_gdcm.dcm", "dcmdjpeg"),          # JPEG lossless, SV1
    Case("SC_rgb_jpeg_dcmtk.dcm", "dcmdjpeg"),         # JPEG baseline, YBR_FULL
    Case("JPGExtended.dcm", "dcmdjpeg", tolerance=1),  # JPEG extended, 12 bit
    Case("JPEGLSNearLossless_16.dcm", "dcmdjpls"),
    Case("JPEG2000.dcm", "pillow"),                    # JPEG 2000, lossy
    Case("image_dfl.dcm", "original:image_dfl.dcm"),   # deflated: inflated, pixels untouched
]
# pylibjpeg refuses this one (DCMTK decodes it): its sub-operation must fail alone
UNDECODABLE = "JPEG-lossy.dcm"
TOKEN = "transcode-test-token-0123456789"


def _reference(case: Case, tmp: Path) -> np.ndarray:
    src = get_testdata_file(case.name)
    if case.reference.startswith("original:"):
        return dcmread(get_testdata_file(case.reference.split(":", 1)[1])).pixel_array
    if case.reference == "pillow":
        ds = dcmread(src)
        ds.pixel_array_options(decoding_plugin="pillow")
        return ds.pixel_array
    out = tmp / f"{case.name}.{case.reference}.dcm"
    r = subprocess.run([dcmtk(case.reference), src, str(out)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return dcmread(out).pixel_array


@dataclass
class Study:
    """The stored study: SOP Instance UID -> case, per series."""

    study_uid: str
    series: str           # every decodable case
    broken_series: str    # the undecodable file alone
    cases: dict[str, Case]
    broken_uid: str
    stored_syntax: dict[str, str]


def _rewrite(name: str, dest: Path, study: str, series: str) -> tuple[str, Path, str]:
    """A bundled file under a new SOP Instance UID in ``study``/``series``; pixel data as is."""
    ds = dcmread(get_testdata_file(name))
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName = "TRANSCODE", "Codec^Test"
    path = dest / f"{uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return uid, path, str(ds.file_meta.TransferSyntaxUID)


class PickySCP:
    """A storage SCP that takes Verification and MR Image Storage (uncompressed) only."""

    def __init__(self) -> None:
        from pynetdicom import AE

        self.received: dict[str, str] = {}
        self.ae = AE(ae_title="PICKY")
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian,
                                                       ImplicitVRLittleEndian])
        self.port = free_port()

        def on_store(event: Any) -> int:
            self.received[str(event.request.AffectedSOPInstanceUID)] = str(
                event.context.transfer_syntax)
            return 0

        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self) -> None:
        self.server.shutdown()


def _storescp(out: Path, aet: str, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), *flags, "-aet", aet, "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc=proc)
    return proc, port


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The archive, its destinations (plain, accept-all, picky) and the stored study."""
    root = tmp_path_factory.mktemp("transcode")
    plain_out, any_out = root / "plain", root / "any"
    plain_out.mkdir()
    any_out.mkdir()
    plain, plain_port = _storescp(plain_out, "PLAINDEST")       # uncompressed only
    anything, any_port = _storescp(any_out, "ANYDEST", "+xa")   # every syntax
    picky = PickySCP()
    http = free_port()
    (root / "token").write_text(TOKEN)
    arch = Archive(root / "data", config={
        "peers": {aet: {"ae_title": aet, "host": "127.0.0.1", "port": p} for aet, p in (
            ("PLAINDEST", plain_port), ("ANYDEST", any_port), ("PICKY", picky.port))},
        "dicomweb": {"enabled": True, "bind": "127.0.0.1", "port": http,
                     "token": {"file": str(root / "token")}},
    }).start()
    wait_port(http, proc=arch.proc)
    try:
        files = root / "files"
        files.mkdir()
        study = Study(generate_uid(), generate_uid(), generate_uid(), {}, "", {})
        paths = []
        for case in CASES:
            uid, path, ts = _rewrite(case.name, files, study.study_uid, study.series)
            study.cases[uid], study.stored_syntax[uid] = case, ts
            paths.append(path)
        study.broken_uid, path, ts = _rewrite(UNDECODABLE, files, study.study_uid,
                                              study.broken_series)
        study.stored_syntax[study.broken_uid] = ts
        paths.append(path)
        assert send_files(arch.port, paths) == [0] * len(paths)
        yield {"archive": arch, "study": study, "plain": plain_out, "any": any_out,
               "picky": picky, "root": root, "http": f"http://127.0.0.1:{http}"}
    finally:
        assert arch.stop() == 0, arch.logs()
        picky.stop()
        for proc in (plain, anything):
            proc.terminate()
            proc.wait()


def _move(port: int, dest: str, **keys: str) -> Dataset:
    """C-MOVE; the final response."""
    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES" if "SeriesInstanceUID" in keys else "STUDY"
    for k, v in keys.items():
        setattr(ident, k, v)
    try:
        responses = list(assoc.send_c_move(ident, dest,
                                           StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    final, identifier = responses[-1]
    failed = identifier.get("FailedSOPInstanceUIDList", []) if identifier is not None else []
    final.failed_list = [failed] if isinstance(failed, str) else list(failed)
    return final


def _received(out: Path) -> dict[str, Dataset]:
    found = {}
    for p in out.iterdir():
        ds = dcmread(p)
        found[str(ds.SOPInstanceUID)] = ds
    return found


def _check_pixels(got: dict[str, Dataset], study: Study, tmp: Path) -> None:
    for uid, case in study.cases.items():
        ds = got[uid]
        assert not UID(str(ds.file_meta.TransferSyntaxUID)).is_compressed, case.name
        ref = _reference(case, tmp)
        arr = ds.pixel_array
        assert arr.shape == ref.shape, case.name
        diff = int(np.abs(arr.astype(np.int64) - ref.astype(np.int64)).max())
        assert diff <= case.tolerance, f"{case.name}: differs from {case.reference} by {diff}"
        src = dcmread(get_testdata_file(case.name))
        # a decoded lossy image still says it was lossy-compressed (PS3.3 C.7.6.1.1.5)
        assert ds.get("LossyImageCompression") == src.get("LossyImageCompression"), case.name


def test_move_to_an_uncompressed_only_destination_decodes(lab: dict[str, Any],
                                                          tmp_path: Path) -> None:
    study: Study = lab["study"]
    final = _move(lab["archive"].port, "PLAINDEST", StudyInstanceUID=study.study_uid,
                  SeriesInstanceUID=study.series)
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == len(CASES)
    got = _received(lab["plain"])
    assert set(got) == set(study.cases)
    _check_pixels(got, study, tmp_path)


def test_undecodable_instance_fails_alone_with_the_reason(lab: dict[str, Any]) -> None:
    study: Study = lab["study"]
    final = _move(lab["archive"].port, "PLAINDEST", StudyInstanceUID=study.study_uid)
    # the whole study: every decodable instance completes, the broken one fails
    assert final.Status == 0xB000, final
    assert final.NumberOfCompletedSuboperations == len(CASES)
    assert final.NumberOfFailedSuboperations == 1
    assert final.failed_list == [study.broken_uid]
    final = _move(lab["archive"].port, "PLAINDEST", StudyInstanceUID=study.study_uid,
                  SeriesInstanceUID=study.broken_series)
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1, final
    log = lab["archive"].logs()
    assert f"retrieve {study.broken_uid} to PLAINDEST" in log and "does not decode" in log, log


def test_a_destination_that_takes_some_classes_gets_counts_not_unknown(
        lab: dict[str, Any]) -> None:
    study: Study = lab["study"]
    picky: PickySCP = lab["picky"]
    mr = {u for u, c in study.cases.items() if c.name.startswith("MR_small")}
    others = set(study.cases) - mr
    final = _move(lab["archive"].port, "PICKY", StudyInstanceUID=study.study_uid,
                  SeriesInstanceUID=study.series)
    assert final.Status == 0xB000, final  # not 0xA801: PICKY is known and running
    assert final.NumberOfCompletedSuboperations == len(mr)
    assert final.NumberOfFailedSuboperations == len(others)
    assert set(final.failed_list) == others
    assert set(picky.received) == mr
    assert set(picky.received.values()) <= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    # nothing it takes: every sub-operation fails, the association still succeeds
    final = _move(lab["archive"].port, "PICKY", StudyInstanceUID=study.study_uid,
                  SeriesInstanceUID=study.broken_series)
    assert final.Status == 0xA702, final
    assert "the peer accepted nothing for this SOP class" in lab["archive"].logs()


def test_accept_all_destination_gets_the_stored_bytes(lab: dict[str, Any]) -> None:
    study: Study = lab["study"]
    final = _move(lab["archive"].port, "ANYDEST", StudyInstanceUID=study.study_uid)
    assert final.Status == 0x0000, final
    got = _received(lab["any"])
    for uid, ts in study.stored_syntax.items():
        if UID(ts).is_deflated:
            continue  # DCMTK's storescp inflates what it writes
        assert str(got[uid].file_meta.TransferSyntaxUID) == ts, uid
        sent = dcmread(lab["root"] / "files" / f"{uid}.dcm")
        assert got[uid].PixelData == sent.PixelData, uid  # not decoded, not re-encoded


def test_getscu_without_compressed_syntaxes_gets_decoded_instances(
        lab: dict[str, Any], tmp_path: Path) -> None:
    study: Study = lab["study"]
    out = tmp_path / "get"
    out.mkdir()
    r = subprocess.run([dcmtk("getscu"), "-S", "-aec", "ARCHIVE", "-od", str(out),
                        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study.study_uid}",
                        "-k", f"SeriesInstanceUID={study.series}",
                        "127.0.0.1", str(lab["archive"].port)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    got = _received(out)
    assert set(got) == set(study.cases)
    _check_pixels(got, study, tmp_path)


def test_moves_in_parallel_are_each_complete(lab: dict[str, Any]) -> None:
    """Two moves at once each decode on their own association (no shared state)."""
    study: Study = lab["study"]
    finals: list[Dataset] = []
    threads = [threading.Thread(target=lambda: finals.append(_move(
        lab["archive"].port, "PLAINDEST", StudyInstanceUID=study.study_uid,
        SeriesInstanceUID=study.series))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [f.Status for f in finals] == [0, 0]
    assert all(f.NumberOfCompletedSuboperations == len(CASES) for f in finals)


def test_wado_rs_decodes_when_asked_for_explicit_le(lab: dict[str, Any], tmp_path: Path) -> None:
    need_module("dicomweb_client")
    from dicomweb_client.api import DICOMwebClient

    study: Study = lab["study"]
    client = DICOMwebClient(url=lab["http"], headers={"Authorization": f"Bearer {TOKEN}"})
    got = client.retrieve_series(study.study_uid, study.series,
                                 media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert all(d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian for d in got)
    _check_pixels({str(d.SOPInstanceUID): d for d in got}, study, tmp_path)
    # "*": as stored, byte for byte
    stored = client.retrieve_series(study.study_uid, study.series,
                                    media_types=(("application/dicom", "*"),))
    assert {str(d.SOPInstanceUID): str(d.file_meta.TransferSyntaxUID) for d in stored} == {
        u: ts for u, ts in study.stored_syntax.items() if u in study.cases}
    # another compressed syntax is never made: 406 with what to ask for
    import requests

    r = requests.get(f"{lab['http']}/studies/{study.study_uid}/series/{study.series}",
                     headers={"Authorization": f"Bearer {TOKEN}", "Accept":
                              'multipart/related; type="application/dicom"; '
                              "transfer-syntax=1.2.840.10008.1.2.4.50"}, timeout=30)
    assert r.status_code == 406, r.text[:300]
    assert "transfer-syntax=*" in r.json()["error"]
