"""WADO-RS (PS3.18 10.4): instances as stored, metadata, frames and bulk data.

Stored files are served byte for byte and streamed from disk a megabyte at a time, so
retrieving a study of any size costs the server little memory. Metadata, frames and
bulk data parse an instance with its large values left on disk: metadata never reads
them, a frame is read alone (native or encapsulated), a large value is streamed. Every read of the disk or the index runs off
the event loop. Path UIDs, frame lists and tags are checked first (400), unknown
instances are 404.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pacsinfra.pacs.archive.index import StoredInstance
from pacsinfra.pacs.archive.pixels import (
    DEFLATED_LE,
    DecodeError,
    PixelModule,
    decode,
    is_native,
    native_bytes,
)
from pacsinfra.pacs.archive.service import CorruptInstance
from pacsinfra.pacs.archive.storage import Tier
from pacsinfra.pacs.archive.web.context import DICOM_JSON, WebContext, blocking, path_uids, web
from pacsinfra.pacs.archive.web.dicomjson import PLAIN_CHARSETS, element_json
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.archive.web.forwarded import public_base
from pacsinfra.pacs.archive.web.metacache import BASE, with_base
from pacsinfra.pacs.archive.web.negotiate import Choice, Wanted, choose, wanted_of
from pacsinfra.pacs.transcode import EXPLICIT_LE, IMPLICIT_LE, decodable, prepare
from pacsinfra.pacs.transcode import Choice as TranscodeChoice
from pacsinfra.pacs.transcode import Refusal as TranscodeRefusal

CHUNK = 1 << 20
MAX_FRAMES = 10_000  # frame numbers in one request
_DAMAGED = ("the stored file no longer matches its checksum; it is flagged for repair "
            "(`pacsinfra archive check` lists it)")
DEFER_BYTES = 64 * 1024  # values larger than this stay on disk until asked for
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def _instances(ctx: WebContext, uids: dict[str, str]) -> list[StoredInstance]:
    """The stored instances the path names (blocking)."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    for keyword, uid in uids.items():
        setattr(ident, keyword, uid)
    return ctx.service.match_instances(ident)


async def resolve(request: Request, *, single: bool = False) -> list[StoredInstance]:
    ctx = web(request)
    await ctx.auth.require(request, "read")
    found = await blocking(_instances, ctx, path_uids(request))
    if (len(found) != 1) if single else not found:
        raise Refusal(404, "no such study, series or instance")
    return found


