"""WADO-RS bulk data (PS3.18 8.7.3.x): one element's value, streamed from disk.

``application/octet-stream`` (the default) is the value as stored. An Encapsulated
Document (0042,0011) is also available as its own media type (MIME Type of
Encapsulated Document, e.g. ``application/pdf``, without the padding byte), and the
Pixel Data of a video (MPEG-2, MPEG-4, HEVC transfer syntaxes) as its video media type
(``video/mp4`` ...: the fragments joined, the playable stream). Each is answered as
multipart/related or, when the Accept entry that matched is a plain media type, as a
single part (what a browser's ``<video>`` or PDF viewer needs). Values are read a
megabyte at a time, never whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from pydicom.encaps import parse_basic_offsets, parse_fragments
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pacsinfra.pacs.archive.index import StoredInstance
from pacsinfra.pacs.archive.pixels import OCTET_STREAM, VIDEO_MEDIA, media_type
from pacsinfra.pacs.archive.web.context import WebContext, blocking, web
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.archive.web.negotiate import Wanted, wanted_of
from pacsinfra.pacs.archive.web.wado import (
    CHUNK,
    deferred,
    multipart_head,
    open_instance,
    related,
    resolve,
)

PIXEL_DATA = 0x7FE00010
ENCAPSULATED_DOCUMENT = 0x00420011
DOCUMENT_CLASSES = "1.2.840.10008.5.1.4.1.1.104."  # Encapsulated PDF, CDA, STL, OBJ, MTL
_UNDEFINED = 0xFFFFFFFF
Ranges = list[tuple[int, int]]  # (file offset, length) pieces of a value


def video_syntax(inst: StoredInstance) -> str | None:
    """The instance's transfer syntax when its pixel data is a video stream."""
    return inst.transfer_syntax if media_type(inst.transfer_syntax) in VIDEO_MEDIA else None


def _in_memory(value: bytes) -> Iterator[bytes]:
    for i in range(0, len(value), CHUNK):
        yield value[i:i + CHUNK]


def _from_file(path: str, ranges: Ranges) -> Iterator[bytes]:
    with open(path, "rb") as fp:
        for offset, length in ranges:
            fp.seek(offset)
            left = length
            while left > 0 and (block := fp.read(min(CHUNK, left))):
                left -= len(block)
                yield block


def _fragments(path: str, value_tell: int) -> tuple[Ranges, int]:
    """The fragments of an encapsulated value in the file (offset, length each, Basic
    Offset Table left out), and where its items end (the value as pydicom gives it:
    without the sequence delimiter)."""
    with open(path, "rb") as fp:
        fp.seek(value_tell)
        parse_basic_offsets(fp)
        start = fp.tell()
        _, offsets = parse_fragments(fp)
        out = []
        for off in offsets:
            fp.seek(off + 4)
            length = int.from_bytes(fp.read(4), "little")
            out.append((off + 8, length))
        end = (out[-1][0] + out[-1][1]) if out else start
        return out, end


def _value(ctx: WebContext, inst: StoredInstance, tag: int, *, joined: bool = False
           ) -> tuple[Iterator[bytes], int | None]:
    """The element's value as chunks, and its length when known (blocking; 404 when
    absent). ``joined``: an encapsulated value as its fragments joined (a video)."""
    ds, path = open_instance(ctx, inst)
    if tag not in ds:
        raise Refusal(404, "the instance has no such element")
    raw = deferred(ds, tag)
    if raw is None or path is None:
        value = ds[tag].value
        if joined and isinstance(value, bytes):
            from pydicom.encaps import generate_fragments

            offsets = parse_basic_offsets(value)
            start = 8 + 4 * len(offsets)
            value = b"".join(generate_fragments(value[start:]))
        body = value if isinstance(value, bytes) else str(value).encode()
        return _in_memory(body), len(body)
    try:
        if raw.length != _UNDEFINED:
            return _from_file(path, [(raw.value_tell, raw.length)]), raw.length
        fragments, end = _fragments(path, raw.value_tell)
    except (ValueError, OSError) as exc:
        raise Refusal(422, f"the stored value cannot be read: {exc}") from None
    if joined:
        return _from_file(path, fragments), sum(n for _, n in fragments)
    return _from_file(path, [(raw.value_tell, end - raw.value_tell)]), end - raw.value_tell


