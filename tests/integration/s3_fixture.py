"""An S3-compatible HTTP server for tests: moto's server in its own process.

Usage: ``from s3_fixture import S3Server, s3_server`` in a test module, then take
``s3_server`` as a fixture; it yields an :class:`S3Server` (endpoint URL, the
credentials it accepts, a boto3 client) with the bucket ``pacs`` created.
pacsinfra only ever sees an S3 endpoint, as with MinIO or Ceph RGW.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module

CREDS = {"AWS_ACCESS_KEY_ID": "pacsinfra-test", "AWS_SECRET_ACCESS_KEY": "s3-secret-never-shown",
         "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "pacs"


@dataclass
class S3Server:
    """A running S3 endpoint."""

    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint,
                            aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
                            region_name=CREDS["AWS_DEFAULT_REGION"])

    def env(self) -> dict[str, str]:
        """Environment for a pacsinfra subprocess that talks to this endpoint."""
        return {**CREDS, "AWS_ENDPOINT_URL": self.endpoint}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    need_module("boto3")
    need_module("moto")
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    server = Path(sys.executable).with_name("moto_server")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    s3 = S3Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.client().list_buckets()
                break
            except Exception as exc:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"S3 server did not start: {log.read_text()[-2000:]}"
                                       ) from exc
                time.sleep(0.2)
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        proc.terminate()
        proc.wait(10)
