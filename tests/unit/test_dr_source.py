"""Which backup ``dr rebuild`` uses, and how it reaches an S3 store (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsinfra.blueprint.checks_dr import backups_problem
from pacsinfra.blueprint.model import DisasterRecovery
from pacsinfra.dr.source import choose
from pacsinfra.errors import UsageError


def _dr(**s3: object) -> DisasterRecovery:
    return DisasterRecovery.model_validate(
        {"backups": "s3://dr-bucket/site-a", **({"s3": s3} if s3 else {})})


def test_from_beats_the_blueprint_and_keeps_its_s3_settings() -> None:
    dr = _dr(endpoint="https://minio.example:9000", access_key={"env": "K"},
             secret_key={"file": "/etc/s"})
    src = choose("/backups/other", None, None, dr)
    assert (src.location, src.origin) == ("/backups/other", "--from")
    assert src.endpoint == "https://minio.example:9000"
    assert src.access_key.describe() == "environment variable K"
    assert src.secret_key.describe() == "file /etc/s"


def test_blueprint_source_and_endpoint_precedence() -> None:
    dr = _dr(endpoint="https://bp.example:9000")
    src = choose(None, None, "https://env.example", dr)
    assert (src.location, src.origin, src.is_s3) == ("s3://dr-bucket/site-a", "dr.backups", True)
    assert src.endpoint == "https://bp.example:9000"  # the blueprint beats AWS_ENDPOINT_URL
    assert choose(None, "https://typed.example", None, dr).endpoint == "https://typed.example"
    assert choose(None, None, "https://env.example", _dr()).endpoint == "https://env.example"
    assert choose(None, None, None, _dr()).access_key is None  # the AWS environment


def test_home_is_expanded_and_no_source_is_a_usage_error() -> None:
    src = choose(None, None, None, DisasterRecovery(backups="~/backups"))
    assert src.location == str(Path.home() / "backups") and not src.is_s3
    with pytest.raises(UsageError, match="give --from"):
        choose(None, None, None, None)


@pytest.mark.parametrize(("value", "problem"), [
    ("/srv/backups", None),
    ("~/backups", None),
    ("s3://dr-bucket", None),
    ("s3://dr.bucket-1/a/b", None),
    ("backups/site-a", "is not an absolute path"),
    ("s3://Site_A/x", "is not an S3 bucket name"),
    ("s3://ab/x", "is not an S3 bucket name"),
    ("https://example/backups", "only s3:// locations and paths"),
])
def test_backups_locations(value: str, problem: str | None) -> None:
    got = backups_problem(value)
    assert (got is None) if problem is None else (got is not None and problem in got)
