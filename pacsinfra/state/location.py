"""Where a site's state lives: parsing ``--state``, ``PACSINFRA_STATE`` and durations.

Pure parsing, no I/O. A location is a file path (the local backend),
``postgresql://USER@HOST:PORT/DB?schema=S&lease=30s`` or
``s3://BUCKET/PREFIX?endpoint=URL&region=R&lease=30s``. Anything else that looks
like a URL is refused: a mistyped scheme must never become a directory name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from pacsinfra.errors import UsageError

ENV_STATE = "PACSINFRA_STATE"
ENV_LEASE = "PACSINFRA_STATE_LEASE"
DEFAULT_LEASE = 120.0
DEFAULT_SCHEMA = "pacsinfra"

_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_KNOWN = {"file": "local", "postgresql": "postgresql", "postgres": "postgresql", "s3": "s3"}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

FORMS = (
    "a file path, postgresql://USER@HOST:PORT/DB?schema=S, or "
    "s3://BUCKET/PREFIX?endpoint=URL&region=R"
)


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """Seconds in ``text`` (``30s``, ``2m``, ``1h``, ``500ms``, or plain seconds ``120``)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"{what} must not be negative, got {text}")
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m:
        raise UsageError(
            f"{what}: {text!r} is not a duration; write e.g. 30s, 2m, 1h or a number of seconds"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class StateLocation:
    """A parsed state location (never holds a password or key)."""

    backend: str  # local | postgresql | s3
    path: str = ""  # local: the file
    conninfo: str = ""  # postgresql: libpq URI without password and pacsinfra's parameters
    schema: str = DEFAULT_SCHEMA
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    lease: float | None = None  # seconds; None: the default (or PACSINFRA_STATE_LEASE)
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """A human name for the location (safe to print: no secret)."""
        if self.backend == "local":
            return self.path
        if self.backend == "postgresql":
            return f"{self.conninfo} (schema {self.schema})"
        ep = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{ep}"


def check_schema(schema: str) -> str:
    """A PostgreSQL schema name pacsinfra accepts (plain lower-case identifier)."""
    if not _IDENT_RE.match(schema):
        raise UsageError(
            f"state schema {schema!r} is not a plain identifier; use lower-case letters, "
            "digits and _ (e.g. pacsinfra)"
        )
    return schema


def parse_state_url(text: str, *, source: str = "--state") -> StateLocation:
    """Parse a state location; unknown schemes and passwords in URLs are refused (exit 2)."""
    text = text.strip()
    if not text:
        raise UsageError(f"{source} is empty; give {FORMS}")
    m = _URL_RE.match(text)
    if m is None or (len(m.group(1)) == 1 and m.group(2) is None):  # C:\… is a path
        return StateLocation("local", path=text)
    scheme = m.group(1).lower()
    backend = _KNOWN.get(scheme)
    if backend is None:
        raise UsageError(
            f"{source} {text!r}: unknown state backend {scheme!r}; give {FORMS}"
        )
    if m.group(2) is None:
        raise UsageError(f"{source} {text!r}: write {scheme}://…; give {FORMS}")
    parts = urlsplit(text)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    lease = parse_duration(params.pop("lease"), f"{source} lease=") if "lease" in params else None
    if backend == "local":
        if not parts.path:
            raise UsageError(f"{source} {text!r}: file:// needs a path, e.g. file:///srv/a.json")
        return StateLocation("local", path=parts.path, lease=lease)
    if parts.password is not None:
        raise UsageError(
            f"{source}: a password in the URL would end up in shell history and logs; "
            "remove it and set PGPASSWORD or ~/.pgpass (as libpq does)"
        )
    if backend == "postgresql":
        return _postgres(text, parts, params, lease, source)
    if not parts.hostname:
        raise UsageError(f"{source} {text!r}: s3:// needs a bucket, e.g. s3://bucket/prefix")
    endpoint = params.pop("endpoint", None) or None
    region = params.pop("region", None) or None
    if params:
        raise UsageError(
            f"{source}: unknown s3 parameter(s) {', '.join(sorted(params))}; "
            "known: endpoint, region, lease"
        )
    return StateLocation(
        "s3",
        bucket=parts.netloc,
        prefix=parts.path.strip("/"),
        endpoint=endpoint,
        region=region,
        lease=lease,
    )


def _postgres(
    text: str, parts: object, params: dict[str, str], lease: float | None, source: str
) -> StateLocation:
    from urllib.parse import SplitResult, urlencode

    assert isinstance(parts, SplitResult)
    if not parts.path.strip("/"):
        raise UsageError(
            f"{source} {text!r}: name the database, e.g. postgresql://USER@HOST:5432/DB"
        )
    schema = check_schema(params.pop("schema", DEFAULT_SCHEMA))
    for bad in ("password",):
        if bad in params:
            raise UsageError(f"{source}: no {bad}= in the URL; use PGPASSWORD or ~/.pgpass")
    query = urlencode(params)
    conninfo = f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return StateLocation("postgresql", conninfo=conninfo, schema=schema, lease=lease)


def from_environment() -> StateLocation | None:
    """``PACSINFRA_STATE``, parsed, if set."""
    value = os.environ.get(ENV_STATE, "").strip()
    return parse_state_url(value, source=ENV_STATE) if value else None


def lease_seconds(location_lease: float | None, blueprint_lease: str | None = None) -> float:
    """The lease length: URL ``lease=``, else ``PACSINFRA_STATE_LEASE``, else the blueprint's
    ``state.lease``, else 2 minutes."""
    if location_lease is not None:
        value = location_lease
    elif os.environ.get(ENV_LEASE, "").strip():
        value = parse_duration(os.environ[ENV_LEASE], ENV_LEASE)
    elif blueprint_lease:
        value = parse_duration(blueprint_lease, "state.lease")
    else:
        value = DEFAULT_LEASE
    if value < 1.0:
        raise UsageError(f"state lease must be at least 1s, got {value:g}s")
    return value
