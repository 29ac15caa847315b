"""The router reads the tags its rules name straight from the bytes (``header_values``);
whenever it does, the values must be exactly what the rules get from pydicom."""

from __future__ import annotations

import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import encode

from pacsinfra.pacs.archive.attrs import DatasetUnreadable, header_values, read_header
from pacsinfra.pacs.archive.synth import make_instance
from pacsinfra.pacs.router.rules import Subject

EXPLICIT, IMPLICIT, DEFLATED, BIG = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2",
                                     "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
# InstitutionName, StationName, BodyPartExamined: absent unless a case sets them
TAGS = frozenset(int(Tag(k)) for k in (
    "SOPInstanceUID", "StudyInstanceUID", "Modality", "ImageType", "InstanceNumber",
    "SliceThickness", "PatientName", "StudyDate", "InstitutionName", "StationName",
    "BodyPartExamined", "AccessionNumber", "StudyDescription", "WindowCenter"))
PRIVATE = int(Tag(0x0009, 0x1001))


def _dataset(**extra: object) -> Dataset:
    ds = make_instance(rows=8, cols=8, private=False)
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def _raw(ds: Dataset, ts: str) -> bytes:
    raw = encode(ds, ts == IMPLICIT, ts != BIG)
    assert raw is not None
    if ts == DEFLATED:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw = c.compress(raw) + c.flush()
    return raw


CASES = {
    "plain": {},
    "multi-valued": {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "WindowCenter": ["40", "400"]},
    "padded-numbers": {"InstanceNumber": "0012", "SliceThickness": "1.50"},
    "name-groups": {"PatientName": "Doe^Jane^^Dr=Doe^J"},
    "iso2022": {"SpecificCharacterSet": ["ISO 2022 IR 6", "ISO 2022 IR 87"],
                "PatientName": "Yamada^Tarou=山田^太郎"},
    "latin1": {"SpecificCharacterSet": "ISO_IR 100", "InstitutionName": "Hôpital Sainte-Thérèse"},
    "ascii-in-utf8": {"SpecificCharacterSet": "ISO_IR 192", "InstitutionName": "St Mary"},
    "leading-space": {"StationName": " CT1"},
    "empty": {"AccessionNumber": "", "StudyDescription": ""},
}


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT, DEFLATED, BIG])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_values_equal_pydicom(case: str, ts: str) -> None:
    ds = _dataset(**CASES[case])
    raw = _raw(ds, ts)
    fast = header_values(raw, ts, TAGS)
    reference = Subject(read_header(raw, ts))
    if fast is not None:
        assert fast == {t: reference.values(Tag(t)) for t in TAGS}
    if case in ("plain", "multi-valued", "padded-numbers", "name-groups", "ascii-in-utf8",
                "empty") and ts != BIG:
        assert fast is not None, "plain ASCII values should not need pydicom"
    if case in ("latin1", "iso2022", "leading-space") or ts == BIG:
        assert fast is None, "pydicom must decide"


def test_binary_and_private_tags_go_to_pydicom() -> None:
    ds = _dataset()
    ds.add_new(PRIVATE, "LO", "SITE-A")
    for ts in (EXPLICIT, IMPLICIT):
        raw = _raw(ds, ts)
        assert header_values(raw, ts, TAGS | {int(Tag("Rows"))}) is None  # US: binary
    # a private LO is plain text in explicit VR; implicit VR gives no VR for it
    assert header_values(_raw(ds, EXPLICIT), EXPLICIT, frozenset({PRIVATE})) == {
        PRIVATE: ["SITE-A"]}
    assert header_values(_raw(ds, IMPLICIT), IMPLICIT, frozenset({PRIVATE})) is None


def test_broken_structure_is_refused() -> None:
    raw = _raw(_dataset(), EXPLICIT)
    with pytest.raises(DatasetUnreadable):
        header_values(raw[:-3], EXPLICIT, TAGS)
