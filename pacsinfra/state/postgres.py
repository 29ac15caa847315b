"""State in PostgreSQL: one row per site, an append-only history, and a lease row as the lock.

Tables (in a schema of their own, ``pacsinfra`` unless configured)::

    leases  (site PK, lock_id, token, operation, holder_user, host, pid, cmdline,
             acquired_at, expires_at)      the lock: a lease, taken and renewed in short
                                           transactions (no advisory locks: they belong to a
                                           session, and a pooler in transaction mode breaks
                                           sessions)
    states  (site PK, lineage, serial, document, token, written_at)   the current version
    history (site, lineage, serial, document, token, holder, written_at)  every version

Every row is keyed by the site (``<site>[-<overlay>]``), so two sites never wait
for each other; the tables are created with ``IF NOT EXISTS`` and a lost creation
race is retried, never serialised by a global lock.

A write is one transaction that (1) locks this site's lease row and checks that
the writer's lock id and fencing token are still the current ones, (2) checks
the current (lineage, serial) is the one the writer read (compare-and-swap),
then (3) appends the version to ``history`` and replaces ``states``. A writer
whose lease was taken over, or whose state moved under it, is refused; its
state is kept in a local *errored* copy for ``state push`` after review.
Statements are never prepared server-side (``prepare_threshold=None``), so the
backend also works through pgbouncer in transaction mode.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pacsinfra.errors import StateError, StateLockedError, UsageError
from pacsinfra.state.lease import Heartbeat, Holder, wait_for_lease
from pacsinfra.state.store import LockInfo, State

T = TypeVar("T")

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.leases (
        site text PRIMARY KEY, lock_id text, token bigint NOT NULL,
        operation text, holder_user text, host text, pid integer, cmdline text,
        acquired_at timestamptz, expires_at timestamptz)""",
    """CREATE TABLE IF NOT EXISTS {s}.states (
        site text PRIMARY KEY, lineage text NOT NULL, serial bigint NOT NULL,
        document text NOT NULL, token bigint NOT NULL, written_at timestamptz NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {s}.history (
        site text NOT NULL, lineage text NOT NULL, serial bigint NOT NULL,
        document text NOT NULL, token bigint NOT NULL, holder text NOT NULL,
        written_at timestamptz NOT NULL, PRIMARY KEY (site, lineage, serial))""",
)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise UsageError(
            "the postgresql state backend needs psycopg: pip install 'pacsinfra[postgresql]'"
        ) from None
    return psycopg


