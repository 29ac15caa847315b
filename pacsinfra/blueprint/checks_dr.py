"""Checks of the ``dr`` section: where ``pacsinfra dr rebuild`` finds the site's backups.

- ``dr.backups`` is an absolute path (``/...`` or ``~/...`` on the pacsinfra machine) or
  ``s3://bucket[/prefix]`` with a valid bucket name (code ``dr-backups``): a relative path
  would depend on the directory a rebuild happens to run from, on the worst day to find
  out;
- ``dr.s3.endpoint`` is an ``http(s)://`` URL; ``access_key`` and ``secret_key`` come
  together (code ``dr-s3``);
- ``dr.s3`` with a filesystem ``backups`` is unused (warning ``dr-s3``), and a site
  without an archive service has nothing to restore (warning ``dr-backups``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacsinfra.blueprint.model import Site
    from pacsinfra.blueprint.report import Reporter

S3_SCHEME = "s3://"
# S3 bucket naming rules: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_BACKUPS_HINT = ("an absolute path on the pacsinfra machine (/srv/backups/site-a) or "
                 "s3://bucket/prefix")


def backups_problem(value: str) -> str | None:
    """Why ``value`` cannot be ``dr.backups`` (None when it can)."""
    if value.startswith(S3_SCHEME):
        bucket = value[len(S3_SCHEME):].partition("/")[0]
        if not _BUCKET.match(bucket):
            return (f"{value!r}: {bucket!r} is not an S3 bucket name (3-63 lower-case letters, "
                    "digits, '.' and '-')")
        return None
    if "://" in value:
        return f"{value!r}: only s3:// locations and paths are supported"
    if not value.startswith(("/", "~/")) or not value.strip():
        return f"{value!r} is not an absolute path"
    return None


def check_dr(site: Site, r: Reporter) -> None:
    """Diagnostics for the ``dr`` section (nothing when it is absent)."""
    dr = site.dr
    if dr is None:
        return
    problem = backups_problem(dr.backups)
    if problem is not None:
        r.add(("dr", "backups"), problem, hint=_BACKUPS_HINT, code="dr-backups")
    s3 = dr.s3
    if s3 is not None:
        if not dr.backups.startswith(S3_SCHEME):
            r.warn(("dr", "s3"), "dr.s3 is unused: dr.backups is not an s3:// location",
                   hint="drop dr.s3, or point dr.backups at s3://bucket/prefix", code="dr-s3",
                   key=True)
        if s3.endpoint is not None and not _URL.match(s3.endpoint):
            r.add(("dr", "s3", "endpoint"), f"{s3.endpoint!r} is not an http(s) URL",
                  hint="e.g. https://minio.example:9000", code="dr-s3")
        if (s3.access_key is None) != (s3.secret_key is None):
            given, other = (("access_key", "secret_key") if s3.access_key is not None
                            else ("secret_key", "access_key"))
            r.add(("dr", "s3", given), f"{given} without {other}: S3 credentials are a pair",
                  hint="add the other one, or drop both to use the AWS environment "
                  "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)", code="dr-s3", key=True)
    if not any(s.kind == "archive" for s in site.services.values()) and not r.dropped.get(
            "services"):
        r.warn(("dr",), "dr.backups is set but the site has no archive service to restore "
               "into", hint="dr rebuild restores archives; add services.<name>: {kind: "
               "archive, ...}", code="dr-backups", key=True)
