"""What every DICOMweb handler reaches: the archive service, the config, the
authenticator; kept on the Starlette application's state."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
from starlette.requests import Request

from pacsinfra.pacs.archive.config import DicomWebConfig
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.archive.web.auth import Authenticator
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.archive.web.metacache import MetadataCache
from pacsinfra.pacs.dicom import valid_uid

_T = TypeVar("_T")
DICOM_JSON = "application/dicom+json"
PATH_UIDS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID",
             "sop": "SOPInstanceUID"}


@dataclass
class WebContext:
    """The archive behind the endpoints, how callers are checked, and the metadata
    already encoded."""

    service: ArchiveService
    cfg: DicomWebConfig
    auth: Authenticator
    metadata: MetadataCache = field(default_factory=lambda: MetadataCache(0))


def web(request: Request) -> WebContext:
    """The context of the application serving ``request``."""
    ctx: WebContext = request.app.state.web
    return ctx


async def blocking(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a blocking call (disk, index, fsync) off the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def path_uids(request: Request) -> dict[str, str]:
    """The UIDs in the request's path (keyword -> UID); 400 for one that is not a UID."""
    out = {}
    for param, keyword in PATH_UIDS.items():
        value = request.path_params.get(param)
        if value is None:
            continue
        if not valid_uid(value):
            raise Refusal(400, f"{keyword} in the path is not a valid UID", key=keyword)
        out[keyword] = value
    return out
