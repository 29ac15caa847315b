"""DICOMweb for viewers (PS3.18): QIDO-RS, WADO-RS (instances, metadata, frames, bulk
data), STOW-RS, plus ``/metrics`` (Prometheus). Starlette app run by uvicorn in a thread.

Stored files are served byte for byte (WADO-RS instances), and STOW-RS goes through
the same durable store path as C-STORE (:meth:`ArchiveService.store_raw`).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from io import BytesIO
from typing import Any, TypeVar, overload

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import _read_file_meta_info
from pydicom.tag import Tag
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacsinfra.pacs.archive.config import DicomWebConfig
from pacsinfra.pacs.archive.index import StoredInstance
from pacsinfra.pacs.archive.query import compile_query, response
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.dicom import Status, valid_uid

_P = TypeVar("_P")
LOG = logging.getLogger("pacsinfra.archive.dicomweb")
DICOM_JSON = "application/dicom+json"

# PS3.18 Table 6.7.1-2: attributes QIDO-RS returns by default at each level.
_DEFAULTS = {
    "STUDY": ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"],
    "SERIES": ["StudyInstanceUID", "Modality", "SeriesInstanceUID", "SeriesNumber",
               "SeriesDescription", "NumberOfSeriesRelatedInstances"],
    "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
              "InstanceNumber"],
}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


def _keyword(key: str) -> str | None:
    """A query key as a keyword: 'PatientID' or '00100020'."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        from pydicom.datadict import keyword_for_tag

        return keyword_for_tag(int(key, 16)) or None
    return key if tag_for_keyword(key) is not None else None


def _multipart(parts: Iterable[tuple[bytes, str]], type_: str) -> Response:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for body, ctype in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode(), body, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks), media_type=(
        f'multipart/related; type="{type_}"; boundary={boundary}'))


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body into (headers, payload) parts."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        k, _, v = param.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip().strip('"')
    if not boundary:
        raise ValueError("multipart body without a boundary")
    delim = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        parts.append((headers, payload))
    return parts


def meta_start(payload: bytes) -> int:
    """Offset of the file meta group in a Part 10 payload (with or without preamble;
    pydicom's dcmwrite, used by dicomweb-client, omits the preamble)."""
    if payload[128:132] == b"DICM":
        return 132
    if payload[:4] == b"DICM":
        return 4
    if payload[:2] == b"\x02\x00":
        return 0
    raise ValueError("not a DICOM Part 10 payload (no file meta information)")