def document_of(ctx: WebContext, inst: StoredInstance) -> tuple[str, bytes] | None:
    """(media type, bytes) of an encapsulated document instance; None for others.
    Blocking; documents are read whole (they are answered in one piece)."""
    if not inst.sop_class_uid.startswith(DOCUMENT_CLASSES):
        return None
    ds, _ = open_instance(ctx, inst)
    if ENCAPSULATED_DOCUMENT not in ds:
        return None
    body = bytes(ds[ENCAPSULATED_DOCUMENT].value or b"")
    length = ds.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 <= length <= len(body):
        body = body[:length]  # without the padding to an even length
    kind = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "application/pdf").strip()
    return kind.lower(), body


def stream_video(ctx: WebContext, inst: StoredInstance) -> Iterator[bytes]:
    """The video stream of a video instance (its pixel data fragments joined)."""
    chunks, _ = _value(ctx, inst, PIXEL_DATA, joined=True)
    return chunks


def _document_type(ctx: WebContext, inst: StoredInstance) -> str | None:
    if not inst.sop_class_uid.startswith(DOCUMENT_CLASSES):
        return None
    ds, _ = open_instance(ctx, inst)
    return str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "application/pdf").strip().lower()


def _choose(wanted: list[Wanted], tag: int, special: str | None) -> tuple[str, bool, bool]:
    """(part media type, multipart, as the special media type) of the first acceptable
    entry; 406 when none is."""
    for w in wanted:
        if w.media in (OCTET_STREAM, "*/*") and w.syntax in (None, "*"):
            return OCTET_STREAM, w.multipart, False
        if special is not None and (w.media == special or w.media.endswith("/*")
                                    and special.startswith(w.media[:-1])):
            return special, w.multipart, True
    offer = OCTET_STREAM + (f" or {special}" if special else "")
    raise Refusal(406, f"this bulk data is available as {offer}")


def _bulk(ctx: WebContext, inst: StoredInstance, tag: int, wanted: list[Wanted]) -> Response:
    special = None
    if tag == ENCAPSULATED_DOCUMENT:
        special = _document_type(ctx, inst)
    elif tag == PIXEL_DATA and video_syntax(inst) is not None:
        special = media_type(inst.transfer_syntax)
    kind, multipart, as_special = _choose(wanted, tag, special)
    length: int | None
    if as_special and tag == ENCAPSULATED_DOCUMENT:
        doc = document_of(ctx, inst)
        if doc is None:
            raise Refusal(404, "the instance has no encapsulated document")
        chunks, length = _in_memory(doc[1]), len(doc[1])
    else:
        chunks, length = _value(ctx, inst, tag, joined=as_special)
    if not multipart:
        headers = {"Content-Length": str(length)} if length is not None else {}
        return StreamingResponse(chunks, media_type=kind, headers=headers)
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        yield multipart_head(boundary, kind)
        yield from chunks
        yield f"\r\n--{boundary}--\r\n".encode()

    return StreamingResponse(body(), media_type=related(boundary, kind))


async def bulk(request: Request) -> Response:
    """GET .../bulk/{tag}: one element's value, in a media type Accept allows."""
    (inst,) = await resolve(request, single=True)
    text = request.path_params["tag"]
    if len(text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise Refusal(400, "bulk data is named by an 8-digit hexadecimal tag", key="tag")
    wanted = wanted_of(request.query_params.get("accept"), request.headers.get("accept"),
                       default=f'multipart/related; type="{OCTET_STREAM}"')
    return await blocking(_bulk, web(request), inst, int(text, 16), wanted)


ROUTES = [("/series/{series}/instances/{sop}/bulk/{tag}", bulk)]
