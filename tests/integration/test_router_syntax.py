"""Transfer syntax fallback: the file's own syntax first, then uncompressed, never a silent loss."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from test_router_support import Router, StatusSCP, instance, wait_for

pytestmark = [pytest.mark.integration]


def test_fallback_to_what_the_destination_accepts(tmp_path: Path) -> None:
    from pacsinfra.pacs.archive.synth import make_instance

    implicit_only = StatusSCP(0, "IMPLICIT", syntaxes=[ImplicitVRLittleEndian])
    anything = StatusSCP(0, "ANY")
    router = Router(tmp_path / "router", {
        "destinations": {"implicit": {**implicit_only.dest(), "transcode": False},
                         "any": anything.dest()},
        "rules": [{"name": "all", "forward": ["implicit", "any"]}],
        "retry": {"max_attempts": 2, "initial_backoff": 0.1},
    })
    router.start()
    try:
        plain = instance(modality="CT")
        jpeg = make_instance(transfer_syntax=JPEGBaseline8Bit)
        from pynetdicom import AE

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(plain.SOPClassUID, [ExplicitVRLittleEndian])
        ae.add_requested_context(jpeg.SOPClassUID, [JPEGBaseline8Bit])
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
        assert assoc.is_established
        assert assoc.send_c_store(plain).Status == 0
        assert assoc.send_c_store(jpeg).Status == 0
        assoc.release()
        p, j = str(plain.SOPInstanceUID), str(jpeg.SOPInstanceUID)
        wait_for(lambda: len(anything.received) == 2 and router.states().get("dead") == 1,
                 30, "deliveries and one dead letter")
        # the uncompressed file was converted to the only syntax the destination takes
        assert implicit_only.syntax_of == {p: ImplicitVRLittleEndian}
        # compressed data goes out as received where it is accepted
        assert anything.syntax_of == {p: ExplicitVRLittleEndian, j: JPEGBaseline8Bit}
        # ... and is never decompressed for a destination with transcode: false
        with router.db() as c:
            dest, err = c.execute("SELECT dest, last_error FROM items WHERE state = 'dead'"
                                  ).fetchone()
        assert dest == "implicit" and "transcoding is not enabled" in err
    finally:
        router.stop()
        implicit_only.stop()
        anything.stop()


def test_router_accepts_the_senders_first_choice(tmp_path: Path) -> None:
    """A sender offering [Explicit LE, JPEG baseline] for an uncompressed file gets Explicit LE."""
    dest = StatusSCP(0, "ANY")
    router = Router(tmp_path / "router", {
        "destinations": {"any": dest.dest()},
        "rules": [{"name": "all", "forward": ["any"]}],
    })
    router.start()
    try:
        plain = instance(modality="CT")
        from pynetdicom import AE

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(plain.SOPClassUID, [ExplicitVRLittleEndian, JPEGBaseline8Bit])
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
        assert assoc.is_established
        accepted = [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts]
        assoc.release()
        assert accepted == [ExplicitVRLittleEndian]
    finally:
        router.stop()
        dest.stop()


def test_a_refused_context_is_recorded_as_what_happened(tmp_path: Path) -> None:
    """A destination that takes no MR at all refuses the context at association: the row is
    dead-lettered with that reason and no DIMSE status (the destination sent none)."""
    from test_router_support import CT

    ct_only = StatusSCP(0, "CTONLY", sop_classes=[CT])
    router = Router(tmp_path / "router", {
        "destinations": {"ct_only": ct_only.dest()},
        "rules": [{"name": "all", "forward": ["ct_only"]}],
        "retry": {"max_attempts": 2, "initial_backoff": 0.1},
    })
    router.start()
    try:
        from test_router_support import send

        mr, ct = instance(modality="MR"), instance(modality="CT")
        assert set(send(router.port, [mr, ct]).values()) == {0}
        wait_for(lambda: len(ct_only.received) == 1 and router.states().get("dead") == 1,
                 30, "the CT delivered and the MR dead-lettered")
        with router.db() as c:
            status, err = c.execute("SELECT last_status, last_error FROM items "
                                    "WHERE state = 'dead'").fetchone()
        assert status is None, status
        assert "CTONLY rejected the presentation context for SOP class" in err, err
        assert "nothing was sent" in err and str(mr.SOPClassUID) in err, err
        listing = router.cli("queue", "list", "--state", "dead").stdout
        assert "status=0x0122" not in listing and "rejected the presentation context" in listing
    finally:
        router.stop()
        ct_only.stop()


def test_a_compressed_file_is_decoded_for_a_destination_that_takes_none(tmp_path: Path) -> None:
    """By default (``transcode: true``) a JPEG goes to an implicit-only destination decoded,
    its pixels as DCMTK's dcmdjpeg decodes them; one whose pixel data does not decode is
    dead-lettered saying so."""
    import subprocess

    import numpy as np
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from test_archive_support import dcmtk

    from pacsinfra.pacs.archive.synth import make_instance

    src = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    real = dcmread(src)
    real.SOPInstanceUID = real.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    bogus = make_instance(transfer_syntax=JPEGBaseline8Bit, sop_class=str(real.SOPClassUID))
    implicit_only = StatusSCP(0, "IMPLICIT", syntaxes=[ImplicitVRLittleEndian])
    router = Router(tmp_path / "router", {
        "destinations": {"implicit": implicit_only.dest()},
        "rules": [{"name": "all", "forward": ["implicit"]}],
        "retry": {"max_attempts": 2, "initial_backoff": 0.1},
    })
    router.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(real.SOPClassUID, [JPEGBaseline8Bit])
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
        assert assoc.is_established
        assert assoc.send_c_store(real).Status == 0
        assert assoc.send_c_store(bogus).Status == 0
        assoc.release()
        wait_for(lambda: len(implicit_only.received) == 1 and router.states().get("dead") == 1,
                 30, "the JPEG delivered decoded and the fake one dead-lettered")
        uid = str(real.SOPInstanceUID)
        assert implicit_only.syntax_of == {uid: ImplicitVRLittleEndian}
        ref_file = tmp_path / "dcmdjpeg.dcm"
        subprocess.run([dcmtk("dcmdjpeg"), src, str(ref_file)], check=True, timeout=60)
        got = implicit_only.datasets[uid]
        got.file_meta = dcmread(ref_file).file_meta  # pynetdicom hands over the data set only
        got.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        assert np.array_equal(got.pixel_array, dcmread(ref_file).pixel_array)
        assert got.LossyImageCompression == "01"  # still says what it went through
        with router.db() as c:
            err = c.execute("SELECT last_error FROM items WHERE state = 'dead'").fetchone()[0]
        assert "cannot decompress" in err, err
    finally:
        router.stop()
        implicit_only.stop()
