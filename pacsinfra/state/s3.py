"""State in an S3-compatible store: conditional writes for the lease and for every version.

Keys, under ``<prefix>/<site>/``::

    lock.json                 the lease: id, fencing token, holder, acquired, expires
    state.json                the current version
    history/<lineage>/<serial>.json   every version (never overwritten)

The lease is created with ``If-None-Match: *`` and renewed, taken over (once
expired) and released with ``If-Match: <etag>``: two runners can never both
believe they hold it. Released leases stay as an object marked free, so the
fencing token only grows. A state write presents the writer's token (checked
against the lease object) and replaces ``state.json`` with ``If-Match`` on the
etag it read (compare-and-swap): a writer whose lease was taken over, or whose
state moved under it, is refused and keeps its state in a local errored copy.

Some S3-compatible stores ignore those preconditions; at first use the backend
checks that the endpoint refuses a second ``If-None-Match: *`` create and an
``If-Match`` with a wrong etag, and refuses to run on one that does not.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacsinfra import s3util
from pacsinfra.errors import StateError, StateLockedError
from pacsinfra.state.lease import Heartbeat, Holder, wait_for_lease
from pacsinfra.state.store import LockInfo, State

_REFUSED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).replace(microsecond=0).isoformat()


class S3StateStore:
    """A site's state and lease in an S3 bucket (see the module docstring)."""

    def __init__(self, bucket: str, prefix: str, site: str, *, endpoint: str | None = None,
                 region: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, lease: float = 120.0,
                 errored_dir: Path | None = None) -> None:
        self.bucket, self.site, self.endpoint, self.lease = bucket, site, endpoint, lease
        base = f"{prefix.strip('/')}/{site}" if prefix.strip("/") else site
        self.key_lock, self.key_state = f"{base}/lock.json", f"{base}/state.json"
        self.key_history = f"{base}/history"
        self.errored_dir = errored_dir or Path.cwd() / ".pacsinfra"
        self._client_args = (endpoint, access_key, secret_key, region)
        self._client: Any = None
        self._checked = False
        self._mutex = threading.RLock()
        self._held: LockInfo | None = None
        self._lock_etag = ""
        self._heartbeat: Heartbeat | None = None

    def describe(self) -> str:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.key_state}{at}"

    # -- the client and the precondition self-test -----------------------------------------
    @property
    def s3(self) -> Any:
        """The boto3 client, made (and the endpoint checked) on first use."""
        if self._client is None:
            endpoint, ak, sk, region = self._client_args
            self._client = s3util.client(endpoint, access_key=ak, secret_key=sk,
                                         what="the s3 state backend")
            if region:  # same client, in the region asked for
                import boto3

                creds = {"aws_access_key_id": ak, "aws_secret_access_key": sk} if ak else {}
                self._client = boto3.client("s3", endpoint_url=endpoint or None,
                                            region_name=region,
                                            config=self._client.meta.config, **creds)
        if not self._checked:
            self._checked = True
            self._self_test()
        return self._client

    def _self_test(self) -> None:
        key = f"{self.key_history}/.precondition-test-{uuid.uuid4()}"
        c = self._client
        where = self.endpoint or "AWS S3"
        try:
            c.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
            ignored = []
            if self._accepted(lambda: c.put_object(Bucket=self.bucket, Key=key, Body=b"2",
                                                   IfNoneMatch="*")):
                ignored.append("If-None-Match: *")
            if self._accepted(lambda: c.put_object(Bucket=self.bucket, Key=key, Body=b"3",
                                                   IfMatch='"0000000000000000"')):
                ignored.append("If-Match")
        except Exception as exc:  # noqa: BLE001 - botocore's errors, reported by code
            self._checked = False
            raise StateError(f"cannot use the s3 state at {self.describe()}: "
                             f"{s3util.error_code(exc) or type(exc).__name__}") from None
        finally:
            with contextlib.suppress(Exception):
                c.delete_object(Bucket=self.bucket, Key=key)
        if ignored:
            raise StateError(
                f"the S3 endpoint {where} ignores the {' and '.join(ignored)} precondition(s) "
                "a safe lock relies on; refusing to keep state there (use a store that honours "
                "conditional writes, or the postgresql backend)"
            )

    @staticmethod
    def _accepted(call: Any) -> bool:
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            if s3util.error_code(exc) in _REFUSED:
                return False
            raise
        return True

    def _get(self, key: str) -> tuple[dict[str, Any], str] | None:
        c = self.s3  # the self-test's refusal is not a read error
        try:
            r = c.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if s3util.error_code(exc) in s3util.MISSING or s3util.error_code(exc) == "NoSuchKey":
                return None
            raise StateError(f"cannot read {key} from {self.describe()}: "
                             f"{s3util.error_code(exc) or type(exc).__name__}") from None
        try:
            return json.loads(r["Body"].read()), str(r["ETag"])
        except json.JSONDecodeError as exc:
            raise StateError(f"corrupt object {key} in {self.describe()}: {exc}") from None

    def _put(self, key: str, data: dict[str, Any], **cond: str) -> str | None:
        """Put ``data``; the new etag, or None when a precondition refused it."""
        c = self.s3
        try:
            r = c.put_object(Bucket=self.bucket, Key=key, ContentType="application/json",
                                   Body=json.dumps(data, separators=(",", ":")).encode(), **cond)
        except Exception as exc:  # noqa: BLE001
            if s3util.error_code(exc) in _REFUSED:
                return None
            raise StateError(f"cannot write {key} to {self.describe()}: "
                             f"{s3util.error_code(exc) or type(exc).__name__}") from None
        return str(r["ETag"])

    # -- reading / writing -----------------------------------------------------------------
    def read(self) -> State | None:
        got = self._get(self.key_state)
        return None if got is None else State.from_dict(got[0])

    def write(self, state: State) -> None:
        """Increment ``state.serial`` and store it, fenced by the lease token and CAS on the etag."""
        held = self._held
        if held is None:
            raise StateError(f"writing the state {self.describe()} needs its lock; none is held")
        with self._mutex:
            expected = state.serial
            state.serial = expected + 1
            try:
                doc = state.to_dict()
            except Exception:
                state.serial = expected
                raise
            lock = self._get(self.key_lock)
            current = self._get(self.key_state)
            problem = ""
            if lock is None or (lock[0].get("id"), lock[0].get("token")) != (held.id, held.token):
                problem = "fenced"
            elif current is not None and (current[0].get("lineage"), current[0].get("serial")) \
                    != (state.lineage, expected):
                problem = f"moved:{current[0].get('lineage')}:{current[0].get('serial')}"
            if not problem:
                doc_token = {**doc, "token": held.token}
                version = f"{self.key_history}/{state.lineage}/{state.serial:012d}.json"
                cond = {"IfMatch": current[1]} if current is not None else {"IfNoneMatch": "*"}
                if self._put(version, doc_token, IfNoneMatch="*") is None or \
                        self._put(self.key_state, doc_token, **cond) is None:
                    problem = "moved:?:?"
            if not problem:
                return
            state.serial = expected
            kept = self.errored_dir / f"{self.site}.errored.state.json"
            with contextlib.suppress(OSError):
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_text(json.dumps(doc) + "\n", encoding="utf-8")
                kept.chmod(0o600)
            if problem == "fenced":
                raise StateLockedError(
                    f"state {self.describe()}: this run's lock (id {held.id}, fencing token "
                    f"{held.token}) was taken over after its lease ran out; the write was "
                    f"refused. The state it would have written is in {kept}: review it, then "
                    "`pacsinfra state push` it if it is still right")
            _, lineage, serial = problem.split(":", 2)
            raise StateError(
                f"state {self.describe()} moved under this run (it read lineage {state.lineage} "
                f"serial {expected}; now lineage {lineage} serial {serial}); the write was "
                f"refused. The state it would have written is in {kept}: review it, then "
                "`pacsinfra state push` it if it is still right")

    def history(self) -> list[dict[str, Any]]:
        """Every stored version, oldest first (no documents)."""
        out: list[dict[str, Any]] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key_history + "/")
        for page in pages:
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(self.key_history) + 1:].split("/")
                if len(parts) != 2 or not parts[1].endswith(".json"):
                    continue
                out.append({"serial": int(parts[1][:-5]), "lineage": parts[0], "token": None,
                            "holder": "", "written_at": obj["LastModified"].isoformat(
                                timespec="seconds")})
        return sorted(out, key=lambda h: (h["written_at"], h["serial"]))

    def version(self, serial: int, lineage: str | None = None) -> State:
        """The stored version ``serial`` (of ``lineage``, default the current one)."""
        if lineage is None:
            current = self.read()
            if current is None:
                raise StateError(f"no state at {self.describe()}")
            lineage = current.lineage
        got = self._get(f"{self.key_history}/{lineage}/{serial:012d}.json")
        if got is None:
            raise StateError(f"no version with serial {serial} in {self.describe()}")
        return State.from_dict(got[0])

    # -- locking ---------------------------------------------------------------------------
    def _acquire(self, operation: str, holder: Holder) -> LockInfo | None:
        now = time.time()
        got = self._get(self.key_lock)
        if got is not None and not got[0].get("free") and float(got[0].get("expires", 0)) > now:
            return None
        token = int(got[0].get("token", 0)) + 1 if got is not None else 1
        info = LockInfo(id=str(uuid.uuid4()), operation=operation, user=holder.user,
                        host=holder.host, pid=holder.pid, created=_iso(now),
                        path=self.describe(), expires=_iso(now + self.lease), token=token,
                        cmdline=holder.cmdline)
        body = {**info.to_dict(), "expires": now + self.lease}
        cond = {"IfMatch": got[1]} if got is not None else {"IfNoneMatch": "*"}
        etag = self._put(self.key_lock, body, **cond)
        if etag is None:
            return None  # another runner won the race
        self._lock_etag = etag
        return info

    def _renew(self, info: LockInfo) -> bool:
        with self._mutex:
            body = {**info.to_dict(), "expires": time.time() + self.lease}
            etag = self._put(self.key_lock, body, IfMatch=self._lock_etag)
            if etag is None:
                return False
            self._lock_etag = etag
            return True

    @contextlib.contextmanager
    def lock(self, operation: str, *, timeout: float = 0.0) -> Iterator[LockInfo]:
        """Hold this site's lease for the block (renewed by a heartbeat); wait up to ``timeout``."""
        holder = Holder.me()
        info = wait_for_lease(lambda: self._acquire(operation, holder), self.lock_info,
                              self.describe(), timeout, jitter=0.3)
        beat = Heartbeat(lambda: self._renew(info), max(0.2, self.lease / 3)).start()
        self._held, self._heartbeat = info, beat
        try:
            yield info
        finally:
            beat.stop()
            self._held, self._heartbeat = None, None
            with self._mutex, contextlib.suppress(StateError):
                self._put(self.key_lock, {"free": True, "token": info.token},
                          IfMatch=self._lock_etag)

    def lock_info(self) -> LockInfo | None:
        """The current holder, or None when free (or its lease ran out)."""
        got = self._get(self.key_lock)
        if got is None or got[0].get("free") or float(got[0].get("expires", 0)) <= time.time():
            return None
        d = got[0]
        return LockInfo(id=str(d["id"]), operation=str(d["operation"]), user=str(d["user"]),
                        host=str(d["host"]), pid=int(d["pid"]), created=str(d["created"]),
                        path=self.describe(), expires=_iso(float(d["expires"])),
                        token=int(d["token"]), cmdline=str(d.get("cmdline", "")))

    def force_unlock(self, lock_id: str) -> LockInfo:
        """End the lease ``lock_id`` now (its holder's later writes are refused)."""
        got = self._get(self.key_lock)
        holder = self.lock_info()
        if holder is None or got is None:
            raise StateError(f"state {self.describe()} is not locked")
        if holder.id != lock_id:
            raise StateError(f"lock id {lock_id!r} does not match the holder of "
                             f"{self.describe()}: {holder.describe()}")
        if self._put(self.key_lock, {"free": True, "token": holder.token}, IfMatch=got[1]) is None:
            raise StateError(f"the lock of {self.describe()} changed meanwhile; look again")
        return holder

    def close(self) -> None:
        """Nothing to close (boto3 pools its own connections)."""
