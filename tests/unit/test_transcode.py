"""Which syntax an instance goes to a peer in (pacsinfra.pacs.transcode), and the contexts
a C-MOVE proposes for it (pacsinfra.pacs.dicom.scu_contexts)."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pacsinfra.pacs.dicom import scu_contexts
from pacsinfra.pacs.transcode import Choice, Refusal, choose, decodable

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def test_as_stored_when_accepted() -> None:
    assert choose(JPEGBaseline8Bit, [ExplicitVRLittleEndian, JPEGBaseline8Bit]) == Choice(
        JPEGBaseline8Bit)
    assert choose(ImplicitVRLittleEndian, [ImplicitVRLittleEndian]) == Choice(
        ImplicitVRLittleEndian)


def test_uncompressed_converts_without_decoding() -> None:
    assert choose(ImplicitVRLittleEndian, [ExplicitVRLittleEndian]) == Choice(
        ExplicitVRLittleEndian)
    assert choose(DeflatedExplicitVRLittleEndian, [ImplicitVRLittleEndian]) == Choice(
        ImplicitVRLittleEndian)


@pytest.mark.parametrize("stored", [JPEGBaseline8Bit, RLELossless, JPEGLSLossless,
                                    JPEG2000Lossless])
def test_compressed_is_decoded_to_explicit_le(stored: str) -> None:
    assert choose(stored, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]) == Choice(
        ExplicitVRLittleEndian, decode=True)
    assert decodable(stored)


def test_refusals_say_why() -> None:
    with pytest.raises(Refusal, match="accepted nothing for this SOP class"):
        choose(JPEGBaseline8Bit, [])
    with pytest.raises(Refusal, match="JPEG 2000 .* not JPEG Baseline"):
        choose(JPEGBaseline8Bit, [JPEG2000Lossless])  # never re-encoded
    with pytest.raises(Refusal, match="no decoder"):
        choose(MPEG2MPML, [ExplicitVRLittleEndian])  # video is never decoded
    with pytest.raises(Refusal, match="little endian"):
        choose(ExplicitVRBigEndian, [ExplicitVRLittleEndian])


def test_contexts_offer_a_fallback_for_what_can_be_decoded() -> None:
    pairs = [(CT, JPEGBaseline8Bit), (CT, RLELossless), (MR, MPEG2MPML),
             (MR, DeflatedExplicitVRLittleEndian)]
    out = scu_contexts(pairs, decodable=decodable, verification=True)
    assert str(out[0].abstract_syntax) == "1.2.840.10008.1.1"  # Verification
    got = [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax]) for cx in out[1:]]
    assert got == [
        (CT, [JPEGBaseline8Bit]),
        (CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),  # one fallback per class
        (CT, [RLELossless]),
        (MR, [MPEG2MPML]),  # video: no fallback
        (MR, [DeflatedExplicitVRLittleEndian]),
        (MR, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    ]


def test_contexts_stop_at_128() -> None:
    pairs = [(f"1.2.3.{i}", JPEGBaseline8Bit) for i in range(100)]
    assert len(scu_contexts(pairs, decodable=decodable)) == 128
