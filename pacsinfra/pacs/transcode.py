"""Which transfer syntax a stored instance goes to a peer in, and the instance decoded for it.

Used wherever the archive or the router sends an instance over DICOM (C-MOVE, C-GET,
router destinations). The rule, in order:

1. the stored syntax, when the peer accepted it for the SOP class: the fast path, the
   instance goes out as stored;
2. an uncompressed stored instance (Explicit/Implicit VR Little Endian, Deflated)
   converts to an accepted uncompressed syntax without touching its pixel data
   (pynetdicom re-encodes the data set);
3. a compressed one is *decoded* (pydicom's pixel handlers: pylibjpeg for JPEG
   baseline/extended/lossless and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, pydicom's
   own RLE decoder) to Explicit VR Little Endian, when the peer accepted an uncompressed
   syntax for the SOP class and a decoder is installed.

Nothing is ever re-encoded into a lossy syntax: decoding a lossy instance keeps its
(0028,2110) Lossy Image Compression "01" and its ratio and method, as PS3.3 C.7.6.1.1.5
requires of a derived uncompressed copy. A :class:`Refusal` says why an instance cannot
go to a peer, in words for the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: what a decoded instance is sent in, in order of preference
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)


class Refusal(Exception):
    """An instance cannot be sent to a peer in any syntax it accepted (the reason is the text)."""


def syntax_name(uid: str) -> str:
    """A transfer syntax's name ("JPEG Baseline (Process 1)"), or its UID when unknown."""
    name = UID(uid).name
    return name if name and name != uid else uid


def decodable(syntax: str) -> bool:
    """Whether pixel data stored in ``syntax`` can be decoded here (numpy and a codec installed).

    Uncompressed syntaxes need no codec; video syntaxes are never decoded."""
    uid = UID(syntax)
    if not uid.is_compressed:
        return True
    try:
        import numpy  # noqa: F401
        from pydicom.pixels import get_decoder
    except ImportError:
        return False
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


@dataclass(frozen=True)
class Choice:
    """How one instance goes out: in ``syntax``, decoded first when ``decode``."""

    syntax: str
    decode: bool = False


def choose(stored: str, accepted: Iterable[str]) -> Choice:
    """The syntax to send an instance stored in ``stored`` in, given the syntaxes the peer
    accepted for its SOP class. Raises :class:`Refusal` naming what was accepted."""
    taken = list(dict.fromkeys(str(ts) for ts in accepted))
    if stored in taken:
        return Choice(stored)
    uid = UID(stored)
    native = [ts for ts in taken if not UID(ts).is_compressed and UID(ts).is_little_endian]
    if not native:
        offered = ", ".join(syntax_name(ts) for ts in taken) or "nothing"
        raise Refusal(f"the peer accepted {offered} for this SOP class, not "
                      f"{syntax_name(stored)} nor an uncompressed syntax")
    if not uid.is_compressed:
        if not uid.is_little_endian:
            raise Refusal(f"{syntax_name(stored)} is not converted to little endian here")
        return Choice(next((ts for ts in UNCOMPRESSED if ts in native), native[0]))
    if not decodable(stored):
        raise Refusal(f"the peer does not accept {syntax_name(stored)} and no decoder for it "
                      "is installed here")
    return Choice(EXPLICIT_LE, decode=True)


def prepare(ds: Any, choice: Choice) -> Any:
    """``ds`` ready to send as ``choice`` says: decoded in place when it must be.

    Raises :class:`Refusal` when the pixel data does not decode (corrupt, or a codec
    error)."""
    if not choice.decode:
        return ds
    stored = str(ds.file_meta.TransferSyntaxUID)
    try:
        # as_rgb: YBR_FULL_422 JPEG comes out as RGB, as DCMTK's dcmdjpeg writes it. The
        # same instance in another encoding keeps its UID (as dcmdjpeg does): a new one
        # would make the peer hold the image twice after a second retrieve.
        ds.decompress(as_rgb=True, generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001 - codecs raise many types on corrupt data
        raise Refusal(f"{syntax_name(stored)} pixel data does not decode: "
                      f"{type(exc).__name__}: {exc}") from None
    return ds


def accepted_by_class(contexts: Iterable[Any], *, as_scu: bool = True) -> dict[str, list[str]]:
    """SOP class -> transfer syntaxes, from an association's accepted presentation contexts.

    ``as_scu``: only the contexts on which this side may send C-STOREs (for C-GET the
    requestor takes the SCP role of the storage contexts it proposed)."""
    out: dict[str, list[str]] = {}
    for cx in contexts:
        if as_scu and getattr(cx, "as_scu", True) is False:
            continue
        out.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    return out


def choices(pairs: Iterable[tuple[str, str]],
            accepted: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], Choice | Refusal]:
    """For each distinct (SOP class, stored syntax): its :class:`Choice`, or the refusal."""
    out: dict[tuple[str, str], Choice | Refusal] = {}
    for sop, ts in pairs:
        if (sop, ts) not in out:
            try:
                out[(sop, ts)] = choose(ts, accepted.get(sop, ()))
            except Refusal as exc:
                out[(sop, ts)] = exc
    return out


__all__ = ["EXPLICIT_LE", "IMPLICIT_LE", "UNCOMPRESSED", "Choice", "Refusal",
           "accepted_by_class", "choices", "choose", "decodable", "prepare", "syntax_name"]
