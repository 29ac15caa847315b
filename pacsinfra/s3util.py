"""The S3 client pieces shared by the archive's object tiers and S3 backups.

boto3 is an optional extra (``pip install 'pacsinfra[s3]'``), imported here only.
Credentials given explicitly (resolved secret references) or, when absent, the usual
AWS environment; never logged.
"""

from __future__ import annotations

from typing import Any

from pacsinfra.errors import UsageError

#: error codes botocore reports for an object (or bucket listing) that is not there
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def client(endpoint: str | None, *, access_key: str | None = None,
           secret_key: str | None = None, what: str = "S3") -> Any:
    """A boto3 S3 client for ``endpoint`` (None: AWS, or ``AWS_ENDPOINT_URL``)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise UsageError(f"{what} needs boto3: pip install 'pacsinfra[s3]'") from exc
    kwargs: dict[str, Any] = {}
    if access_key is not None and secret_key is not None:
        kwargs = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
    return boto3.client("s3", endpoint_url=endpoint or None,
                        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
                        **kwargs)


def error_code(exc: BaseException) -> str:
    """botocore's error code of ``exc`` ('' for anything else)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
