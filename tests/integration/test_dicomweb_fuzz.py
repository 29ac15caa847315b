"""HTTP fuzzing of every DICOMweb route of a real archive (hypothesis, raw sockets).

Requests are drawn from the routes' shapes with hostile parts: UIDs and path segments
that are not UIDs (traversal, encodings, unicode, length), query keys and values of
every kind, Authorization and Content-Type variants, Content-Lengths that lie in both
directions, multipart bodies with wrong, missing or repeated boundaries, lying part
headers, truncated and non-DICOM parts. For every request: an answer below 500, a
JSON reason on every refusal, the server still up. At the end: the archive's memory
under a bound, and nothing written outside its data directory (the process runs in
a sandbox whose every other file is compared before and after). One archive for the
module; about a minute of requests (``PX_FUZZ_EXAMPLES`` per test, 1500 by default).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, need_module
from dicomweb_support import TOKENS, Raw, multipart, part10, rss_kib, token_entries
from test_archive_support import REPO, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

need_module("hypothesis")
need_module("starlette")
need_module("uvicorn")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402

RSS_LIMIT_MIB = 400
SETTINGS = settings(max_examples=int(os.environ.get("PX_FUZZ_EXAMPLES", "1500")), deadline=None,
                    suppress_health_check=list(HealthCheck), database=None)


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
        for name in files:
            p = Path(dirpath, name)
            st_ = p.stat()
            out[str(p.relative_to(root))] = (st_.st_size, st_.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    sandbox = tmp_path_factory.mktemp("fuzz")
    data = sandbox / "data"
    for d in ("cwd", "home", "tmp", "secrets"):
        (sandbox / d).mkdir()
    http = free_port()
    cfg = {"ae_title": "FUZZ", "bind": "127.0.0.1", "port": free_port(), "data_dir": str(data),
           "audit": {"file": str(data / "audit.jsonl")},
           "dicomweb": {"enabled": True, "bind": "127.0.0.1", "port": http,
                        "tokens": token_entries(sandbox / "secrets"),
                        "limits": {"header_timeout_seconds": 2, "body_timeout_seconds": 1,
                                   "keep_alive_seconds": 1, "stow_timeout_seconds": 5,
                                   "max_stow_bytes": 4 * 1024 * 1024, "max_stow_parts": 20,
                                   "max_requests_per_client": 64}}}
    data.mkdir(mode=0o750)
    (sandbox / "cwd" / "archive.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path_factory.mktemp("fuzzlog") / "archive.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(sandbox / "home"),
           "TMPDIR": str(sandbox / "tmp")}
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pacsinfra",
                                 "archive", "serve", "--config", "archive.yaml"],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=sandbox / "cwd",
                                env=env)
    wait_port(http, proc=proc)
    before = _tree(sandbox, data)
    state = {"proc": proc, "port": http, "sandbox": sandbox, "data": data, "log": log,
             "instances": [], "answers": {},
             "pool": [part10(make_instance(patient_id="FUZZSTOW", rows=2, cols=2))
                      for _ in range(3)]}
    # a few stored instances, so valid UIDs in paths reach real data
    for i in range(3):
        ds = make_instance(patient_id=f"FUZZ{i}", rows=4, cols=4)
        status, body = _send(state, _request("POST", "/studies", {
            "Authorization": f"Bearer {TOKENS['writer'][0]}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=fz'},
            multipart([part10(ds)], boundary="fz")))
        assert status == 200, body
        state["instances"].append(ds)
    yield state
    alive = proc.poll() is None
    rss = rss_kib(proc.pid) / 1024 if alive else 0.0
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    logs = log.read_text(errors="replace")
    assert alive, logs[-3000:]
    assert rss < RSS_LIMIT_MIB, f"archive RSS {rss:.0f} MiB after fuzzing"
    assert _tree(sandbox, data) == before, "files changed outside the data directory"
    assert "Traceback" not in logs, logs[logs.find("Traceback") - 500:][:3000]
    print(f"fuzz: {sum(state['answers'].values())} requests, statuses {state['answers']}, "
          f"RSS {rss:.0f} MiB")


def _request(method: str, target: str, headers: dict[str, str], body: bytes,
             length: int | None = -1) -> bytes:
    """A raw request; ``length`` -1: the true Content-Length, None: none (chunked body)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is None:
        lines.append("Transfer-Encoding: chunked")
        chunked = b"".join(f"{len(body[i:i + 4096]):x}\r\n".encode() + body[i:i + 4096] + b"\r\n"
                           for i in range(0, len(body), 4096)) + b"0\r\n\r\n"
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + chunked
    lines.append(f"Content-Length: {len(body) if length == -1 else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _send(state: dict[str, Any], data: bytes) -> tuple[int, bytes]:
    raw = Raw(state["port"], timeout=20)
    try:
        try:
            raw.send(data)
        except OSError:
            pass  # refused while we were still sending: the answer is what counts
        status, headers, body = raw.response(to_head=data.startswith(b"HEAD "))
    finally:
        raw.close()
    state["answers"][status] = state["answers"].get(status, 0) + 1
    assert 100 <= status < 500, (status, data[:300], body[:500])
    if status >= 400 and not data.startswith(b"HEAD "):
        doc = json.loads(body)
        if headers.get("content-type") == "application/dicom+json":
            # STOW-RS: the PS3.18 response, each failure with its reason
            assert status == 409 and "00081198" in doc, (status, data[:300])
        else:
            assert headers.get("content-type") == "application/json", (status, data[:300])
            assert isinstance(doc.get("error"), str) and "Traceback" not in doc["error"]
    assert state["proc"].poll() is None, "the archive died"
    return status, body


# -- strategies ---------------------------------------------------------------------------
def _uid_like(state: dict[str, Any]) -> st.SearchStrategy[str]:
    real = [u for ds in state["instances"] for u in
            (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)]
    return st.one_of(
        st.sampled_from(real),
        st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,6}", fullmatch=True),
        st.sampled_from(["..", "../../etc/passwd", "%2e%2e%2f", "1..2", "1.2.", ".", "-1",
                         "1" * 65, "1.2" * 40, "%00", "\u00e9", "1.2.3\\4", "0.0", "*", ""]),
        st.text(max_size=80),
    )