class DicomWeb:
    """The DICOMweb endpoints over one :class:`ArchiveService`."""

    def __init__(self, service: ArchiveService, cfg: DicomWebConfig) -> None:
        self.service = service
        self.cfg = cfg
        self._token = cfg.token.resolve() if cfg.token is not None else None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        r = "/studies/{study}"
        self.app = Starlette(routes=[
            Route("/studies", self.qido_studies, methods=["GET"]),
            Route("/studies", self.stow, methods=["POST"]),
            Route(f"{r}", self.stow, methods=["POST"]),
            Route("/series", self.qido_series, methods=["GET"]),
            Route("/instances", self.qido_instances, methods=["GET"]),
            Route(f"{r}/series", self.qido_series, methods=["GET"]),
            Route(f"{r}/instances", self.qido_instances, methods=["GET"]),
            Route(f"{r}/series/{{series}}/instances", self.qido_instances, methods=["GET"]),
            Route(f"{r}", self.wado, methods=["GET"]),
            Route(f"{r}", self.delete, methods=["DELETE"]),
            Route(f"{r}/series/{{series}}", self.delete, methods=["DELETE"]),
            Route(f"{r}/series/{{series}}/instances/{{sop}}", self.delete, methods=["DELETE"]),
            Route(f"{r}/series/{{series}}", self.wado, methods=["GET"]),
            Route(f"{r}/series/{{series}}/instances/{{sop}}", self.wado, methods=["GET"]),
            Route(f"{r}/metadata", self.metadata, methods=["GET"]),
            Route(f"{r}/series/{{series}}/metadata", self.metadata, methods=["GET"]),
            Route(f"{r}/series/{{series}}/instances/{{sop}}/metadata", self.metadata,
                  methods=["GET"]),
            Route(f"{r}/series/{{series}}/instances/{{sop}}/frames/{{frames}}", self.frames,
                  methods=["GET"]),
            Route(f"{r}/series/{{series}}/instances/{{sop}}/bulk/{{tag}}", self.bulk,
                  methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ])

    # -- plumbing ----------------------------------------------------------------------------
    def _denied(self, request: Request) -> Response | None:
        if self._token is None:
            return None
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self._token):
            return None
        return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @overload
    def _resolve(self, request: Request) -> list[StoredInstance] | Response: ...

    @overload
    def _resolve(self, request: Request, *, single: bool,
                 parse: Callable[[Mapping[str, str]], _P]
                 ) -> tuple[list[StoredInstance], _P] | Response: ...

    def _resolve(self, request: Request, *, single: bool = False,
                 parse: Callable[[Mapping[str, str]], Any] | None = None) -> Any:
        """The instances a WADO-RS path names, or the error response (401, 400, 404).

        ``parse`` reads further path parameters (frame numbers, a tag); a ValueError from
        it is a 400 like a bad UID. ``single``: the path must name exactly one instance.
        """
        denied = self._denied(request)
        if denied:
            return denied
        try:
            instances = self._instances(request)
            extra = parse(request.path_params) if parse is not None else None
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if (len(instances) != 1) if single else not instances:
            return JSONResponse({"error": "not found"}, status_code=404)
        return instances if parse is None else (instances, extra)

    def _instances(self, request: Request) -> list[StoredInstance]:
        p = request.path_params
        keys = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID",
                "sop": "SOPInstanceUID"}
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        for k, kw in keys.items():
            if k in p:
                if not valid_uid(p[k]):
                    raise ValueError(f"not a UID: {p[k]!r}")
                setattr(ident, kw, p[k])
        return self.service.match_instances(ident)

    def _source(self, inst: StoredInstance) -> Any:
        """What ``dcmread`` reads the stored file from (a path, or an object's bytes)."""
        return self.service.tiers[inst.tier].source(inst.rel_path)

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    # -- QIDO-RS -----------------------------------------------------------------------------
    async def _qido(self, request: Request, level: str) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        ident = Dataset()
        ident.QueryRetrieveLevel = level
        wanted = list(_DEFAULTS[level])
        p = request.path_params
        if "study" in p:
            ident.StudyInstanceUID = p["study"]
        if "series" in p:
            ident.SeriesInstanceUID = p["series"]
        params = request.query_params
        for key in params.getlist("includefield"):
            for f in key.split(","):
                kw = _keyword(f.strip())
                if kw and kw not in wanted:
                    wanted.append(kw)
        for key, value in params.multi_items():
            if key in _CONTROL:
                continue
            kw = _keyword(key)
            if kw is None:
                return JSONResponse({"error": f"unknown query key {key!r}"}, status_code=400)
            setattr(ident, kw, value)
        for kw in wanted:
            tag = tag_for_keyword(kw)
            if kw not in ident and tag is not None:
                ident.add_new(tag, dictionary_VR(tag), None)
        try:
            limit = int(params.get("limit", "1000"))
            offset = int(params.get("offset", "0"))
        except ValueError:
            return JSONResponse({"error": "limit/offset must be integers"}, status_code=400)
        q = compile_query(ident, level)
        q.sql += f" LIMIT {max(0, min(limit, 10000))} OFFSET {max(0, offset)}"
        rows = self.service.index.db.query(q.sql, q.params)
        out = []
        for row in rows:
            ds = response(q, row)
            del ds.QueryRetrieveLevel
            out.append(ds.to_json_dict())
        return Response(json.dumps(out), media_type=DICOM_JSON)

    async def qido_studies(self, request: Request) -> Response:
        """QIDO-RS study search."""
        return await self._qido(request, "STUDY")

    async def qido_series(self, request: Request) -> Response:
        """QIDO-RS series search (all, or in one study)."""
        return await self._qido(request, "SERIES")

    async def qido_instances(self, request: Request) -> Response:
        """QIDO-RS instance search."""
        return await self._qido(request, "IMAGE")

    # -- WADO-RS -----------------------------------------------------------------------------
    async def wado(self, request: Request) -> Response:
        """Instances of a study / series / one instance, exactly as stored."""
        instances = self._resolve(request)
        if isinstance(instances, Response):
            return instances
        parts = []
        for inst in instances:
            parts.append((self.service.tiers[inst.tier].read(inst.rel_path),
                          f'application/dicom; transfer-syntax={inst.transfer_syntax}'))
        self.service.counters.add("retrieved", len(parts))
        for study in {i.study_uid for i in instances}:
            self.service.index.touch_study(study)  # lifecycle's not_accessed_days
        return _multipart(parts, "application/dicom")

    async def metadata(self, request: Request) -> Response:
        """DICOM JSON of each instance, bulk data replaced by BulkDataURIs."""
        instances = self._resolve(request)
        if isinstance(instances, Response):
            return instances
        base = self._base(request)
        out = []
        for inst in instances:
            ds = dcmread(self._source(inst))
            prefix = (f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/"
                      f"{inst.sop_uid}")

            def uri(elem: DataElement, prefix: str = prefix) -> str:
                return f"{prefix}/bulk/{int(elem.tag):08X}"

            out.append(ds.to_json_dict(bulk_data_threshold=1024,
                                       bulk_data_element_handler=uri))
        return Response(json.dumps(out), media_type=DICOM_JSON)

    async def frames(self, request: Request) -> Response:
        """Pixel data frames (1-based list), uncompressed or as encapsulated."""
        found = self._resolve(request, single=True, parse=lambda p: [
            int(f) for f in p["frames"].split(",")])
        if isinstance(found, Response):
            return found
        (inst,), wanted = found
        ds = dcmread(self._source(inst))
        if "PixelData" not in ds:
            return JSONResponse({"error": "no pixel data"}, status_code=404)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if any(f < 1 or f > n for f in wanted):
            return JSONResponse({"error": f"frames are 1..{n}"}, status_code=404)
        data = ds.PixelData
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            frames = list(generate_frames(data, number_of_frames=n))
        else:
            size = len(data) // n
            frames = [data[i * size:(i + 1) * size] for i in range(n)]
        ctype = f"application/octet-stream; transfer-syntax={inst.transfer_syntax}"
        return _multipart([(frames[f - 1], ctype) for f in wanted], "application/octet-stream")

    async def bulk(self, request: Request) -> Response:
        """One bulk data element's value."""
        found = self._resolve(request, single=True, parse=lambda p: Tag(int(p["tag"], 16)))
        if isinstance(found, Response):
            return found
        (inst,), tag = found
        ds = dcmread(self._source(inst))
        if tag not in ds:
            return JSONResponse({"error": "no such element"}, status_code=404)
        value = ds[tag].value
        body = value if isinstance(value, bytes) else str(value).encode()
        return _multipart([(body, "application/octet-stream")], "application/octet-stream")

    # -- delete ------------------------------------------------------------------------------
    async def delete(self, request: Request) -> Response:
        """Delete a study / series / instance: 204, 404 when not indexed, 400 bad UID."""
        denied = self._denied(request)
        if denied:
            return denied
        p = request.path_params
        for k in ("study", "series", "sop"):
            if k in p and not valid_uid(p[k]):
                return JSONResponse({"error": f"not a UID: {p[k]!r}"}, status_code=400)
        client = request.client.host if request.client else "DICOMweb"
        report = await _in_thread(self.service.delete, study_uid=p["study"],
                                  series_uid=p.get("series"), sop_uid=p.get("sop"),
                                  actor=f"DICOMweb:{client}")
        if report is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(status_code=204)

    # -- STOW-RS -----------------------------------------------------------------------------
    async def stow(self, request: Request) -> Response:
        """Store Part 10 instances from a multipart/related body."""
        denied = self._denied(request)
        if denied:
            return denied
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/related"):
            return JSONResponse({"error": "expected multipart/related"}, status_code=415)
        body = await request.body()
        try:
            parts = parse_multipart(body, ctype)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        study_filter = request.path_params.get("study")
        ok, failed = [], []
        for _headers, payload in parts:
            sop_class = sop_uid = ""
            status = Status.CANNOT_UNDERSTAND
            try:
                start = meta_start(payload)
                fp = BytesIO(payload)
                fp.seek(start)
                meta_ds = _read_file_meta_info(fp)
                offset = fp.tell()
                if "TransferSyntaxUID" not in meta_ds:
                    raise ValueError("no Transfer Syntax UID in the file meta")
                sop_class = str(meta_ds.MediaStorageSOPClassUID)
                sop_uid = str(meta_ds.MediaStorageSOPInstanceUID)
                status = await _in_thread(self.service.store_raw, sop_class=sop_class,
                                          sop_uid=sop_uid,
                                          transfer_syntax=str(meta_ds.TransferSyntaxUID),
                                          meta=payload[start:offset], raw=payload[offset:],
                                          calling="STOW-RS")
                if status == Status.SUCCESS and study_filter:
                    inst = self.service.index.get(sop_uid)
                    if inst is not None and inst.study_uid != study_filter:
                        LOG.warning("STOW-RS to study %s stored an instance of %s",
                                    study_filter, inst.study_uid)
            except Exception as exc:  # noqa: BLE001 - a bad part fails alone
                LOG.warning("STOW-RS part rejected: %s", exc)
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class or "1.2"
            item.ReferencedSOPInstanceUID = sop_uid or "1.2"
            if status == Status.SUCCESS:
                ok.append(item)
            else:
                item.FailureReason = int(status)
                failed.append(item)
        result = Dataset()
        result.ReferencedSOPSequence = ok
        if failed:
            result.FailedSOPSequence = failed
        code = 200 if not failed else (202 if ok else 409)
        return Response(json.dumps(result.to_json_dict()), status_code=code,
                        media_type=DICOM_JSON)

    # -- metrics -----------------------------------------------------------------------------
    async def metrics(self, request: Request) -> Response:
        """Prometheus text exposition of the archive's counters."""
        denied = self._denied(request)
        if denied:
            return denied
        from pacsinfra.pacs.archive.metrics import render

        body, ctype = render(self.service)
        return Response(body, media_type=ctype)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Serve in a background thread (uvicorn; TLS when configured)."""
        import uvicorn

        kwargs: dict[str, Any] = {}
        if self.cfg.tls.enabled:
            kwargs.update(ssl_certfile=self.cfg.tls.cert_file, ssl_keyfile=self.cfg.tls.key_file,
                          ssl_ca_certs=self.cfg.tls.ca_file)
        config = uvicorn.Config(self.app, host=self.cfg.bind, port=self.cfg.port,
                                log_level="warning", access_log=False, **kwargs)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dicomweb", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


async def _in_thread(fn: Any, **kwargs: Any) -> Any:
    """Run a blocking call (fsync, commit wait) off the event loop."""
    import anyio

    return await anyio.to_thread.run_sync(lambda: fn(**kwargs))
