"""``read_meta``: the file meta a Part 10 file is sent with, without pydicom; same answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import JPEGBaseline8Bit

from pacsinfra.pacs.archive.synth import make_instance, write
from pacsinfra.pacs.fastscp.part10 import PREAMBLE, file_meta, read_meta


def _expect(path: Path) -> tuple[str, str, str]:
    m = read_file_meta_info(path)
    return (str(m.MediaStorageSOPClassUID), str(m.MediaStorageSOPInstanceUID),
            str(m.TransferSyntaxUID))


def test_same_as_pydicom_for_pydicom_and_fastscp_files(tmp_path: Path) -> None:
    ds = make_instance(rows=16, cols=16)
    written = write(ds, tmp_path / "pydicom.dcm")  # pydicom's own writer
    meta = read_meta(written)
    assert (meta.sop_class, meta.sop_uid, meta.transfer_syntax) == _expect(written)
    raw = written.read_bytes()
    assert raw[meta.dataset_offset:meta.dataset_offset + 4] == b"\x08\x00\x05\x00"  # (0008,0005)

    # the streaming SCP's file meta, odd-length UIDs padded with NUL
    body = b"\x08\x00\x18\x00UI\x04\x001.23"
    streamed = tmp_path / "streamed.dcm"
    streamed.write_bytes(PREAMBLE + file_meta("1.2.3", "1.2.345", JPEGBaseline8Bit) + body)
    meta = read_meta(streamed)
    assert (meta.sop_class, meta.sop_uid, meta.transfer_syntax) == _expect(streamed)
    assert streamed.read_bytes()[meta.dataset_offset:] == body


@pytest.mark.parametrize("damage", ["not-dicom", "no-group-length", "truncated", "no-ts"])
def test_malformed_meta_is_a_value_error(tmp_path: Path, damage: str) -> None:
    good = PREAMBLE + file_meta("1.2.3", "1.2.345", JPEGBaseline8Bit)
    data = {
        "not-dicom": b"\x00" * 200,
        "no-group-length": PREAMBLE + good[132 + 12:],
        "truncated": good[:-10],
        # group length says the group ends before (0002,0010)
        "no-ts": good[:140] + (int.from_bytes(good[140:144], "little") - 30).to_bytes(
            4, "little") + good[144:],
    }[damage]
    path = tmp_path / "bad.dcm"
    path.write_bytes(data)
    with pytest.raises(ValueError):
        read_meta(path)