SEGMENT_ROUTES = [
    "/studies", "/series", "/instances", "/studies/{a}", "/studies/{a}/series",
    "/studies/{a}/instances", "/studies/{a}/metadata", "/studies/{a}/series/{b}",
    "/studies/{a}/series/{b}/instances", "/studies/{a}/series/{b}/metadata",
    "/studies/{a}/series/{b}/instances/{c}", "/studies/{a}/series/{b}/instances/{c}/metadata",
    "/studies/{a}/series/{b}/instances/{c}/frames/{f}",
    "/studies/{a}/series/{b}/instances/{c}/bulk/{t}", "/metrics", "/", "/{a}",
    "/studies/{a}/{b}",
    "/studies/{a}/rendered", "/studies/{a}/thumbnail", "/studies/{a}/series/{b}/rendered",
    "/studies/{a}/series/{b}/thumbnail", "/studies/{a}/series/{b}/instances/{c}/rendered",
    "/studies/{a}/series/{b}/instances/{c}/thumbnail",
    "/studies/{a}/series/{b}/instances/{c}/frames/{f}/rendered",
    "/studies/{a}/series/{b}/instances/{c}/frames/{f}/thumbnail",
]
KEYS = ["PatientID", "PatientName", "StudyDate", "StudyTime", "StudyInstanceUID",
        "SeriesInstanceUID", "SOPInstanceUID", "Modality", "ModalitiesInStudy",
        "AccessionNumber", "NumberOfStudyRelatedInstances", "SeriesNumber", "InstanceNumber",
        "00100020", "0020000D", "00081110", "ReferencedStudySequence.ReferencedSOPInstanceUID",
        "Rows", "limit", "offset", "includefield", "fuzzymatching", "Foo", "", "\u00fc",
        "window", "viewport", "quality", "accept", "annotation", "iccprofile"]
VALUES = st.one_of(st.sampled_from(["", "*", "a*", "?", "20240101", "20240101-", "-20240101",
                                    "2024-01-01", "101500", "25", "CT", "CT\\MR", "CT,MR",
                                    "all", "true", "-1", "0", "1", "10000", "10001",
                                    "99999999999999999999", "9223372036854775808", "1000001", "1e9", "\x00", "'; DROP TABLE x;--",
                                    "%", "_", "!", "\\", "a" * 400,
                                    "40,400,linear", "1e308,1e308,sigmoid", "nan,1,linear",
                                    "0,1e-300,linear-exact", "4096,4096", "1,1,0,0,-5,-5",
                                    "10,10,99999,99999,1,1", "image/png", "video/mp4",
                                    "multipart/related; type=image/jpeg"]),
                   st.integers(-(2**70), 2**70).map(str), st.text(max_size=40))


def _auth(strong: str) -> st.SearchStrategy[dict[str, str]]:
    """Mostly ``strong``'s token (to get past authentication), sometimes any other."""
    tokens = [{"Authorization": f"Bearer {v}"} for v, _ in TOKENS.values()]
    hostile = [{}, {"Authorization": "Bearer x"}, {"Authorization": "Basic YTpi"},
               {"Authorization": "Bearer"}, {"Authorization": "Bearer a.b.c"},
               {"Authorization": "bearer " + TOKENS["admin"][0]},
               {"Authorization": "Bearer " + "A" * 5000}]
    mine = {"Authorization": f"Bearer {TOKENS[strong][0]}"}
    return st.sampled_from([mine] * 8 + tokens + hostile)


