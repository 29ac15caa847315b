"""What a web viewer needs from the archive's DICOMweb, against a real archive process
over real HTTP: frames in every transfer syntax pydicom ships a file of (as stored, and
decoded to the very pixels pydicom decodes), 406 when a form cannot be made, rendered
images and thumbnails with PS3.3 windowing checked pixel for pixel, documents and video
as single-part bulk data, QIDO-RS instance attributes, fuzzy matching and Retrieve URLs,
forwarding headers honoured from the trusted proxy only, memory bounded while one frame
of a large multi-frame instance is served, and every refusal a 4xx with a JSON reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_support import (
    auth,
    error_of,
    multipart,
    part10,
    request,
    rss_kib,
    start_web_archive,
    stow_headers,
    token_entries,
)
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import generate_uid

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
READER = auth("reader")
PROXY = "127.0.0.2"  # the trusted proxy's source address (the client is 127.0.0.1)
# a document larger than what metadata inlines, of odd length
PDF = b"%PDF-1.4\n%" + b"x" * 4001 + b"\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF"
assert len(PDF) % 2 == 1
# larger than what is read with the header: served from the file
VIDEO = [b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 300, bytes(range(255, 0, -1)) * 400]
BIG_FRAMES = [bytes([i]) * 100_000 + b"\xff\xd9" for i in range(3)]  # not real JPEG: as stored
#: pydicom's real compressed files: name -> (transfer syntax, part media type)
COMPRESSED = {
    "SC_rgb_jpeg_dcmtk.dcm": ("1.2.840.10008.1.2.4.50", "image/jpeg"),
    "JPGExtended.dcm": ("1.2.840.10008.1.2.4.51", "image/jpeg"),
    "SC_rgb_jpeg_gdcm.dcm": ("1.2.840.10008.1.2.4.70", "image/jpeg"),
    "MR_small_jpeg_ls_lossless.dcm": ("1.2.840.10008.1.2.4.80", "image/jls"),
    "JPEG2000.dcm": ("1.2.840.10008.1.2.4.91", "image/jp2"),
    "MR_small_RLE.dcm": ("1.2.840.10008.1.2.5", "image/dicom-rle"),
}


@dataclass
class Stored:
    """One stored instance: its dataset (as sent) and its WADO-RS path."""

    ds: Dataset
    path: str

    @property
    def syntax(self) -> str:
        return str(self.ds.file_meta.TransferSyntaxUID)


def _renamed(ds: Dataset, patient: str) -> Dataset:
    """``ds`` with new UIDs (pydicom's test files share some) and ``patient``."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = patient, patient.replace("^", "")[:16]
    return ds


def _document() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = PDF + b"\0"  # padded to an even length, as DICOM requires
    ds.EncapsulatedDocumentLength = len(PDF)
    return _renamed(ds, "VIEWER^PDF")


def _video() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "ES", 16, 16, 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate(VIDEO, has_bot=False)
    ds["PixelData"].VR = "OB"
    return _renamed(ds, "VIEWER^VIDEO")


def _big_multiframe(frames: int = 80) -> Dataset:
    """A 40 MB native multi-frame image whose every frame differs."""
    from pacsinfra.verify.study import make_study

    ds = make_study("ct", instances=1)[0]
    pixels = np.zeros((frames, 512, 512), dtype=np.uint16)
    for f in range(frames):
        pixels[f, f % 512, :] = 1000 + f
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return _renamed(ds, "VIEWER^BIG")


def _datasets() -> dict[str, Dataset]:
    from pacsinfra.verify.study import make_study

    out = {}
    for name in COMPRESSED:
        src = get_testdata_file(name)
        assert src is not None, name
        out[name] = _renamed(pydicom.dcmread(src), f"VIEWER^{name.split('.')[0][:20]}")
    ct = _renamed(make_study("ct", instances=1, scale=0.25)[0], "SMITH^JOHN")
    icon = Dataset()  # a 64x64 icon: binary data inside a sequence, over the inline size
    icon.Rows = icon.Columns = 64
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(256)) * 16
    ct.IconImageSequence = [icon]
    out["ct"] = ct
    out["multiframe"] = _renamed(make_study("tomo", scale=0.2)[0], "JONES^SMILEY")
    deflated = _renamed(make_study("tomo", scale=0.1)[0], "VIEWER^DEFLATED")
    deflated.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    out["deflated"] = deflated
    src = get_testdata_file("MR_small_bigendian.dcm")
    assert src is not None
    out["bigendian"] = _renamed(pydicom.dcmread(src), "VIEWER^BIGENDIAN")
    out["pdf"], out["video"], out["big"] = _document(), _video(), _big_multiframe()
    bigjpeg = _renamed(pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")),
                       "VIEWER^BIGJPEG")
    bigjpeg.NumberOfFrames = len(BIG_FRAMES)
    bigjpeg.PixelData = encapsulate(BIG_FRAMES)
    out["bigjpeg"] = bigjpeg
    return out


