"""An incremental multipart/related parser (RFC 2046 section 5.1, RFC 2387) for STOW-RS.

Bytes go in as they arrive; events come out: :class:`PartStart` (the part's headers),
:class:`PartData` (a piece of its body), :class:`PartEnd`. Nothing is held beyond what a
boundary split across two reads needs, so a body of any size costs a few kilobytes.
Parts are delimited by the boundary alone: a part's own Content-Length, true or not,
is never trusted. Preamble, part headers and the number of parts are bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 2046: boundary := 0*69<bchars> bcharsnospace
_BOUNDARY_RE = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class MultipartError(ValueError):
    """The body is not well-formed multipart (the message says where)."""


class TooManyParts(MultipartError):
    """More parts than allowed."""


@dataclass(frozen=True)
class PartStart:
    """A part begins; header names are lower-case."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    """A piece of the current part's body."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete (its closing delimiter was seen)."""


Event = PartStart | PartData | PartEnd


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower-case) and its parameters (names lower-case, quotes removed).
    Raises ValueError on a malformed header."""
    mime, _, rest = value.partition(";")
    mime = mime.strip().lower()
    if mime.count("/") != 1 or not all(_TOKEN_RE.match(p) for p in mime.split("/")):
        raise ValueError("not a media type")
    params: dict[str, str] = {}
    while rest.strip():
        name, sep, rest = rest.partition("=")
        name = name.strip().lower()
        if not sep or not _TOKEN_RE.match(name):
            raise ValueError(f"malformed parameter {name[:40]!r}")
        rest = rest.lstrip()
        if rest.startswith('"'):
            end = rest.find('"', 1)
            if end < 0:
                raise ValueError(f"unterminated quoted value of {name!r}")
            params[name] = rest[1:end]
            rest = rest[end + 1:]
            junk, _, rest = rest.partition(";")
            if junk.strip():
                raise ValueError(f"text after the quoted value of {name!r}")
        else:
            val, _, rest = rest.partition(";")
            params[name] = val.strip()
    return mime, params


def valid_boundary(boundary: str) -> bool:
    """Whether ``boundary`` is a boundary RFC 2046 allows."""
    return bool(_BOUNDARY_RE.match(boundary))


class MultipartReader:
    """Feed the body with :meth:`feed`; call :meth:`close` at its end."""

    def __init__(self, boundary: str, *, max_parts: int, max_header_bytes: int = 16 * 1024,
                 max_preamble_bytes: int = 64 * 1024) -> None:
        if not valid_boundary(boundary):
            raise MultipartError("invalid multipart boundary")
        self._dash = b"--" + boundary.encode("ascii")
        self._delim = b"\r\n" + self._dash  # what ends a part's body
        self._max_parts = max_parts
        self._max_header = max_header_bytes
        self._max_preamble = max_preamble_bytes
        self._buf = bytearray()
        self._state = "preamble"  # preamble | after_delim | headers | body | epilogue
        self._preamble_seen = 0
        self.parts = 0

    @property
    def done(self) -> bool:
        """Whether the closing delimiter has been read."""
        return self._state == "epilogue"

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; the events it completes, in order."""
        if self._state == "epilogue":
            return []  # the epilogue is ignored (RFC 2046), the body size is bounded elsewhere
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended: raises :class:`MultipartError` unless it was complete."""
        if self._state != "epilogue":
            where = "a part's body" if self._state == "body" else f"the {self._state}"
            raise MultipartError(f"the body ended in {where}, before the closing boundary")

    # -- one step of the state machine: True when it made progress -----------------------
    def _step(self, events: list[Event]) -> bool:
        buf = self._buf
        if self._state == "preamble":
            # the first delimiter may open the body, or follow a CRLF of the preamble
            if self._preamble_seen == 0:
                if buf.startswith(self._dash):
                    del buf[:len(self._dash)]
                    self._state = "after_delim"
                    return True
                if self._dash.startswith(bytes(buf)):
                    return False  # the opening delimiter, not all here yet
            at = buf.find(self._delim)
            if at >= 0:
                self._preamble_seen += at
                del buf[:at + len(self._delim)]
                self._state = "after_delim"
                return True
            keep = len(self._delim) - 1
            if len(buf) > keep:
                self._preamble_seen += len(buf) - keep
                del buf[:len(buf) - keep]
            if self._preamble_seen > self._max_preamble:
                raise MultipartError("no multipart boundary at the start of the body")
            return False
        if self._state == "after_delim":
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self._state = "epilogue"
                buf.clear()
                return False
            # transport padding (linear white space) then CRLF
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 1024:
                    raise MultipartError("a boundary line does not end with CRLF")
                return False
            if buf[:end].strip(b" \t"):
                raise MultipartError("text after a boundary on its line")
            del buf[:end + 2]
            self.parts += 1
            if self.parts > self._max_parts:
                raise TooManyParts(f"more than {self._max_parts} parts")
            self._state = "headers"
            return True
        if self._state == "headers":
            if buf.startswith(b"\r\n"):
                head, cut = b"", 2  # a part without headers
            else:
                at = buf.find(b"\r\n\r\n")
                if at < 0:
                    if len(buf) > self._max_header:
                        raise MultipartError(f"part headers longer than {self._max_header} bytes")
                    return False
                head, cut = bytes(buf[:at]), at + 4
            if cut - 2 > self._max_header:
                raise MultipartError(f"part headers longer than {self._max_header} bytes")
            del buf[:cut]
            events.append(PartStart(_headers(head)))
            self._state = "body"
            return True
        if self._state == "body":
            at = buf.find(self._delim)
            if at >= 0:
                if at:
                    events.append(PartData(bytes(buf[:at])))
                del buf[:at + len(self._delim)]
                events.append(PartEnd())
                self._state = "after_delim"
                return True
            keep = len(self._delim) - 1  # a delimiter may be split across reads
            if len(buf) > keep:
                events.append(PartData(bytes(buf[:len(buf) - keep])))
                del buf[:len(buf) - keep]
            return False
        return False


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    last = None
    for line in head.decode("latin-1").split("\r\n") if head else []:
        if line[:1] in (" ", "\t") and last is not None:  # folded (obsolete, still legal)
            out[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not _TOKEN_RE.match(name):
            raise MultipartError("malformed part header line")
        out[name] = value.strip()
        last = name
    return out