SEARCH_ROUTES = ["/studies", "/series", "/instances", "/studies/{a}/series",
                 "/studies/{a}/instances", "/studies/{a}/series/{b}/instances"]
STUDY_PAIRS = [("PatientID", "FUZZ0"), ("PatientID", "FUZZ*"), ("PatientName", "doe*"),
               ("StudyDate", "20240101-20241231"), ("StudyTime", "1015-"),
               ("includefield", "all"), ("includefield", "00100010,StudyID"),
               ("ModalitiesInStudy", "CT"), ("fuzzymatching", "false"),
               ("AccessionNumber", "ACC1")]
LOWER_PAIRS = [("Modality", "CT"), ("SeriesNumber", "1"), ("InstanceNumber", "1")]
CONTROL_VALUES = st.sampled_from(["99999999999999999999", "9223372036854775808", "-1", "0",
                                  "1", "1000000", "1000001", "10000", "10001", "1.5", "0x10",
                                  " 1", "", "\u0661"])


def _path(draw: Any, state: dict[str, Any], route: str, hostile: bool) -> str:
    uid = _uid_like(state) if hostile else st.sampled_from(
        [u for ds in state["instances"] for u in (ds.StudyInstanceUID, ds.SeriesInstanceUID)])
    return route.format(
        a=urllib.parse.quote(draw(uid), safe=""), b=urllib.parse.quote(draw(uid), safe=""),
        c=urllib.parse.quote(draw(uid), safe=""),
        f=draw(st.sampled_from(["1", "0", "1,1", "x", "-1", "99999999999", "1," * 50 + "1"])),
        t=draw(st.sampled_from(["7FE00010", "7fe00010", "zz", "00100010", "FFFFFFFF", "1"])))


def _headers(draw: Any, strong: str) -> dict[str, str]:
    headers = dict(draw(_auth(strong)))
    headers.update(draw(st.sampled_from([{}, {}, {}, {"Accept": "application/dicom+json"},
                                         {"Accept": "application/dicom+xml"},
                                         {"Accept": "*/*"}, {"Accept": "\u00ff" * 3},
                                         {"X-Forwarded-For": "10.0.0.1"},
                                         {"X-Forwarded-Prefix": "/../x", "Forwarded": 'for="'},
                                         {"Accept": "image/jpeg"}, {"Accept": "image/*; q=x"},
                                         {"Accept": "multipart/related; type=image/jls; "
                                          "transfer-syntax=1.2.840.10008.1.2.4.80"},
                                         {"Accept": "multipart/related; type=application/"
                                          "octet-stream; transfer-syntax=1.2.840.10008.1.2.1"},
                                         {"Accept": 'multipart/related; type="application/pdf"'},
                                         {"Accept": "application/octet-stream; q=0"},
                                         {"Range": "bytes=0-10"}])))
    return headers


@st.composite
def search(draw: Any, state: dict[str, Any]) -> bytes:
    """QIDO-RS: mostly sensible queries with one hostile key or value in them."""
    route = draw(st.sampled_from(SEARCH_ROUTES))
    path = _path(draw, state, route, hostile=draw(st.integers(0, 5)) == 0)
    pairs = STUDY_PAIRS + (LOWER_PAIRS if route != "/studies" else [])
    query = draw(st.lists(st.sampled_from(pairs), max_size=3, unique_by=lambda p: p[0]))
    hostile = draw(st.integers(0, 4))
    if hostile in (1, 2):  # a control parameter at its edges
        query.append((draw(st.sampled_from(["limit", "offset"])), draw(CONTROL_VALUES)))
    elif hostile in (3, 4):  # any key, any value
        query.insert(draw(st.integers(0, len(query))),
                     (draw(st.sampled_from(KEYS)), draw(VALUES)))
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    method = draw(st.sampled_from(["GET"] * 8 + ["HEAD", "POST"]))
    return _request(method, target, _headers(draw, "reader"), b"")


@st.composite
def general(draw: Any, state: dict[str, Any]) -> bytes:
    """Any route, any method, hostile path segments and headers."""
    route = draw(st.sampled_from(SEGMENT_ROUTES))
    path = _path(draw, state, route, hostile=draw(st.booleans()))
    query = draw(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=2))
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "DELETE", "POST", "PUT",
                                   "OPTIONS", "PATCH"]))
    headers = _headers(draw, draw(st.sampled_from(["admin", "reader", "deleter"])))
    body = draw(st.sampled_from([b"", b"", b"x", b"{}", b"\0" * 100]))
    length = draw(st.sampled_from([-1, -1, -1, -1, 0]))
    return _request(method, target, headers, body, length)


