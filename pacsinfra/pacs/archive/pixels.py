"""Pixel data for viewers: which media type a transfer syntax is sent as, and one frame
decoded to numbers (pydicom's pixel handlers: pylibjpeg, Pillow, numpy's RLE).

A frame is decoded alone: the frame's bytes (native or one encapsulated frame) are put
into a small dataset holding only the Image Pixel module, so a large multi-frame
instance is never decoded, or read, whole to answer for one frame. numpy and the
codecs are imported when a frame is first decoded; without them frames are still
served as stored, and a request that needs decoding is refused (406/415), never
answered with bytes labelled as something they are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from pacsinfra.pacs.transcode import decodable

if TYPE_CHECKING:
    import numpy as np

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
#: native syntaxes whose pixel bytes are little endian (the pixel data is never deflated
#: on its own: a deflated dataset inflates to Explicit VR Little Endian)
LITTLE_ENDIAN_NATIVE = frozenset((EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE))
OCTET_STREAM = "application/octet-stream"

# PS3.18 Table 8.7.3-5 (and -4): the media type of pixel data in each transfer syntax
_MEDIA: dict[str, str] = {
    **{f"1.2.840.10008.1.2.4.{n}": "image/jpeg" for n in (50, 51, 57, 70)},
    **{f"1.2.840.10008.1.2.4.{n}": "image/jls" for n in (80, 81)},
    **{f"1.2.840.10008.1.2.4.{n}": "image/jp2" for n in (90, 91)},
    **{f"1.2.840.10008.1.2.4.{n}": "image/jpx" for n in (92, 93)},
    **{f"1.2.840.10008.1.2.4.{n}": "image/jphc" for n in (201, 202, 203)},
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    **{f"1.2.840.10008.1.2.4.{n}": "video/mpeg" for n in (100, 101)},
    **{f"1.2.840.10008.1.2.4.{n}": "video/mp4" for n in (102, 103, 104, 105, 106)},
    **{f"1.2.840.10008.1.2.4.{n}": "video/H265" for n in (107, 108)},
}
#: the transfer syntax meant by a media type asked for without one (PS3.18 8.7.3.5)
DEFAULT_SYNTAX: dict[str, str] = {
    OCTET_STREAM: EXPLICIT_LE,
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "video/mpeg": "1.2.840.10008.1.2.4.100",
    "video/mp4": "1.2.840.10008.1.2.4.102",
    "video/H265": "1.2.840.10008.1.2.4.107",
}
VIDEO_MEDIA = frozenset(("video/mpeg", "video/mp4", "video/H265"))
# The Image Pixel module (and what decoding it reads), copied into a one-frame dataset
_PIXEL_MODULE = ("SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
                 "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                 "PixelRepresentation", "RedPaletteColorLookupTableDescriptor",
                 "GreenPaletteColorLookupTableDescriptor",
                 "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
                 "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
                 # for display (rendering), not decoding
                 "WindowCenter", "WindowWidth", "VOILUTFunction", "RescaleSlope",
                 "RescaleIntercept")
# where an enhanced multi-frame image keeps the display attributes of all its frames
_SHARED_GROUPS = {"FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
                  "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept")}


def media_type(syntax: str) -> str:
    """The media type frames of ``syntax`` are sent as (octet-stream when native)."""
    return _MEDIA.get(syntax, OCTET_STREAM)


def is_native(syntax: str) -> bool:
    """Whether pixel data in ``syntax`` is uncompressed (native)."""
    return syntax not in _MEDIA


class DecodeError(Exception):
    """A frame cannot be decoded here (no codec for its syntax, or corrupt data)."""


def can_decode(syntax: str) -> bool:
    """Whether a frame stored in ``syntax`` can be decoded here (a codec is installed)."""
    if syntax in VIDEO_MEDIA or media_type(syntax) in VIDEO_MEDIA:
        return False
    try:
        import numpy  # noqa: F401 - even native frames become arrays
    except ImportError:
        return False
    return decodable(syntax)


@dataclass(frozen=True)
class PixelModule:
    """The attributes needed to decode and display one frame of an instance."""

    header: Dataset  # the Image Pixel module (and palettes), nothing else
    syntax: str
    frames: int

    @classmethod
    def of(cls, ds: Dataset, syntax: str) -> PixelModule:
        """The pixel module of ``ds`` (stored in ``syntax``)."""
        header = Dataset()
        for keyword in _PIXEL_MODULE:
            if keyword in ds:
                setattr(header, keyword, ds.data_element(keyword).value)  # type: ignore[union-attr]
        shared = ds.get("SharedFunctionalGroupsSequence")
        for group, keywords in _SHARED_GROUPS.items():
            try:
                item: Dataset | None = shared[0].get(group)[0] if shared else None
            except (IndexError, TypeError):
                item = None
            if item is None:
                continue
            for keyword in keywords:
                elem = item.data_element(keyword) if keyword in item else None
                if elem is not None and keyword not in header:
                    setattr(header, keyword, elem.value)
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            frames = 1
        return cls(header, syntax, max(frames, 1))


def decode(module: PixelModule, frame: bytes) -> np.ndarray:
    """One frame as an array: (rows, columns) or (rows, columns, samples); colour is RGB
    (YCbCr converted as pydicom does). Raises :class:`DecodeError`."""
    if not can_decode(module.syntax):
        raise DecodeError(f"no decoder for transfer syntax {module.syntax} here")
    from pydicom.encaps import encapsulate

    ds = Dataset()
    ds.update(module.header)
    ds.NumberOfFrames = 1
    ds.file_meta = FileMetaDataset()
    syntax = EXPLICIT_LE if module.syntax in (IMPLICIT_LE, DEFLATED_LE) else module.syntax
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = frame if is_native(syntax) else encapsulate([frame])
    ds["PixelData"].VR = "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
    try:
        arr: Any = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - codecs raise many types on corrupt data
        raise DecodeError(f"the frame does not decode: {type(exc).__name__}: {exc}") from None
    return arr  # type: ignore[no-any-return]


def native_bytes(arr: np.ndarray) -> bytes:
    """A decoded frame as native pixel bytes: little endian, colour interleaved."""
    return bytes(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


__all__ = ["DEFAULT_SYNTAX", "EXPLICIT_LE", "OCTET_STREAM", "DecodeError", "PixelModule",
           "can_decode", "decode", "is_native", "media_type", "native_bytes"]
