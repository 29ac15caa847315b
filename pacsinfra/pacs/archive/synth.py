"""Synthetic DICOM instances for tests, benchmarks and smoke checks (no codec needed).

Compressed transfer syntaxes get encapsulated fake fragments: the archive never
decodes pixel data, so the bytes only have to be well-formed encapsulation.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
_UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                 "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}


def make_instance(
    *,
    patient_id: str = "SYNTH1",
    patient_name: str = "Doe^John",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class: str = CT_IMAGE,
    modality: str = "CT",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "ACC1",
    rows: int = 8,
    cols: int = 8,
    transfer_syntax: str = ExplicitVRLittleEndian,
    instance_number: int = 1,
    series_number: int = 1,
    private: bool = True,
    random_pixels: bool = False,
) -> Dataset:
    """A small valid instance (pixel data raw or encapsulated per ``transfer_syntax``)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.SeriesDate = study_date
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.StudyDescription = "Synthetic study"
    ds.SeriesDescription = f"Series {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if private:
        block = ds.private_block(0x0041, "PACSINFRA TEST", create=True)
        block.add_new(0x01, "LO", "kept as received")
        block.add_new(0x02, "OB", b"\x01\x02\x03\x04")
    nbytes = rows * cols * 2
    pixels = os.urandom(nbytes) if random_pixels else bytes(range(256)) * (nbytes // 256) + bytes(
        nbytes % 256)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if transfer_syntax in _UNCOMPRESSED:
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
    else:
        # Two fake fragments of one frame: encapsulation only, never decoded.
        half = max(2, (len(pixels) // 4) * 2)
        ds.PixelData = encapsulate([pixels[:half] + pixels[half:]])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Save ``ds`` as a DICOM file (its own transfer syntax)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