@st.composite
def stow(draw: Any, state: dict[str, Any]) -> bytes:
    """STOW-RS with hostile multipart bodies and lengths."""
    real = state["instances"]
    path = draw(st.sampled_from(["/studies", f"/studies/{real[0].StudyInstanceUID}",
                                 "/studies/1.2.3", "/studies/..%2f.."]))
    boundary = draw(st.sampled_from(["fz"] * 4 + ["b0undary", "a" * 70, "x" * 71, "", "bad\"b",
                                                  "with space", "é"]))
    body_boundary = draw(st.sampled_from([boundary] * 6 + ["other", boundary[:-1] or "q"]))
    kinds = st.sampled_from(["instance", "garbage", "truncated", "empty", "preamble-only",
                             "meta-only", "huge-meta"])
    parts = []
    for kind in draw(st.lists(kinds, max_size=4)):
        data = draw(st.sampled_from(state["pool"]))  # fixed bytes: draws replay exactly
        if kind == "instance":
            parts.append(data)
        elif kind == "garbage":
            parts.append(draw(st.binary(max_size=300)))
        elif kind == "truncated":
            parts.append(data[:draw(st.integers(0, len(data)))])
        elif kind == "empty":
            parts.append(b"")
        elif kind == "preamble-only":
            parts.append(b"\0" * 128 + b"DICM")
        elif kind == "meta-only":
            parts.append(data[:200])
        else:  # a file meta whose lengths claim 2 GiB
            parts.append(b"\0" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00\xff\xff\xff\x7f"
                         b"\x02\x00\x01\x00OB\x00\x00\xff\xff\xff\x7f")
    ptype = draw(st.sampled_from(["application/dicom"] * 6 + [
        None, "text/plain", "application/dicom; transfer-syntax=1.2", "junk"]))
    body = multipart(parts, boundary=body_boundary or "q", ctype=ptype)
    body = draw(st.sampled_from([body] * 8 + [body[:len(body) // 2],
                                 body.replace(b"\r\n", b"\n"), b"--" + body,
                                 body + draw(st.binary(max_size=50))]))
    if draw(st.integers(0, 4)) == 0:  # a part with a lying Content-Length
        body = body.replace(b"\r\n\r\n", b"\r\nContent-Length: 999999999\r\n\r\n", 1)
    ctype = draw(st.sampled_from([
        f'multipart/related; type="application/dicom"; boundary={boundary}'] * 6 + [
        f'multipart/related; type="application/dicom"; boundary="{boundary}"',
        f"multipart/related; boundary={boundary}", "multipart/related",
        f'multipart/related; type="application/dicom+json"; boundary={boundary}',
        "application/dicom", "multipart/form-data; boundary=x", "",
        f"multipart/related; boundary={boundary}; boundary=second"]))
    headers = dict(draw(_auth("writer")))
    if ctype:
        headers["Content-Type"] = ctype
    # lying lengths: shorter (the rest is read as a next request), longer (the server
    # waits body_timeout_seconds), or chunked
    length = draw(st.sampled_from([-1] * 12 + [None, None, 0, max(0, len(body) - 7),
                                               len(body) + 3, 10**11]))
    return _request("POST", path, headers, body, length)


@SETTINGS
@given(data=st.data())
def test_searches_answer_hostile_queries_below_500(server: dict[str, Any],
                                                   data: st.DataObject) -> None:
    _send(server, data.draw(search(server)))


@SETTINGS
@given(data=st.data())
def test_every_route_answers_hostile_requests_below_500(server: dict[str, Any],
                                                        data: st.DataObject) -> None:
    _send(server, data.draw(general(server)))


@SETTINGS
@given(data=st.data())
def test_stow_answers_hostile_bodies_below_500(server: dict[str, Any],
                                               data: st.DataObject) -> None:
    _send(server, data.draw(stow(server)))


def test_data_stays_in_the_data_directory_and_private(server: dict[str, Any]) -> None:
    data: Path = server["data"]
    top = {p.name for p in data.iterdir()}
    assert top <= {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "archive.lock",
                   "fast", "audit.jsonl"} | {p for p in top if p.startswith(".")}, top
    for dirpath, dirs, files in os.walk(data):
        for name in dirs + files:
            mode = (Path(dirpath) / name).stat().st_mode & 0o777
            assert mode & 0o027 == 0, f"{Path(dirpath) / name} is {oct(mode)}"
    leftovers = [p for p in (data / "fast" / ".incoming").iterdir()]
    assert leftovers == [], "spool files left behind"
