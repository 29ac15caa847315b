"""Content negotiation for pixel data (PS3.18 8.7.3): which media type and transfer
syntax to answer a frames or bulk data request in, from its ``Accept`` header (or the
``accept`` query parameter, which wins, 8.3.3.1).

An Accept entry is either ``multipart/related; type="<part type>"; transfer-syntax=<uid>``
or a single-part media type (``image/jpeg``, ``application/octet-stream`` ...) with an
optional ``transfer-syntax``; a missing transfer syntax means the media type's default
(Explicit VR Little Endian for ``application/octet-stream``), ``*`` means "as stored".
No Accept, or ``*/*``, accepts any media type: the pixel data as stored, multipart.
Entries are tried by their ``q`` (then in order); the first the archive can honour
wins: the stored bytes when their syntax is acceptable, else a decoded frame when
native pixels are acceptable and a codec is installed. Nothing acceptable is a 406 that
says what is available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pacsinfra.pacs.archive.pixels import (
    DEFAULT_SYNTAX,
    EXPLICIT_LE,
    IMPLICIT_LE,
    LITTLE_ENDIAN_NATIVE,
    OCTET_STREAM,
    can_decode,
    is_native,
    media_type,
)
from pacsinfra.pacs.archive.web.errors import Refusal

MAX_ENTRIES = 32
_UID_OR_STAR = re.compile(r"^(?:\*|[0-9]+(?:\.[0-9]+)*)$")
_MEDIA = re.compile(r"^(?:\*|[A-Za-z0-9!#$&^_.+-]+)/(?:\*|[A-Za-z0-9!#$&^_.+-]+)$")


@dataclass(frozen=True)
class Wanted:
    """One acceptable representation: a part media type ("*/*" for any), a transfer
    syntax ("*" for as stored, None for the media type's default), multipart or not."""

    media: str
    syntax: str | None
    multipart: bool
    q: float = 1.0


@dataclass(frozen=True)
class Choice:
    """How to answer: the part media type and transfer syntax, whether the stored
    frames must be decoded first, and whether the answer is multipart."""

    media: str
    syntax: str
    decode: bool
    multipart: bool

    def content_type(self) -> str:
        """The Content-Type of each part (or of a single-part answer)."""
        return f"{self.media}; transfer-syntax={self.syntax}"


def _split(text: str, sep: str) -> list[str]:
    out, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def parse_accept(header: str) -> list[Wanted]:
    """The entries of an Accept header, best first; 400 when it cannot be read."""
    entries: list[Wanted] = []
    items = [i for i in _split(header, ",") if i.strip()]
    if len(items) > MAX_ENTRIES:
        raise Refusal(400, f"Accept has more than {MAX_ENTRIES} entries")
    for item in items:
        head, *params = _split(item, ";")
        media = head.strip().lower()
        if not _MEDIA.match(media):
            raise Refusal(400, f"Accept: {media[:64]!r} is not a media type")
        values: dict[str, str] = {}
        for param in params:
            name, eq, value = param.partition("=")
            if not eq:
                raise Refusal(400, "Accept: a media type parameter is not name=value")
            values[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(values.get("q", "1"))
        except ValueError:
            raise Refusal(400, "Accept: q is not a number") from None
        if not 0 <= q <= 1:
            raise Refusal(400, "Accept: q is between 0 and 1")
        syntax = values.get("transfer-syntax")
        if syntax is not None and not _UID_OR_STAR.match(syntax):
            raise Refusal(400, "Accept: transfer-syntax is a UID or *")
        if media == "multipart/related":
            part = values.get("type", OCTET_STREAM).lower()
            if not _MEDIA.match(part):
                raise Refusal(400, "Accept: the multipart type is not a media type")
            entries.append(Wanted(_canonical(part), syntax, True, q))
        elif media in ("*/*", "multipart/*"):
            entries.append(Wanted("*/*", syntax, True, q))  # multipart: the usual answer
            if media == "*/*":
                entries.append(Wanted("*/*", syntax, False, q))
        else:
            entries.append(Wanted(_canonical(media), syntax, False, q))
    ranked = sorted(enumerate(entries), key=lambda e: (-e[1].q, e[0]))
    return [w for _, w in ranked if w.q > 0]


def _canonical(media: str) -> str:
    return "video/H265" if media == "video/h265" else media


def choose(wanted: list[Wanted], stored: str, *, multipart_ok: bool = True,
           single_ok: bool = True) -> Choice:
    """The first acceptable way to send frames stored in ``stored``; 406 when none is."""
    for w in wanted:
        if w.multipart and not multipart_ok or not w.multipart and not single_ok:
            continue
        choice = _honour(w, stored)
        if choice is not None:
            return choice
    offer = f"{media_type(stored)}; transfer-syntax={stored}"
    if not is_native(stored) and can_decode(stored):
        offer += f", or decoded: {OCTET_STREAM}; transfer-syntax={EXPLICIT_LE}"
    raise Refusal(406, f"not available in an acceptable form: the pixel data is stored as "
                  f"{offer} (multipart/related{' or single part' if single_ok else ''})")


def _honour(w: Wanted, stored: str) -> Choice | None:
    stored_media = media_type(stored)
    anything = w.media == "*/*"  # any media type will do: the stored one does
    syntax = (w.syntax or "*") if anything else (w.syntax or DEFAULT_SYNTAX.get(w.media))
    if syntax is None or not anything and w.media not in (OCTET_STREAM, stored_media):
        return None
    if syntax == "*" or syntax == stored:
        shown = EXPLICIT_LE if stored in LITTLE_ENDIAN_NATIVE else stored
        return Choice(stored_media, shown, False, w.multipart)
    if w.media not in (OCTET_STREAM, "*/*") or syntax not in (EXPLICIT_LE, IMPLICIT_LE):
        return None  # transcoding to another compressed syntax: not done here
    if stored in LITTLE_ENDIAN_NATIVE:
        return Choice(OCTET_STREAM, syntax, False, w.multipart)
    if can_decode(stored):
        return Choice(OCTET_STREAM, syntax, True, w.multipart)
    return None


def wanted_of(query_accept: str | None, header: str | None, default: str = "*/*"
              ) -> list[Wanted]:
    """What the request accepts: the ``accept`` query parameter, else the header, else
    ``default`` when neither says anything (an Accept of only q=0 accepts nothing)."""
    text = query_accept if query_accept is not None else header or ""
    return parse_accept(text if text.strip() else default)


__all__ = ["Choice", "Wanted", "choose", "parse_accept", "wanted_of"]