class PostgresStateStore:
    """A site's state and lease in PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        conninfo: str,
        schema: str,
        site: str,
        *,
        lease: float = 120.0,
        errored_dir: Path | None = None,
        connect_timeout: int = 10,
    ) -> None:
        """``conninfo``: a libpq URI or key=value string (password from PGPASSWORD/~/.pgpass);
        ``site``: ``<site>[-<overlay>]``, the key of every row."""
        self.conninfo = conninfo
        self.schema = schema
        self.site = site
        self.lease = lease
        self.errored_dir = errored_dir or Path.cwd() / ".pacsinfra"
        self.connect_timeout = connect_timeout
        self._mutex = threading.RLock()
        self._conn: Any = None
        self._ready = False
        self._held: LockInfo | None = None
        self._heartbeat: Heartbeat | None = None

    def describe(self) -> str:
        return f"postgresql {_safe(self.conninfo)} schema {self.schema} site {self.site}"

    # -- connection ---------------------------------------------------------------------
    def _connect(self) -> Any:
        pg = _psycopg()
        try:
            return pg.connect(self.conninfo, autocommit=True, prepare_threshold=None,
                              connect_timeout=self.connect_timeout)
        except pg.Error as exc:
            raise StateError(
                f"cannot reach the state database {_safe(self.conninfo)}: {_first_line(exc)}"
            ) from None

    def _tx(self, fn: Callable[[Any], T], *, retries: int = 2) -> T:
        """Run ``fn(cursor)`` in one transaction; reconnect and retry when the server went away."""
        pg = _psycopg()
        with self._mutex:
            attempt = 0
            while True:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    if not self._ready:
                        self._create_tables(self._conn)
                    with self._conn.transaction(), self._conn.cursor() as cur:
                        return fn(cur)
                except pg.OperationalError as exc:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
                    attempt += 1
                    if attempt > retries:
                        raise StateError(
                            f"lost the state database {_safe(self.conninfo)}: {_first_line(exc)}"
                        ) from None
                    time.sleep(0.5 * attempt)

    def _create_tables(self, conn: Any) -> None:
        pg = _psycopg()
        from psycopg import sql

        for attempt in range(5):
            try:
                with conn.transaction(), conn.cursor() as cur:
                    for ddl in _DDL:
                        cur.execute(sql.SQL(ddl).format(s=sql.Identifier(self.schema)))
                self._ready = True
                return
            except (pg.errors.UniqueViolation, pg.errors.DuplicateObject,
                    pg.errors.DuplicateTable, pg.errors.DuplicateSchema):
                time.sleep(0.05 * (attempt + 1))  # another runner created them at the same time
        raise StateError(f"cannot create the state tables in schema {self.schema}")

    def _q(self, text: str) -> Any:
        from psycopg import sql

        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    def close(self) -> None:
        """Close the connection (a held lease is released by its ``lock`` block)."""
        with self._mutex:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    # -- reading / writing ----------------------------------------------------------------
    def read(self) -> State | None:
        """The current state of this site, or None."""
        def q(cur: Any) -> Any:
            cur.execute(self._q("SELECT document FROM {s}.states WHERE site = %s"), (self.site,))
            return cur.fetchone()

        row = self._tx(q)
        return None if row is None else _parse(row[0], self.describe())

    def write(self, state: State) -> None:
        """Increment ``state.serial`` and store it, fenced by the lease and CAS on (lineage, serial)."""
        held = self._held
        if held is None:
            raise StateError(f"writing the state {self.describe()} needs its lock; none is held")
        with self._mutex:
            expected = state.serial
            state.serial = expected + 1
            try:
                payload = json.dumps(state.to_dict(), separators=(",", ":"))
            except Exception:
                state.serial = expected
                raise

            def q(cur: Any) -> str:
                cur.execute(self._q("SELECT lock_id, token FROM {s}.leases WHERE site = %s "
                                    "FOR UPDATE"), (self.site,))
                lease = cur.fetchone()
                if lease is None or (lease[0], lease[1]) != (held.id, held.token):
                    return "fenced"
                cur.execute(self._q("SELECT lineage, serial, token, document = %s "
                                    "FROM {s}.states WHERE site = %s FOR UPDATE"),
                            (payload, self.site))
                cur_row = cur.fetchone()
                if cur_row is not None:
                    if (cur_row[0], cur_row[1], cur_row[2], cur_row[3]) == (
                            state.lineage, state.serial, held.token, True):
                        return "done"  # a retried commit that had gone through
                    if (cur_row[0], cur_row[1]) != (state.lineage, expected):
                        return f"conflict:{cur_row[0]}:{cur_row[1]}"
                cur.execute(self._q(
                    "INSERT INTO {s}.history (site, lineage, serial, document, token, holder, "
                    "written_at) VALUES (%s, %s, %s, %s, %s, %s, now())"),
                    (self.site, state.lineage, state.serial, payload, held.token,
                     f"{held.user}@{held.host} pid {held.pid} ({held.operation})"))
                cur.execute(self._q(
                    "INSERT INTO {s}.states (site, lineage, serial, document, token, written_at) "
                    "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (site) DO UPDATE SET "
                    "lineage = EXCLUDED.lineage, serial = EXCLUDED.serial, "
                    "document = EXCLUDED.document, token = EXCLUDED.token, "
                    "written_at = EXCLUDED.written_at"),
                    (self.site, state.lineage, state.serial, payload, held.token))
                return "done"

            try:
                outcome = self._tx(q)
            except StateError:
                state.serial = expected
                raise
            if outcome == "done":
                return
            state.serial = expected
            kept = self._keep_errored(payload)
            if outcome == "fenced":
                raise StateLockedError(
                    f"state {self.describe()}: this run's lock (id {held.id}, fencing token "
                    f"{held.token}) was taken over after its lease ran out; the write was "
                    f"refused. The state it would have written is in {kept}: review it, then "
                    "`pacsinfra state push` it if it is still right"
                )
            _, lineage, serial = outcome.split(":", 2)
            raise StateError(
                f"state {self.describe()} moved under this run (it read lineage "
                f"{state.lineage} serial {expected}; now lineage {lineage} serial {serial}); "
                f"the write was refused. The state it would have written is in {kept}: "
                "review it, then `pacsinfra state push` it if it is still right"
            )

    def _keep_errored(self, payload: str) -> Path:
        path = self.errored_dir / f"{self.site}.errored.state.json"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(payload + "\n", encoding="utf-8")
            path.chmod(0o600)
        return path

    # -- history --------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        """Every stored version of this site, oldest first (no documents)."""
        def q(cur: Any) -> list[Any]:
            cur.execute(self._q(
                "SELECT serial, lineage, token, holder, written_at FROM {s}.history "
                "WHERE site = %s ORDER BY written_at, serial"), (self.site,))
            return list(cur.fetchall())

        return [
            {"serial": r[0], "lineage": r[1], "token": r[2], "holder": r[3],
             "written_at": r[4].isoformat(timespec="seconds")}
            for r in self._tx(q)
        ]

    def version(self, serial: int, lineage: str | None = None) -> State:
        """The stored version ``serial`` (of ``lineage``, default the current one)."""
        def q(cur: Any) -> Any:
            if lineage is None:
                cur.execute(self._q(
                    "SELECT h.document FROM {s}.history h JOIN {s}.states c ON c.site = h.site "
                    "AND c.lineage = h.lineage WHERE h.site = %s AND h.serial = %s"),
                    (self.site, serial))
            else:
                cur.execute(self._q("SELECT document FROM {s}.history WHERE site = %s AND "
                                    "lineage = %s AND serial = %s"), (self.site, lineage, serial))
            return cur.fetchone()

        row = self._tx(q)
        if row is None:
            raise StateError(f"no version with serial {serial} in {self.describe()}")
        return _parse(row[0], self.describe())

    # -- locking --------------------------------------------------------------------------
    def _acquire(self, operation: str, holder: Holder) -> LockInfo | None:
        lock_id = str(uuid.uuid4())

        def q(cur: Any) -> Any:
            cur.execute(self._q(
                "INSERT INTO {s}.leases AS l (site, lock_id, token, operation, holder_user, "
                "host, pid, cmdline, acquired_at, expires_at) VALUES (%(site)s, %(id)s, 1, "
                "%(op)s, %(user)s, %(host)s, %(pid)s, %(cmd)s, now(), "
                "now() + make_interval(secs => %(lease)s)) "
                "ON CONFLICT (site) DO UPDATE SET lock_id = EXCLUDED.lock_id, "
                "token = l.token + 1, operation = EXCLUDED.operation, "
                "holder_user = EXCLUDED.holder_user, host = EXCLUDED.host, pid = EXCLUDED.pid, "
                "cmdline = EXCLUDED.cmdline, acquired_at = EXCLUDED.acquired_at, "
                "expires_at = EXCLUDED.expires_at "
                "WHERE l.lock_id IS NULL OR l.expires_at <= now() "
                "RETURNING token, acquired_at, expires_at"),
                {"site": self.site, "id": lock_id, "op": operation, "user": holder.user,
                 "host": holder.host, "pid": holder.pid, "cmd": holder.cmdline,
                 "lease": self.lease})
            return cur.fetchone()

        row = self._tx(q)
        if row is None:
            return None
        return LockInfo(id=lock_id, operation=operation, user=holder.user, host=holder.host,
                        pid=holder.pid, created=_iso(row[1]), path=self.describe(),
                        expires=_iso(row[2]), token=int(row[0]), cmdline=holder.cmdline)

    def _release(self, held: LockInfo) -> None:
        def q(cur: Any) -> None:
            cur.execute(self._q(
                "UPDATE {s}.leases SET lock_id = NULL, expires_at = now() "
                "WHERE site = %s AND lock_id = %s AND token = %s"),
                (self.site, held.id, held.token))

        self._tx(q)

    @contextlib.contextmanager
    def lock(self, operation: str, *, timeout: float = 0.0) -> Iterator[LockInfo]:
        """Hold this site's lease for the block (renewed by a heartbeat); wait up to ``timeout``."""
        holder = Holder.me()
        info = wait_for_lease(lambda: self._acquire(operation, holder), self.lock_info,
                              self.describe(), timeout, jitter=0.2)
        beat = Heartbeat(lambda: self._beat(info), max(0.2, self.lease / 3)).start()
        self._held, self._heartbeat = info, beat
        try:
            yield info
        finally:
            beat.stop()
            self._held, self._heartbeat = None, None
            with contextlib.suppress(StateError):
                self._release(info)

    def _beat(self, info: LockInfo) -> bool:
        """One renewal on a connection of its own (the main one may be busy writing)."""
        pg = _psycopg()
        try:
            with pg.connect(self.conninfo, autocommit=True, prepare_threshold=None,
                            connect_timeout=self.connect_timeout) as conn:
                cur = conn.execute(self._q(
                    "UPDATE {s}.leases SET expires_at = now() + make_interval(secs => %s) "
                    "WHERE site = %s AND lock_id = %s AND token = %s"),
                    (self.lease, self.site, info.id, info.token))
                return bool(cur.rowcount == 1)
        except pg.Error:
            raise StateError("lease renewal failed") from None

    def lock_info(self) -> LockInfo | None:
        """The current holder, or None when the site is unlocked (or its lease ran out)."""
        def q(cur: Any) -> Any:
            cur.execute(self._q(
                "SELECT lock_id, token, operation, holder_user, host, pid, cmdline, acquired_at, "
                "expires_at, expires_at <= now() FROM {s}.leases WHERE site = %s"), (self.site,))
            return cur.fetchone()

        row = self._tx(q)
        if row is None or row[0] is None or row[9]:
            return None
        return LockInfo(id=row[0], operation=row[2], user=row[3], host=row[4], pid=row[5],
                        created=_iso(row[7]), path=self.describe(), expires=_iso(row[8]),
                        token=int(row[1]), cmdline=row[6] or "")

    def force_unlock(self, lock_id: str) -> LockInfo:
        """End the lease ``lock_id`` now (its holder's later writes are refused)."""
        holder = self.lock_info()
        if holder is None:
            raise StateError(f"state {self.describe()} is not locked")
        if holder.id != lock_id:
            raise StateError(
                f"lock id {lock_id!r} does not match the holder of {self.describe()}: "
                f"{holder.describe()}"
            )

        def q(cur: Any) -> None:
            cur.execute(self._q("UPDATE {s}.leases SET lock_id = NULL, expires_at = now() "
                                "WHERE site = %s AND lock_id = %s"), (self.site, lock_id))

        self._tx(q)
        return holder


def _parse(document: str, where: str) -> State:
    try:
        data = json.loads(document)
    except json.JSONDecodeError as exc:
        raise StateError(f"corrupt state in {where}: {exc}") from None
    return State.from_dict(data)


def _iso(value: Any) -> str:
    return str(value.isoformat(timespec="seconds")) if value is not None else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _safe(conninfo: str) -> str:
    """The conninfo with any password masked (passwords should not be there at all)."""
    import re

    masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", conninfo)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", masked)
