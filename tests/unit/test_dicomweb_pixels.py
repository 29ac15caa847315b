"""DICOMweb pieces for viewers that need no server: Accept negotiation for pixel data,
the metadata cache, and the VOI windowing of rendered images."""

from __future__ import annotations

import numpy as np
import pytest

from pacsinfra.pacs.archive.rendering import Window, apply_window
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.archive.web.metacache import BASE, MetadataCache, with_base
from pacsinfra.pacs.archive.web.negotiate import choose, wanted_of

JPEG = "1.2.840.10008.1.2.4.50"
LE = "1.2.840.10008.1.2.1"


def chosen(accept: str, stored: str, single_ok: bool = True) -> tuple[str, str, bool, bool]:
    c = choose(wanted_of(None, accept), stored, single_ok=single_ok)
    return c.media, c.syntax, c.decode, c.multipart


@pytest.mark.parametrize(("accept", "stored", "expected"), [
    # as stored, in the stored syntax's media type
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', JPEG,
     ("image/jpeg", JPEG, False, True)),
    ("", JPEG, ("image/jpeg", JPEG, False, True)),
    ("*/*", LE, ("application/octet-stream", LE, False, True)),
    ('multipart/related; type="image/jpeg"', JPEG, ("image/jpeg", JPEG, False, True)),
    ("image/jpeg", JPEG, ("image/jpeg", JPEG, False, False)),
    # native pixels: decoded when stored compressed
    ('multipart/related; type="application/octet-stream"', JPEG,
     ("application/octet-stream", LE, True, True)),
    (f"multipart/related; type=application/octet-stream; transfer-syntax={LE}", JPEG,
     ("application/octet-stream", LE, True, True)),
    ("multipart/related; type=application/octet-stream", "1.2.840.10008.1.2",
     ("application/octet-stream", LE, False, True)),
    ("multipart/related; type=application/octet-stream", "1.2.840.10008.1.2.2",
     ("application/octet-stream", LE, True, True)),
    # q: the most preferred form that can be made
    ('multipart/related; type="image/jls"; q=1, multipart/related; type=image/jpeg; q=0.5',
     JPEG, ("image/jpeg", JPEG, False, True)),
    ('image/jpeg; q=0, multipart/related; type=image/jpeg', JPEG,
     ("image/jpeg", JPEG, False, True)),
])
def test_negotiation(accept: str, stored: str, expected: tuple[str, str, bool, bool]) -> None:
    assert chosen(accept, stored) == expected


@pytest.mark.parametrize(("accept", "stored"), [
    ('multipart/related; type="image/jls"', JPEG),
    (f"multipart/related; type=image/jpeg; transfer-syntax={LE}", JPEG),
    ('multipart/related; type="image/jpeg"', LE),  # nothing is encoded here
    ("multipart/related; type=application/octet-stream", "1.2.840.10008.1.2.4.102"),
    ("image/jpeg; q=0", JPEG),
])
def test_what_cannot_be_made_is_406(accept: str, stored: str) -> None:
    with pytest.raises(Refusal) as err:
        chosen(accept, stored)
    assert err.value.status == 406 and stored in err.value.reason


def test_several_frames_are_never_single_part() -> None:
    assert chosen("image/jpeg, */*", JPEG, single_ok=False)[3] is True
    with pytest.raises(Refusal):
        chosen("image/jpeg", JPEG, single_ok=False)


def test_metadata_cache_is_keyed_by_content_and_bounded() -> None:
    cache = MetadataCache(100)
    cache.put("1.2", "aa", b"x" * 60)
    assert cache.get("1.2", "aa") == b"x" * 60
    assert cache.get("1.2", "bb") is None  # replaced bytes: not the old metadata
    cache.put("1.3", "cc", b"y" * 60)  # over the bound: the least recently used goes
    assert cache.get("1.2", "aa") is None and cache.get("1.3", "cc") == b"y" * 60
    assert cache.size == 60
    cache.put("1.4", "dd", b"z" * 101)  # larger than the whole cache: not kept
    assert cache.get("1.4", "dd") is None
    assert MetadataCache(0).get("1.2", "aa") is None


def test_the_base_placeholder_is_filled_for_each_client() -> None:
    import json

    doc = json.dumps({"7FE00010": {"vr": "OW", "BulkDataURI": f"{BASE}/studies/1/bulk"}})
    body = with_base([doc.encode(), doc.encode()], 'https://v.example/dicom-web')
    assert [d["7FE00010"]["BulkDataURI"] for d in json.loads(body)] == [
        "https://v.example/dicom-web/studies/1/bulk"] * 2


def test_linear_window_matches_ps33_at_its_edges() -> None:
    # c=40, w=400: x <= -160 -> 0; x > 239 -> 255; linear between
    x = np.array([-1000, -160, -159.5, 40, 239, 239.5, 3000], dtype=np.float64)
    y = apply_window(x, Window(40, 400))
    assert list(y) == [0, 0, 0, 128, 255, 255, 255]
    assert list(apply_window(x, Window(40, 400), invert=True)) == [255, 255, 255, 127, 0, 0, 0]
    exact = apply_window(np.array([-160.0, 40.0, 240.0]), Window(40, 400, "linear-exact"))
    assert list(exact) == [0, 128, 255]