@dataclass
class Site:
    archive: Any
    base: str
    port: int
    stored: dict[str, Stored]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dicomweb-viewer")
    tokens = token_entries(tmp)
    archive, base, port = start_web_archive(tmp, {"tokens": tokens, "limits": {
        "trusted_proxies": [PROXY]}})
    try:
        stored = {}
        for name, ds in _datasets().items():
            r = requests.post(f"{base}/studies", data=multipart([part10(ds)]),
                              headers=stow_headers(), timeout=120)
            assert r.status_code == 200, (name, r.status_code, r.text[:300])
            stored[name] = Stored(ds, f"/studies/{ds.StudyInstanceUID}/series/"
                                      f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
        yield Site(archive, base, port, stored)
    finally:
        archive.stop()


def get(site: Site, path: str, header: str | None = None, **params: str) -> requests.Response:
    """GET with the reader's token, ``header`` as Accept, ``params`` as the query."""
    headers = dict(READER)
    if header is not None:
        headers["Accept"] = header
    return requests.get(site.base + path, headers=headers, params=params or None, timeout=60)


def parts(resp: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer."""
    ctype = resp.headers["content-type"]
    assert ctype.startswith("multipart/related"), ctype
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"')
    out = []
    for chunk in resp.content.split(b"--" + boundary.encode())[1:-1]:
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        part_type = head.decode().split(":", 1)[1].strip()
        out.append((part_type, body[:-2]))
    return out


def frames_accept(media: str = "application/octet-stream", syntax: str = "*") -> str:
    return f'multipart/related; type="{media}"; transfer-syntax={syntax}'


# -- frames ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_frames_as_stored_in_their_media_type(site: Site, name: str) -> None:
    inst = site.stored[name]
    syntax, media = COMPRESSED[name]
    r = get(site, inst.path + "/frames/1", frames_accept())
    assert r.status_code == 200, r.text
    assert f'type="{media}"' in r.headers["content-type"]
    ((ctype, body),) = parts(r)
    assert ctype == f"{media}; transfer-syntax={syntax}"
    frames = int(inst.ds.get("NumberOfFrames", 1) or 1)
    assert body == get_frame(inst.ds.PixelData, 0, number_of_frames=frames)
    # asked for by its own media type and syntax: the same bytes
    r = get(site, inst.path + "/frames/1", frames_accept(media, syntax))
    assert parts(r) == [(ctype, body)]


@pytest.mark.parametrize("name", [*sorted(COMPRESSED), "bigendian", "deflated"])
def test_frames_decoded_to_native_pixels_are_pydicoms(site: Site, name: str) -> None:
    inst = site.stored[name]
    for accept in (frames_accept(syntax=EXPLICIT_LE), "application/octet-stream",
                   'multipart/related; type="application/octet-stream"'):
        r = get(site, inst.path + "/frames/1", accept)
        assert r.status_code == 200, r.text
        if r.headers["content-type"].startswith("multipart/"):
            ((ctype, body),) = parts(r)
        else:
            ctype, body = r.headers["content-type"], r.content
        assert ctype == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        expected = inst.ds.pixel_array
        if int(inst.ds.get("NumberOfFrames", 1) or 1) > 1:
            expected = expected[0]
        assert body == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


def test_native_multiframe_frames_are_cut_from_the_file(site: Site) -> None:
    for name in ("multiframe", "deflated"):
        inst = site.stored[name]
        r = get(site, inst.path + "/frames/3,50,7", frames_accept(syntax=EXPLICIT_LE))
        got = [body for _, body in parts(r)]
        pixels = inst.ds.pixel_array
        assert got == [pixels[i - 1].tobytes() for i in (3, 50, 7)]


@pytest.mark.parametrize("accept", ["*/*", None])
def test_any_media_type_is_the_stored_one(site: Site, accept: str | None) -> None:
    inst = site.stored["MR_small_jpeg_ls_lossless.dcm"]
    headers = {**READER, **({"Accept": accept} if accept else {})}
    with requests.Session() as s:
        s.headers.pop("Accept", None)  # no Accept at all when None
        r = s.get(site.base + inst.path + "/frames/1", headers=headers, timeout=30)
    ((ctype, _),) = parts(r)
    assert ctype == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"


def test_a_single_frame_may_be_single_part(site: Site) -> None:
    inst = site.stored["SC_rgb_jpeg_dcmtk.dcm"]
    r = get(site, inst.path + "/frames/1", "image/jpeg")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert r.content.startswith(b"\xff\xd8")
    # the accept query parameter wins over the header (PS3.18 8.3.3.1)
    r = get(site, inst.path + "/frames/1", "image/png", accept="image/jpeg")
    assert r.status_code == 200 and r.content.startswith(b"\xff\xd8")
    # several frames are always multipart
    r = get(site, site.stored["multiframe"].path + "/frames/1,2", "application/octet-stream")
    assert r.status_code == 406


@pytest.mark.parametrize(("name", "accept"), [
    ("SC_rgb_jpeg_dcmtk.dcm", frames_accept("image/jls", "1.2.840.10008.1.2.4.80")),
    ("SC_rgb_jpeg_dcmtk.dcm", frames_accept("image/jpeg", "1.2.840.10008.1.2.4.70")),
    ("SC_rgb_jpeg_dcmtk.dcm", frames_accept("image/jpeg", EXPLICIT_LE)),
    ("ct", frames_accept("image/jpeg")),
    ("video", frames_accept(syntax=EXPLICIT_LE)),
])
def test_what_cannot_be_made_is_406_saying_what_can(site: Site, name: str, accept: str) -> None:
    r = get(site, site.stored[name].path + "/frames/1", accept)
    assert r.status_code == 406
    assert "available" in error_of(r.content)
    assert site.stored[name].syntax in error_of(r.content) or name == "ct"


@pytest.mark.parametrize("accept", [
    "multipart/related; type=application/octet-stream; transfer-syntax=1.2..3",
    "multipart/related; type=application/octet-stream; q=2",
    "multipart/related; type=application/octet-stream; q=x",
    "not a media type",
    "multipart/related; type",
    ",".join(["image/jpeg"] * 40),
])
def test_a_malformed_accept_is_400(site: Site, accept: str) -> None:
    r = get(site, site.stored["ct"].path + "/frames/1", accept)
    assert r.status_code == 400 and error_of(r.content).startswith("Accept")


def test_accept_preferences_are_weighed(site: Site) -> None:
    inst = site.stored["MR_small_jpeg_ls_lossless.dcm"]
    accept = (f"{frames_accept(syntax=EXPLICIT_LE)}; q=0.5, "
              f"{frames_accept('image/jls', '1.2.840.10008.1.2.4.80')}")
    ((ctype, _),) = parts(get(site, inst.path + "/frames/1", accept))
    assert ctype.startswith("image/jls")
    ((ctype, _),) = parts(get(site, inst.path + "/frames/1",
                              accept.replace("q=0.5", "q=1") + "; q=0.2"))
    assert ctype.startswith("application/octet-stream")


def test_one_frame_of_a_large_instance_costs_little_memory(site: Site) -> None:
    """80 frames of 512x512x16 bits (40 MB): serving frames, decoded or not, and the
    pixel data as bulk data reads what is asked, a megabyte at a time."""
    inst = site.stored["big"]
    pid = site.archive.proc.pid
    get(site, inst.path + "/frames/1", frames_accept())  # warm up (imports, pools)
    before = rss_kib(pid)
    for frame in (80, 40, 2):
        r = get(site, inst.path + f"/frames/{frame}", frames_accept(syntax=EXPLICIT_LE))
        ((_, body),) = parts(r)
        row = np.frombuffer(body, dtype="<u2").reshape(512, 512)[(frame - 1) % 512]
        assert (row == 1000 + frame - 1).all()
    with requests.get(site.base + inst.path + "/bulk/7FE00010", stream=True, timeout=60,
                      headers={**READER, "Accept": "application/octet-stream"}) as r:
        assert r.status_code == 200
        total = sum(len(c) for c in r.iter_content(1 << 20))
    assert total == 80 * 512 * 512 * 2
    grown = rss_kib(pid) - before
    assert grown < 20 * 1024, f"the archive grew by {grown} KiB"


# -- rendered and thumbnails ----------------------------------------------------------------

def _png(site: Site, path: str, **params: str) -> np.ndarray:
    r = get(site, path, "image/png", **params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def _linear(values: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently of the archive's code."""
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    y = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.where(values <= lo, 0, np.where(values > hi, 255, np.rint(y))).astype(np.uint8)


def test_rendered_windowing_is_ps33s(site: Site) -> None:
    inst = site.stored["ct"]
    hu = inst.ds.pixel_array.astype(np.float64) * float(inst.ds.RescaleSlope) + float(
        inst.ds.RescaleIntercept)
    # the instance's own window (40/400)
    got = _png(site, inst.path + "/rendered")
    assert (got == _linear(hu, 40.0, 400.0)).all()
    # the window asked for, each function
    got = _png(site, inst.path + "/rendered", window="-600,1500,linear")
    assert (got == _linear(hu, -600.0, 1500.0)).all()
    exact = _png(site, inst.path + "/frames/1/rendered", window="0,1000,linear-exact")
    expected = np.rint(np.clip((hu - 0) / 1000 + 0.5, 0, 1) * 255).astype(np.uint8)
    assert (exact == expected).all()
    sigmoid = _png(site, inst.path + "/rendered", window="0,1000,sigmoid")
    expected = np.rint(255 / (1 + np.exp(-4 * hu / 1000))).astype(np.uint8)
    assert np.abs(sigmoid.astype(int) - expected).max() <= 1


def test_rendered_without_a_window_spans_min_to_max(site: Site) -> None:
    inst = site.stored["JPEG2000.dcm"]
    assert "WindowCenter" not in inst.ds
    got = _png(site, inst.path + "/rendered")
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 50


def test_rendered_colour_and_jpeg(site: Site) -> None:
    inst = site.stored["SC_rgb_jpeg_gdcm.dcm"]  # lossless RGB: exact
    got = _png(site, inst.path + "/rendered")
    assert got.shape == (100, 100, 3) and (got == inst.ds.pixel_array).all()
    r = get(site, inst.path + "/rendered", "image/jpeg", quality="50")
    assert r.headers["content-type"] == "image/jpeg" and r.content.startswith(b"\xff\xd8")


def test_viewport_scales_and_crops(site: Site) -> None:
    inst = site.stored["multiframe"]  # 378 x 491 (columns x rows)
    image = Image.fromarray(_png(site, inst.path + "/frames/2/rendered", viewport="100,100"))
    assert image.size == (77, 100)
    crop = _png(site, inst.path + "/rendered", viewport="50,50,10,20,50,50")
    assert crop.shape == (50, 50)
    thumb = Image.open(io.BytesIO(get(site, inst.path + "/thumbnail").content))
    assert thumb.format == "JPEG" and thumb.size == (197, 256)


def test_study_and_series_show_the_middle_image(site: Site) -> None:
    inst = site.stored["ct"]
    study = f"/studies/{inst.ds.StudyInstanceUID}"
    series = f"{study}/series/{inst.ds.SeriesInstanceUID}"
    one = _png(site, inst.path + "/rendered")
    assert (_png(site, study + "/rendered") == one).all()
    assert (_png(site, series + "/rendered") == one).all()


@pytest.mark.parametrize(("params", "key"), [
    ({"window": "40,400"}, "window"),
    ({"window": "40,0,linear"}, "window"),
    ({"window": "a,b,linear"}, "window"),
    ({"window": "40,400,cubic"}, "window"),
    ({"viewport": "0,10"}, "viewport"),
    ({"viewport": "10,10,1,1,0,5"}, "viewport"),
    ({"viewport": "99999,10"}, "viewport"),
    ({"viewport": "10,10,5000,5000,10,10"}, "viewport"),
    ({"quality": "0"}, "quality"),
    ({"quality": "high"}, "quality"),
    ({"iccprofile": "srgb"}, "iccprofile"),
    ({"annotation": "everything"}, "annotation"),
    ({"zoom": "2"}, "zoom"),
])
def test_rendering_parameters_are_checked(site: Site, params: dict[str, str], key: str) -> None:
    r = get(site, site.stored["ct"].path + "/rendered", "image/jpeg", **params)
    assert r.status_code == 400, r.text
    assert json.loads(r.content)["key"] == key


def test_rendered_refusals(site: Site) -> None:
    ct = site.stored["ct"]
    assert get(site, ct.path + "/rendered", "image/tiff").status_code == 406
    assert get(site, ct.path + "/frames/2/rendered").status_code == 404
    assert get(site, ct.path + "/frames/1,2/rendered").status_code == 400
    assert get(site, f"/studies/{generate_uid()}/rendered").status_code == 404
    assert get(site, site.stored["pdf"].path + "/rendered", "image/jpeg").status_code == 406


# -- documents and video ---------------------------------------------------------------------

def test_a_pdf_is_single_part_bulk_data_and_its_rendering(site: Site) -> None:
    inst = site.stored["pdf"]
    meta = get(site, inst.path + "/metadata").json()[0]
    uri = meta["00420011"]["BulkDataURI"]
    r = requests.get(uri, headers={**READER, "Accept": "application/pdf"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content == PDF  # without the padding byte
    r = requests.get(uri, headers={**READER, "Accept": 'multipart/related; type="application/pdf"'},
                     timeout=30)
    assert parts(r) == [("application/pdf", PDF)]
    r = requests.get(uri, headers=READER, timeout=30)  # as stored, padding and all
    assert parts(r) == [("application/octet-stream", PDF + b"\0")]
    r = get(site, inst.path + "/rendered", "application/pdf")
    assert r.status_code == 200 and r.content == PDF
    assert get(site, inst.path + "/bulk/00420011", "image/jpeg").status_code == 406


def test_encapsulated_pixel_data_as_stored(site: Site) -> None:
    """Bulk data of encapsulated pixel data is the value as stored (items and all), read
    from disk without the file's parse holding it."""
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm", "bigjpeg"):
        inst = site.stored[name]
        r = get(site, inst.path + "/bulk/7FE00010", "application/octet-stream")
        assert r.status_code == 200 and r.content == inst.ds.PixelData, name
    inst = site.stored["bigjpeg"]
    r = get(site, inst.path + "/frames/3,1", frames_accept())
    assert [body for _, body in parts(r)] == [BIG_FRAMES[2], BIG_FRAMES[0]]
    r = get(site, inst.path + "/frames/2", frames_accept(syntax=EXPLICIT_LE))
    assert r.status_code == 422 and "decode" in error_of(r.content)  # not a real JPEG


def test_a_video_is_its_stream(site: Site) -> None:
    inst = site.stored["video"]
    r = get(site, inst.path + "/bulk/7FE00010", "video/mp4")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.content == b"".join(VIDEO)
    r = get(site, inst.path + "/rendered", "video/mp4")
    assert r.status_code == 200 and r.content == b"".join(VIDEO)
    r = get(site, inst.path + "/bulk/7FE00010", 'multipart/related; type="video/*"')
    assert parts(r) == [("video/mp4", b"".join(VIDEO))]


# -- metadata -----------------------------------------------------------------------------

def test_metadata_is_the_same_encoded_or_cached(site: Site) -> None:
    inst = site.stored["ct"]
    series = inst.path.rsplit("/instances/", 1)[0]
    first = get(site, series + "/metadata").content  # encoded (or cached by an earlier test)
    again = get(site, series + "/metadata").content  # cached
    assert first == again
    (doc,) = json.loads(again)
    assert doc["00100010"]["Value"] == [{"Alphabetic": "SMITH^JOHN"}]
    assert doc["7FE00010"]["BulkDataURI"] == f"{site.base}{inst.path}/bulk/7FE00010"
    # binary data inside a sequence is inline: a BulkDataURI names a top-level element
    (icon,) = doc["00880200"]["Value"]
    assert "InlineBinary" in icon["7FE00010"] and "BulkDataURI" not in icon["7FE00010"]
    # the same cached document behind the proxy: its URLs are the client's
    status, _, body = request(site.port, "GET", series + "/metadata", {**READER, **FORWARDED},
                              source=PROXY)
    assert json.loads(body)[0]["7FE00010"]["BulkDataURI"] == (
        f"https://viewer.example:8443/dicom-web{inst.path}/bulk/7FE00010")


# -- QIDO-RS ---------------------------------------------------------------------------------

def test_instance_search_answers_what_a_viewer_lays_out_with(site: Site) -> None:
    for name, (rows, cols, bits, frames) in {
            "multiframe": (491, 378, 16, 50), "SC_rgb_jpeg_dcmtk.dcm": (100, 100, 8, 1),
            "JPGExtended.dcm": (1024, 256, 16, 1), "pdf": (None, None, None, None)}.items():
        ds = site.stored[name].ds
        (found,) = get(site, f"/studies/{ds.StudyInstanceUID}/instances").json()
        values = [found[t].get("Value", [None])[0]
                  for t in ("00280010", "00280011", "00280100", "00280008")]
        assert values == [rows, cols, bits, frames], name
        assert found["00080016"]["Value"] == [ds.SOPClassUID]
        assert found["00081190"]["Value"] == [site.base + site.stored[name].path]


def test_fuzzy_matching_limit_offset_includefield(site: Site) -> None:
    def patients(**params: str) -> list[str]:
        found = get(site, "/studies", **params).json()
        return sorted(s["00100010"]["Value"][0]["Alphabetic"] for s in found)

    assert patients(PatientName="smi") == []
    assert patients(PatientName="smi", fuzzymatching="true") == ["JONES^SMILEY", "SMITH^JOHN"]
    assert patients(PatientName="joh", fuzzymatching="true") == ["SMITH^JOHN"]
    assert patients(PatientName="SMI*", fuzzymatching="false") == ["SMITH^JOHN"]
    everything = get(site, "/studies").json()
    page = get(site, "/studies", limit="3", offset="2").json()
    assert page == everything[2:5]
    (study,) = get(site, "/studies", StudyInstanceUID=site.stored["ct"].ds.StudyInstanceUID,
                   includefield="00081030,StudyDescription").json()
    assert "00081030" in study and study["00080061"]["Value"] == ["CT"]
    assert study["00201208"]["Value"] == [1]


# -- forwarding headers -----------------------------------------------------------------------

FORWARDED = {"X-Forwarded-Host": "viewer.example:8443", "X-Forwarded-Proto": "https",
             "X-Forwarded-Prefix": "/dicom-web", "X-Forwarded-For": "192.0.2.44"}


def _bulk_uri(site: Site, source: str, headers: dict[str, str]) -> tuple[int, str]:
    inst = site.stored["multiframe"]
    status, _, body = request(site.port, "GET", inst.path + "/metadata",
                              {**READER, **headers}, source=source)
    if status != 200:
        return status, error_of(body)
    return status, json.loads(body)[0]["7FE00010"]["BulkDataURI"]


def test_urls_follow_the_trusted_proxy_only(site: Site) -> None:
    inst = site.stored["multiframe"]
    status, uri = _bulk_uri(site, PROXY, FORWARDED)
    assert status == 200 and uri == f"https://viewer.example:8443/dicom-web{inst.path}/bulk/7FE00010"
    status, uri = _bulk_uri(site, PROXY, {"Forwarded": 'for=192.0.2.44;proto=http;host="v:1"'})
    assert uri.startswith("http://v:1/studies/")
    # anyone else's forwarding headers change nothing (the Host they sent is theirs)
    status, uri = _bulk_uri(site, "127.0.0.1", FORWARDED)
    assert status == 200 and uri == f"http://test{inst.path}/bulk/7FE00010"
    status, uri = _bulk_uri(site, "127.0.0.1", {"X-Forwarded-Prefix": "/../evil"})
    assert status == 200 and uri.startswith("http://test/studies/")
    # the trusted proxy sending nonsense is told so
    status, reason = _bulk_uri(site, PROXY, {"X-Forwarded-Prefix": "/../evil"})
    assert status == 400 and "Prefix" in reason
    status, reason = _bulk_uri(site, PROXY, {"X-Forwarded-Proto": "ftp"})
    assert status == 400


def test_qido_retrieve_urls_behind_the_proxy(site: Site) -> None:
    ds = site.stored["ct"].ds
    status, _, body = request(site.port, "GET", f"/studies?StudyInstanceUID={ds.StudyInstanceUID}",
                              {**READER, **FORWARDED}, source=PROXY)
    assert status == 200
    assert json.loads(body)[0]["00081190"]["Value"] == [
        f"https://viewer.example:8443/dicom-web/studies/{ds.StudyInstanceUID}"]


# -- who may ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tail", ["/rendered", "/thumbnail", "/frames/1",
                                  "/frames/1/rendered", "/bulk/7FE00010"])
def test_pixels_need_the_read_scope(site: Site, tail: str) -> None:
    path = site.stored["ct"].path + tail
    r = requests.get(site.base + path, timeout=30)
    assert r.status_code == 401 and error_of(r.content)
    r = requests.get(site.base + path, headers=auth("writer"), timeout=30)
    assert r.status_code == 403 and "read" in error_of(r.content)


def test_nothing_was_answered_500(site: Site) -> None:
    """Every refusal above was a deliberate one: a bug is logged as "DICOMweb <method>
    <path> failed" with its traceback (and answered 500)."""
    import re

    logs = site.archive.logs()
    assert "refused GET" in logs  # the log is the archive's, and refusals are in it
    bugs = re.findall(r"DICOMweb [A-Z]+ \S+ failed", logs)
    assert not bugs, bugs