def multipart_head(boundary: str, ctype: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode()


def related(boundary: str, type_: str) -> str:
    return f'multipart/related; type="{type_}"; boundary={boundary}'


def instance_syntaxes(wanted: list[Wanted]) -> list[str]:
    """The transfer syntaxes a retrieve of whole instances may answer in, best first
    (``*``: as stored). A media type without a transfer-syntax parameter means "as
    stored", as most archives answer; PS3.18 names Explicit VR Little Endian as the
    default, which a client gets by asking for it."""
    out = [w.syntax or "*" for w in wanted if w.media in ("application/dicom", "*/*")]
    return out or ["*"]


def target_syntax(stored: str, syntaxes: list[str]) -> str | None:
    """The syntax to send an instance stored in ``stored`` in (None: as stored), or 406."""
    for syntax in syntaxes:
        if syntax in ("*", stored):
            return None
        if syntax in (EXPLICIT_LE, IMPLICIT_LE) and decodable(stored) \
                and UID(stored).is_little_endian:
            return syntax
    raise Refusal(406, f"an instance is stored as {stored} and the request accepts none of "
                  f"it, {EXPLICIT_LE} or {IMPLICIT_LE} (Accept: multipart/related; "
                  f'type="application/dicom"; transfer-syntax=*)')


def _converted(ctx: WebContext, inst: StoredInstance, syntax: str) -> bytes:
    """An instance as a Part 10 file in an uncompressed ``syntax``, decoded if it must be."""
    ds = dcmread(BytesIO(ctx.service.read_verified(inst)))
    if UID(inst.transfer_syntax).is_compressed:
        prepare(ds, TranscodeChoice(EXPLICIT_LE, decode=True))
        ctx.service.counters.add("transcoded")
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _stream(ctx: WebContext, instances: list[StoredInstance], boundary: str,
            targets: dict[str, str | None]) -> Iterator[bytes]:
    """The multipart body of stored files (Starlette iterates it in a worker thread);
    ``targets``: SOP Instance UID -> the syntax to convert to (None: as stored)."""
    for inst in instances:
        target = targets.get(inst.sop_uid)
        if target is not None:
            try:
                body = _converted(ctx, inst, target)
            except (CorruptInstance, TranscodeRefusal) as exc:
                # the answer has started: the only way to say so is to cut it short
                raise RuntimeError(f"retrieve {inst.sop_uid}: {exc}") from None
            yield multipart_head(boundary, f"application/dicom; transfer-syntax={target}")
            yield body
            yield b"\r\n"
            continue
        yield multipart_head(boundary, f"application/dicom; transfer-syntax="
                                        f"{inst.transfer_syntax}")
        tier = ctx.service.tiers.get(inst.tier)
        if isinstance(tier, Tier):
            with tier.path(inst.rel_path).open("rb") as f:
                while block := f.read(CHUNK):
                    yield block
        elif tier is not None:
            yield tier.read(inst.rel_path)  # an object tier: one instance at a time
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _readable(ctx: WebContext, instances: list[StoredInstance]) -> list[StoredInstance]:
    """The instances that may be sent: refuse before streaming when a file is gone (a
    missing file mid-stream could only cut the connection); leave out the ones whose file
    no longer matches its checksum (flagged, never sent). Blocking."""
    for inst in instances:
        tier = ctx.service.tiers.get(inst.tier)
        if tier is None or (isinstance(tier, Tier) and not tier.path(inst.rel_path).is_file()):
            raise Refusal(503, "a stored file is not readable right now (run "
                          "`pacsinfra archive check`)", headers={"Retry-After": "60"})
    sound = []
    for inst in instances:
        try:
            ctx.service.verify(inst)
        except CorruptInstance:
            continue
        sound.append(inst)
    if not sound:
        raise Refusal(410, _DAMAGED)
    for study in {i.study_uid for i in sound}:
        ctx.service.index.touch_study(study)  # lifecycle's not_accessed_days
    return sound


async def retrieve(request: Request) -> Response:
    """GET a study / series / instance: the stored Part 10 files, unchanged unless the
    Accept header asks for an uncompressed syntax (then decoded); 206 with a Warning
    header when some were left out as damaged."""
    ctx = web(request)
    syntaxes = instance_syntaxes(wanted_of(request.query_params.get("accept"),
                                           request.headers.get("accept")))
    instances = await resolve(request)
    targets = {i.sop_uid: target_syntax(i.transfer_syntax, syntaxes) for i in instances}
    sound = await blocking(_readable, ctx, instances)
    ctx.service.counters.add("retrieved", len(sound))
    boundary = uuid.uuid4().hex
    if len(sound) < len(instances):
        return StreamingResponse(
            _stream(ctx, sound, boundary, targets), status_code=206,
            media_type=related(boundary, "application/dicom"),
            headers={"Warning": f'299 pacsinfra "{len(instances) - len(sound)} of '
                                f'{len(instances)} instances left out: {_DAMAGED}"'})
    return StreamingResponse(_stream(ctx, sound, boundary, targets),
                             media_type=related(boundary, "application/dicom"))


def open_instance(ctx: WebContext, inst: StoredInstance) -> tuple[Dataset, str | None]:
    """The instance with its large values left on disk, and its path (None for an object
    tier, whose instance is read into memory whole)."""
    try:
        ctx.service.verify(inst)
    except CorruptInstance:
        raise Refusal(410, _DAMAGED, sop_instance_uid=inst.sop_uid) from None
    source = ctx.service.tiers[inst.tier].source(inst.rel_path)
    # a deflated dataset is one compressed stream: offsets into it are not file offsets
    if isinstance(source, str) and inst.transfer_syntax != DEFLATED_LE:
        return dcmread(source, defer_size=DEFER_BYTES), source
    return dcmread(source), None


def deferred(ds: Dataset, tag: int) -> RawDataElement | None:
    """The element ``tag`` if its value was left on disk."""
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None:
        return raw
    return None


def instance_json(ctx: WebContext, inst: StoredInstance) -> bytes:
    """The DICOM JSON of one instance, BulkDataURIs under the :data:`BASE` placeholder
    (blocking; large values are never read)."""
    ds, _ = open_instance(ctx, inst)
    return json.dumps(dataset_json(ds, f"{BASE}/studies/{inst.study_uid}/series/"
                                       f"{inst.series_uid}/instances/{inst.sop_uid}")).encode()


def dataset_json(ds: Dataset, prefix: str) -> dict[str, Any]:
    """DICOM JSON of a dataset read with its large values left on disk, bulk data under
    ``prefix``/bulk/<tag>. Top-level binary values over 1 KiB are bulk data; those inside
    sequences are inline (a BulkDataURI names a top-level element). Plain elements are
    encoded from their bytes, the rest by pydicom (the same JSON either way)."""

    def uri(elem: Any) -> str:
        return f"{prefix}/bulk/{int(elem.tag):08X}"

    charset = ds.get("SpecificCharacterSet", "")
    plain = (charset if isinstance(charset, str) else "\\".join(charset)) in PLAIN_CHARSETS
    doc: dict[str, Any] = {}
    for tag in list(ds.keys()):  # keys only: iterating the dataset would read every value
        item = ds.get_item(tag, keep_deferred=True)
        key = f"{int(tag):08X}"
        if isinstance(item, RawDataElement):
            if item.value is None and (item.VR or _vr(tag)) in BULK_VRS:  # left on disk
                doc[key] = {"vr": str(item.VR or _vr(tag)), "BulkDataURI": uri(item)}
                continue
            fast = element_json(item, uri(item), 1024, plain)
            if fast is not None:
                doc[key] = fast
                continue
        elem = ds[tag]  # read now (deferred only if large), encoded by pydicom
        if elem.VR == "SQ":
            doc[key] = elem.to_json_dict(bulk_data_element_handler=None,
                                         bulk_data_threshold=2**62)
        else:
            doc[key] = elem.to_json_dict(bulk_data_element_handler=uri,
                                         bulk_data_threshold=1024)
    return doc


def _metadata(ctx: WebContext, instances: list[StoredInstance], base: str) -> bytes:
    """The metadata of ``instances`` for a client at ``base`` (blocking), each instance
    from the cache when its bytes were encoded before."""
    cache = ctx.metadata
    docs = []
    for inst in instances:
        doc = cache.get(inst.sop_uid, inst.sha256)
        if doc is None:
            doc = instance_json(ctx, inst)
            cache.put(inst.sop_uid, inst.sha256, doc)
        docs.append(doc)
    return with_base(docs, base)


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[-1]  # "OB or OW": pixel data as OW
    except KeyError:
        return "UN"


async def metadata(request: Request) -> Response:
    """GET .../metadata: DICOM JSON of each instance, bulk data as BulkDataURIs (large
    values are never read for it)."""
    ctx = web(request)
    instances = await resolve(request)
    body = await blocking(_metadata, ctx, instances, public_base(request))
    return Response(body, media_type=DICOM_JSON)


def _frame_numbers(text: str) -> list[int]:
    parts = text.split(",")
    if len(parts) > MAX_FRAMES or not all(p.isdigit() and 0 < len(p) <= 9 for p in parts):
        raise Refusal(400, "frames are a comma-separated list of frame numbers from 1",
                      key="frames")
    numbers = [int(p) for p in parts]
    if 0 in numbers:
        raise Refusal(400, "frame numbers start at 1", key="frames")
    return numbers


def read_frames(ctx: WebContext, inst: StoredInstance, wanted: list[int]
                ) -> tuple[PixelModule, list[bytes]]:
    """The instance's pixel module and the wanted frames as stored, read from disk one
    by one when the pixel data is large (blocking)."""
    ds, path = open_instance(ctx, inst)
    if 0x7FE00010 not in ds:
        raise Refusal(404, "the instance has no pixel data")
    module = PixelModule.of(ds, inst.transfer_syntax)
    n = module.frames
    if any(f > n for f in wanted):
        raise Refusal(404, f"the instance has frames 1..{n}")
    encapsulated = not is_native(inst.transfer_syntax)
    raw = deferred(ds, 0x7FE00010)
    try:
        if raw is None or path is None:
            data = ds.PixelData
            if encapsulated:
                return module, [get_frame(data, f - 1, number_of_frames=n) for f in wanted]
            size = len(data) // n
            return module, [data[(f - 1) * size:f * size] for f in wanted]
        out = []
        with open(path, "rb") as fp:
            for f in wanted:
                if encapsulated:
                    fp.seek(raw.value_tell)
                    out.append(get_frame(fp, f - 1, number_of_frames=n))
                else:
                    size = raw.length // n
                    fp.seek(raw.value_tell + (f - 1) * size)
                    out.append(fp.read(size))
        return module, out
    except (ValueError, KeyError, OSError) as exc:  # pydicom on broken fragments/offsets
        raise Refusal(422, f"the stored pixel data cannot be split into frames: {exc}"
                      ) from None


def _frames(ctx: WebContext, inst: StoredInstance, wanted: list[int],
            choice: Choice) -> list[bytes]:
    """The wanted frames in the chosen form (blocking)."""
    module, found = read_frames(ctx, inst, wanted)
    if not choice.decode:
        return found
    try:
        return [native_bytes(decode(module, frame)) for frame in found]
    except DecodeError as exc:
        raise Refusal(422, str(exc)) from None


def parts(chunks: list[bytes], ctype: str, part_type: str = "application/octet-stream"
           ) -> Response:
    boundary = uuid.uuid4().hex
    body = b"".join(multipart_head(boundary, ctype) + c + b"\r\n" for c in chunks)
    return Response(body + f"--{boundary}--\r\n".encode(),
                    media_type=related(boundary, part_type))


def pixel_choice(request: Request, inst: StoredInstance, *, single_ok: bool) -> Choice:
    """How the request's Accept (or ``accept`` parameter) wants pixel data of ``inst``."""
    wanted = wanted_of(request.query_params.get("accept"), request.headers.get("accept"))
    return choose(wanted, inst.transfer_syntax, single_ok=single_ok)


async def frames(request: Request) -> Response:
    """GET .../frames/{frames}: pixel data frames (1-based list) in a transfer syntax
    the Accept header allows (as stored, or decoded to native pixels), else 406."""
    (inst,) = await resolve(request, single=True)
    wanted = _frame_numbers(request.path_params["frames"])
    choice = pixel_choice(request, inst, single_ok=len(wanted) == 1)
    found = await blocking(_frames, web(request), inst, wanted, choice)
    if not choice.multipart:
        return Response(found[0], media_type=choice.content_type())
    return parts(found, choice.content_type(), choice.media)


#: (path, endpoint) of the WADO-RS routes below /studies/{study}
ROUTES: list[tuple[str, Callable[[Request], Any]]] = [
    ("", retrieve),
    ("/series/{series}", retrieve),
    ("/series/{series}/instances/{sop}", retrieve),
    ("/metadata", metadata),
    ("/series/{series}/metadata", metadata),
    ("/series/{series}/instances/{sop}/metadata", metadata),
    ("/series/{series}/instances/{sop}/frames/{frames}", frames),
]
