"""The durable forwarding queue: one row per (instance, destination), SQLite or PostgreSQL.

Row life: ``held`` (per-study rule, waiting for the study to go quiet) → ``pending``
→ ``inflight`` (claimed by a sender) → ``done`` | back to ``pending`` with a backoff |
``dead`` (dead-letter). For a destination that commits, a delivered row is
``committing`` until the destination's storage commitment report says it is committed
(``done``) or not (a failed attempt), or the report is overdue (a failed attempt); its
spool file stays meanwhile. Rows in ``inflight`` when the process died are put back to
``pending`` at start (at-least-once delivery).

Per-destination order by study: a sender may only claim the oldest active row of a
study for its destination (and the ready rows right behind it), so two rows of one
study are never in flight at once and never overtake each other, even across retries.

Every write is one committed transaction; SQLite runs in WAL mode with
``synchronous=FULL`` so a commit that returned is on disk. The send side's own
bookkeeping (claim, done, failed, release) commits without waiting for the disk
(``tx(durable=False)``: SQLite ``synchronous=NORMAL``, PostgreSQL
``synchronous_commit=off``): losing it to a power cut only puts rows back a step,
and they are sent again (at-least-once; the archive de-duplicates). It survives a
process crash either way, and the next durable commit (an enqueue, the housekeeping
that deletes done rows before their spool files go) makes it durable too. The
backends differ only in connection handling and placeholder style (:class:`_Backend`).
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsinfra.fsutil import private_dir, private_file

ACTIVE = ("held", "pending", "inflight")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS items (
        id {pk},
        dest TEXT NOT NULL,
        node TEXT,
        study_uid TEXT NOT NULL,
        sop_uid TEXT NOT NULL,
        spool TEXT NOT NULL,
        rule TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at {real} NOT NULL,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        keep_until {real},
        last_status INTEGER,
        last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS items_active ON items (dest, study_uid, id) "
    "WHERE state IN ('held', 'pending', 'inflight')",
    "CREATE INDEX IF NOT EXISTS items_state ON items (state, dest, id)",
    "CREATE INDEX IF NOT EXISTS items_spool ON items (spool)",
    """CREATE TABLE IF NOT EXISTS attempts (
        item_id INTEGER NOT NULL, at {real} NOT NULL, node TEXT, status INTEGER,
        error TEXT, next_at {real})""",
    "CREATE INDEX IF NOT EXISTS attempts_item ON attempts (item_id)",
    "CREATE TABLE IF NOT EXISTS studies (study_uid TEXT PRIMARY KEY, last_seen {real} NOT NULL)",
    # Rows delivered to a destination that commits (state 'committing'): the Transaction
    # UID their commitment was asked under, and when to give up waiting for the report.
    """CREATE TABLE IF NOT EXISTS commitments (
        item_id INTEGER PRIMARY KEY, txn TEXT NOT NULL, deadline {real} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS commitments_txn ON commitments (txn)",
    # The CRC-32 and size of each spool file as received: a sender reads it back against
    # them, so a file changed on disk is never forwarded.
    "CREATE TABLE IF NOT EXISTS spool_sums (spool TEXT PRIMARY KEY, crc32 BIGINT NOT NULL, "
    "size BIGINT NOT NULL)",
    # What held rows wait on (rules with a completion): the series each held row
    # belongs to, and per series of a study its description and when it was first and
    # last seen.
    "CREATE TABLE IF NOT EXISTS item_series (item_id INTEGER PRIMARY KEY, "
    "series_uid TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS series_seen (
        study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, description TEXT,
        first_seen {real} NOT NULL, last_seen {real} NOT NULL, instances INTEGER NOT NULL,
        PRIMARY KEY (study_uid, series_uid))""",
    """CREATE TABLE IF NOT EXISTS affinity (
        dest TEXT NOT NULL, study_uid TEXT NOT NULL, node TEXT NOT NULL,
        PRIMARY KEY (dest, study_uid))""",
]

_COLS = ("id, dest, node, study_uid, sop_uid, spool, rule, state, attempts, next_at, "
         "created_at, updated_at, last_status, last_error")


@dataclass
class Item:
    """One queue row."""

    id: int
    dest: str
    node: str | None
    study_uid: str
    sop_uid: str
    spool: str
    rule: str
    state: str
    attempts: int
    next_at: float
    created_at: float
    updated_at: float
    last_status: int | None
    last_error: str | None


@dataclass
class NewItem:
    """A row to enqueue."""

    dest: str
    study_uid: str
    sop_uid: str
    spool: str
    rule: str
    held: bool = False
    series_uid: str = ""  # for held rows: what completion is judged on
    series_description: str = ""


class _Backend(abc.ABC):
    """A connection and a lock; ``tx()`` yields a cursor inside one committed transaction."""

    @abc.abstractmethod
    def tx(self, durable: bool = True) -> Any:
        """Context manager: a cursor taking ``?`` placeholders; commit on success
        (``durable``: the commit returns once it is on disk)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @contextmanager
    def exclusive(self, key: str) -> Iterator[None]:
        """Serialise a claim on ``key`` with other processes sharing the queue (SQLite:
        one process owns the file, nothing to do)."""
        yield


class _Sqlite(_Backend):
    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        private_file(path)  # what was sent where, for which patient: 0640
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                    timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.lock = threading.RLock()
        with self.tx() as cur:
            for stmt in _SCHEMA:
                cur.execute(stmt.format(pk="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"))

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[Any]:
        with self.lock:
            cur = self.conn.cursor()
            if not durable:
                cur.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync at this commit
            try:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            finally:
                if not durable:
                    cur.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class _Postgres(_Backend):
    def __init__(self, dsn: str) -> None:
        import psycopg

        self._dsn = dsn
        self._connect = lambda: psycopg.connect(dsn, autocommit=False)
        self.conn = self._connect()
        self.lock = threading.RLock()
        with self.tx() as cur:
            for stmt in _SCHEMA:
                cur.execute(stmt.format(pk="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION"))

    def _live(self) -> Any:
        """The connection, opened again if the server dropped it (a restart, a failover):
        the transaction that saw it break failed; the next one runs on a new session.
        Advisory locks died with the old session, as the server releases them."""
        if self.conn.closed or self.conn.broken:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = self._connect()
        return self.conn

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[Any]:
        with self.lock:
            conn = self._live()
            cur = conn.cursor()
            try:
                if not durable:
                    cur.execute("SET LOCAL synchronous_commit = off")
                yield _PgCursor(cur)
            except BaseException:
                with contextlib.suppress(Exception):  # a dead connection cannot roll back
                    conn.rollback()
                raise
            conn.commit()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def exclusive(self, key: str) -> Iterator[None]:
        # A session-level advisory lock: routers sharing this database take turns to
        # peek-and-claim a destination's next study, so per-study order holds across them.
        # try-lock in a loop: never wait for another router while holding our connection
        # lock, or two routers claiming two destinations could deadlock each other.
        while True:
            with self.tx() as cur:
                if cur.execute("SELECT pg_try_advisory_lock(hashtext(?))", (key,)).fetchone()[0]:
                    break
            time.sleep(0.005)
        try:
            yield
        finally:
            with self.tx() as cur:
                cur.execute("SELECT pg_advisory_unlock(hashtext(?))", (key,))


class _PgCursor:
    """A psycopg cursor that takes ``?`` placeholders like sqlite3."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _PgCursor:
        self._cur.execute(sql.replace("?", "%s"), tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    def fetchone(self) -> Any:
        return self._cur.fetchone()


def _in(ids: Sequence[Any]) -> str:
    return ",".join("?" * len(ids))


class Queue:
    """The router's queue API; every method is one transaction."""

    def __init__(self, backend: _Backend) -> None:
        self._db = backend

    @classmethod
    def sqlite(cls, path: Path) -> Queue:
        """A queue in a SQLite file (WAL, synchronous=FULL)."""
        return cls(_Sqlite(path))

    @classmethod
    def postgresql(cls, dsn: str) -> Queue:
        """A queue in PostgreSQL (several routers may share it)."""
        return cls(_Postgres(dsn))

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def exclusive(self, dest: str) -> Any:
        """Context manager: hold while peeking and claiming rows of ``dest``."""
        return self._db.exclusive(f"pacsinfra-router:{dest}")

    # -- receive side ------------------------------------------------------------------------
    def enqueue(self, items: Sequence[NewItem], now: float | None = None,
                sums: dict[str, tuple[int, int]] | None = None) -> list[int]:
        """Insert rows (and note the study as just seen) in one committed transaction;
        ``sums``: spool file -> (CRC-32, size) as received."""
        now = time.time() if now is None else now
        ids: list[int] = []
        with self._db.tx() as cur:
            if sums:
                cur.executemany("INSERT INTO spool_sums (spool, crc32, size) VALUES (?,?,?) "
                                "ON CONFLICT (spool) DO NOTHING",
                                [(k, crc, size) for k, (crc, size) in sums.items()])
            for it in items:
                row = cur.execute(
                    "INSERT INTO items (dest, study_uid, sop_uid, spool, rule, state, next_at, "
                    "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
                    (it.dest, it.study_uid, it.sop_uid, it.spool, it.rule,
                     "held" if it.held else "pending", now, now, now)).fetchone()
                ids.append(int(row[0]))
                if it.held:
                    cur.execute("INSERT INTO item_series (item_id, series_uid) VALUES (?, ?)",
                                (ids[-1], it.series_uid))
            for it in {i.sop_uid: i for i in items if i.held}.values():  # once per instance
                cur.execute(
                    "INSERT INTO series_seen (study_uid, series_uid, description, first_seen, "
                    "last_seen, instances) VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (study_uid, "
                    "series_uid) DO UPDATE SET last_seen = excluded.last_seen, "
                    "instances = series_seen.instances + 1, "
                    "description = COALESCE(series_seen.description, excluded.description)",
                    (it.study_uid, it.series_uid, it.series_description or None, now, now))
            for study in {it.study_uid for it in items}:
                cur.execute(
                    "INSERT INTO studies (study_uid, last_seen) VALUES (?, ?) "
                    "ON CONFLICT (study_uid) DO UPDATE SET last_seen = excluded.last_seen",
                    (study, now))
        return ids

    def release_held(self, quiet_seconds: float, now: float | None = None) -> int:
        """Turn ``held`` rows of studies quiet for ``quiet_seconds`` into ``pending``."""
        now = time.time() if now is None else now
        with self._db.tx() as cur:
            rows = cur.execute(
                "UPDATE items SET state = 'pending', next_at = ?, updated_at = ? "
                "WHERE state = 'held' AND study_uid IN "
                "(SELECT study_uid FROM studies WHERE last_seen <= ?) RETURNING id",
                (now, now, now - quiet_seconds)).fetchall()
        return len(rows)

    def held(self) -> list[tuple[int, str, str, str]]:
        """Every held row: (id, rule, study, series)."""
        with self._db.tx(durable=False) as cur:
            rows = cur.execute(
                "SELECT i.id, i.rule, i.study_uid, COALESCE(s.series_uid, '') FROM items i "
                "LEFT JOIN item_series s ON s.item_id = i.id WHERE i.state = 'held' "
                "ORDER BY i.id").fetchall()
        return [(int(i), str(r), str(st), str(se)) for i, r, st, se in rows]

    def series_seen(self, study_uid: str) -> list[tuple[str, str | None, float, float, int]]:
        """The series of a study its held rows came in: (series, description, first
        seen, last seen, instances)."""
        with self._db.tx(durable=False) as cur:
            rows = cur.execute("SELECT series_uid, description, first_seen, last_seen, "
                               "instances FROM series_seen WHERE study_uid = ? "
                               "ORDER BY first_seen", (study_uid,)).fetchall()
        return [(str(a), None if b is None else str(b), float(c), float(d), int(e))
                for a, b, c, d, e in rows]

    def unhold(self, ids: Sequence[int], now: float | None = None) -> int:
        """Held rows become pending (their study or series is complete, or timed out)."""
        now = time.time() if now is None else now
        if not ids:
            return 0
        with self._db.tx() as cur:
            return len(cur.execute(
                f"UPDATE items SET state = 'pending', next_at = ?, updated_at = ? "
                f"WHERE state = 'held' AND id IN ({_in(ids)}) RETURNING id",
                (now, now, *ids)).fetchall())

    def discard(self, ids: Sequence[int], error: str, now: float | None = None) -> int:
        """Held rows are dead-lettered with ``error`` (incomplete at their timeout)."""
        now = time.time() if now is None else now
        if not ids:
            return 0
        with self._db.tx() as cur:
            return len(cur.execute(
                f"UPDATE items SET state = 'dead', updated_at = ?, last_error = ? "
                f"WHERE state = 'held' AND id IN ({_in(ids)}) RETURNING id",
                (now, error[:500], *ids)).fetchall())

    # -- send side ---------------------------------------------------------------------------
    def next_batch(self, dest: str, limit: int, now: float | None = None,
                   skip: Sequence[str] = ()) -> list[Item]:
        """The ready head of the oldest claimable study of ``dest`` (not claimed yet).

        ``skip``: studies not to consider (their member has no free association).
        """
        now = time.time() if now is None else now
        not_in = f"AND i.study_uid NOT IN ({_in(skip)}) " if skip else ""
        with self._db.tx(durable=False) as cur:
            head = cur.execute(
                f"SELECT {_COLS} FROM items i WHERE i.dest = ? AND i.state = 'pending' "
                f"AND i.next_at <= ? {not_in}AND NOT EXISTS (SELECT 1 FROM items j WHERE "
                "j.dest = i.dest AND j.study_uid = i.study_uid AND j.id < i.id AND "
                "j.state IN ('held', 'pending', 'inflight')) ORDER BY i.id LIMIT 1",
                (dest, now, *skip)).fetchone()
            if head is None:
                return []
            rows = cur.execute(
                f"SELECT {_COLS} FROM items WHERE dest = ? AND study_uid = ? AND "
                "state IN ('held', 'pending', 'inflight') ORDER BY id LIMIT ?",
                (dest, head[3], limit)).fetchall()
        batch: list[Item] = []
        for r in rows:
            it = Item(*r)
            if it.state != "pending" or it.next_at > now:
                break
            batch.append(it)
        return batch

    def sums_of(self, spools: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(CRC-32, size) recorded for these spool files (files from before sums were
        recorded have none)."""
        if not spools:
            return {}
        with self._db.tx(durable=False) as cur:
            rows = cur.execute(f"SELECT spool, crc32, size FROM spool_sums WHERE spool IN "
                               f"({_in(spools)})", tuple(spools)).fetchall()
        return {str(s): (int(c), int(n)) for s, c, n in rows}

    def claim(self, ids: Sequence[int], node: str | None, now: float | None = None) -> list[int]:
        """Mark rows in flight to ``node``; returns the ids actually claimed (still pending)."""
        now = time.time() if now is None else now
        if not ids:
            return []
        with self._db.tx(durable=False) as cur:
            rows = cur.execute(
                f"UPDATE items SET state = 'inflight', node = ?, updated_at = ? "
                f"WHERE state = 'pending' AND id IN ({_in(ids)}) RETURNING id",
                (node, now, *ids)).fetchall()
        return sorted(int(r[0]) for r in rows)

    def done(self, ids: Sequence[int], keep_seconds: float, node: str | None = None,
             now: float | None = None) -> None:
        """Rows delivered (acknowledged by the destination)."""
        now = time.time() if now is None else now
        if not ids:
            return
        with self._db.tx(durable=False) as cur:
            cur.execute(
                f"UPDATE items SET state = 'done', keep_until = ?, updated_at = ?, "
                f"last_status = 0, last_error = NULL WHERE id IN ({_in(ids)})",
                (now + keep_seconds, now, *ids))
            cur.executemany("INSERT INTO attempts (item_id, at, node, status) VALUES (?,?,?,0)",
                            [(i, now, node) for i in ids])
            cur.execute(f"DELETE FROM commitments WHERE item_id IN ({_in(ids)})", tuple(ids))

    def failed(self, item_id: int, *, status: int | None, error: str, next_at: float | None,
               node: str | None, now: float | None = None) -> None:
        """One failed attempt: back to pending at ``next_at``, or dead when ``next_at`` is None."""
        now = time.time() if now is None else now
        state = "dead" if next_at is None else "pending"
        with self._db.tx(durable=False) as cur:
            cur.execute(
                "UPDATE items SET state = ?, attempts = attempts + 1, next_at = ?, "
                "updated_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                (state, next_at if next_at is not None else now, now, status, error[:500],
                 item_id))
            cur.execute(
                "INSERT INTO attempts (item_id, at, node, status, error, next_at) "
                "VALUES (?,?,?,?,?,?)", (item_id, now, node, status, error[:500], next_at))
            cur.execute("DELETE FROM commitments WHERE item_id = ?", (item_id,))

    def committing(self, ids: Sequence[int], txn: str, deadline: float, node: str | None,
                   now: float | None = None) -> None:
        """Rows delivered to ``node``, whose commitment was asked under ``txn``."""
        now = time.time() if now is None else now
        if not ids:
            return
        with self._db.tx() as cur:
            cur.execute(f"UPDATE items SET state = 'committing', node = ?, updated_at = ?, "
                        f"last_status = 0, last_error = NULL WHERE id IN ({_in(ids)})",
                        (node, now, *ids))
            cur.executemany("INSERT INTO commitments (item_id, txn, deadline) VALUES (?,?,?) "
                            "ON CONFLICT (item_id) DO UPDATE SET txn = excluded.txn, "
                            "deadline = excluded.deadline", [(i, txn, deadline) for i in ids])

    def awaiting(self, txn: str) -> list[Item]:
        """The rows still waiting for the report of ``txn``."""
        cols = ", ".join(f"i.{c.strip()}" for c in _COLS.split(","))
        with self._db.tx(durable=False) as cur:
            rows = cur.execute(f"SELECT {cols} FROM items i JOIN commitments c ON c.item_id = i.id "
                               "WHERE c.txn = ? AND i.state = 'committing' ORDER BY i.id",
                               (txn,)).fetchall()
        return [Item(*r) for r in rows]

    def overdue(self, now: float | None = None, limit: int = 500) -> list[tuple[Item, str]]:
        """Rows whose commitment report is past its deadline, with their Transaction UID."""
        now = time.time() if now is None else now
        cols = ", ".join(f"i.{c.strip()}" for c in _COLS.split(","))
        with self._db.tx(durable=False) as cur:
            rows = cur.execute(f"SELECT {cols}, c.txn FROM items i JOIN commitments c ON "
                               "c.item_id = i.id WHERE i.state = 'committing' AND "
                               "c.deadline <= ? ORDER BY i.id LIMIT ?", (now, limit)).fetchall()
        return [(Item(*r[:-1]), str(r[-1])) for r in rows]

    def release(self, ids: Sequence[int], now: float | None = None) -> None:
        """Give claimed rows back untouched (not attempted)."""
        now = time.time() if now is None else now
        if not ids:
            return
        with self._db.tx(durable=False) as cur:
            cur.execute(f"UPDATE items SET state = 'pending', updated_at = ? "
                        f"WHERE state = 'inflight' AND id IN ({_in(ids)})", (now, *ids))

    def recover(self, now: float | None = None, older_than: float = 0.0) -> int:
        """Rows in flight when their router died go back to pending.

        A router alone on its queue calls this at start with ``older_than=0`` (every
        in-flight row is its own, from before the crash). Routers sharing a queue pass a
        lease instead, so only rows claimed longer ago than any send can take come back.
        """
        now = time.time() if now is None else now
        with self._db.tx() as cur:
            rows = cur.execute("UPDATE items SET state = 'pending', updated_at = ? "
                               "WHERE state = 'inflight' AND updated_at <= ? RETURNING id",
                               (now, now - older_than)).fetchall()
        return len(rows)

    def attempts_of(self, item_id: int) -> list[tuple[float, int | None, str | None, float | None]]:
        """(at, status, error, next_at) of every attempt of a row, oldest first."""
        with self._db.tx() as cur:
            return [tuple(r) for r in cur.execute(  # type: ignore[misc]
                "SELECT at, status, error, next_at FROM attempts WHERE item_id = ? ORDER BY at",
                (item_id,)).fetchall()]

    # -- groups ------------------------------------------------------------------------------
    def affinity(self, dest: str, study_uid: str) -> str | None:
        """The node a study of group ``dest`` is pinned to, if any."""
        with self._db.tx() as cur:
            row = cur.execute("SELECT node FROM affinity WHERE dest = ? AND study_uid = ?",
                              (dest, study_uid)).fetchone()
        return None if row is None else str(row[0])

    def pin(self, dest: str, study_uid: str, node: str) -> None:
        """Pin a study of group ``dest`` to ``node``."""
        with self._db.tx() as cur:
            cur.execute("INSERT INTO affinity (dest, study_uid, node) VALUES (?,?,?) "
                        "ON CONFLICT (dest, study_uid) DO UPDATE SET node = excluded.node",
                        (dest, study_uid, node))

    def pinned_counts(self, dest: str) -> dict[str, int]:
        """How many studies of group ``dest`` each node holds."""
        with self._db.tx() as cur:
            rows = cur.execute("SELECT node, COUNT(*) FROM affinity WHERE dest = ? GROUP BY node",
                               (dest,)).fetchall()
        return {str(n): int(c) for n, c in rows}

    def reassign(self, dest: str, node: str, now: float | None = None) -> int:
        """A node of group ``dest`` died: re-send its recent and pending rows elsewhere.

        Rows delivered to it and still kept (within the group's resend window) go back
        to ``pending`` too: a study half-stored on a dead node is sent whole to another.
        """
        now = time.time() if now is None else now
        with self._db.tx() as cur:
            cur.execute("DELETE FROM affinity WHERE dest = ? AND node = ?", (dest, node))
            rows = cur.execute(
                "UPDATE items SET state = 'pending', node = NULL, next_at = ?, updated_at = ? "
                "WHERE dest = ? AND node = ? AND (state = 'pending' OR "
                "(state = 'done' AND keep_until > ?)) RETURNING id",
                (now, now, dest, node, now)).fetchall()
        return len(rows)

    # -- housekeeping ------------------------------------------------------------------------
    def expired_spools(self, now: float | None = None, limit: int = 500) -> list[str]:
        """Delete delivered rows past their keep time; return spool files nobody needs now."""
        now = time.time() if now is None else now
        with self._db.tx() as cur:
            spools = [str(r[0]) for r in cur.execute(
                "SELECT spool FROM items GROUP BY spool HAVING "
                "SUM(CASE WHEN state = 'done' THEN 0 ELSE 1 END) = 0 AND MAX(keep_until) <= ? "
                "LIMIT ?", (now, limit)).fetchall()]
            for s in spools:
                cur.execute("DELETE FROM attempts WHERE item_id IN "
                            "(SELECT id FROM items WHERE spool = ?)", (s,))
                cur.execute("DELETE FROM items WHERE spool = ?", (s,))
                cur.execute("DELETE FROM spool_sums WHERE spool = ?", (s,))
            cur.execute("DELETE FROM affinity WHERE NOT EXISTS (SELECT 1 FROM items WHERE "
                        "items.dest = affinity.dest AND items.study_uid = affinity.study_uid)")
            cur.execute("DELETE FROM studies WHERE NOT EXISTS (SELECT 1 FROM items WHERE "
                        "items.study_uid = studies.study_uid)")
            cur.execute("DELETE FROM series_seen WHERE NOT EXISTS (SELECT 1 FROM items WHERE "
                        "items.study_uid = series_seen.study_uid)")
            cur.execute("DELETE FROM item_series WHERE NOT EXISTS (SELECT 1 FROM items WHERE "
                        "items.id = item_series.item_id)")
        return spools

    def referenced_spools(self) -> set[str]:
        """Every spool file some row names."""
        with self._db.tx() as cur:
            return {str(r[0]) for r in cur.execute("SELECT DISTINCT spool FROM items").fetchall()}

    def stats(self, now: float | None = None) -> dict[str, dict[str, float]]:
        """Per destination: count per state and age of the oldest active row (seconds)."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, float]] = {}
        with self._db.tx() as cur:
            for dest, state, n, oldest in cur.execute(
                    "SELECT dest, state, COUNT(*), MIN(created_at) FROM items "
                    "GROUP BY dest, state").fetchall():
                d = out.setdefault(str(dest), {"oldest_age": 0.0})
                d[str(state)] = float(n)
                if state in ACTIVE:
                    d["oldest_age"] = max(d["oldest_age"], now - float(oldest))
        return out

    @staticmethod
    def _filter(state: str | None, dest: str | None) -> tuple[str, list[str]]:
        where, params = [], []
        if state:
            where.append("state = ?")
            params.append(state)
        if dest:
            where.append("dest = ?")
            params.append(dest)
        return (f"WHERE {' AND '.join(where)}" if where else ""), params

    def rows(self, *, state: str | None = None, dest: str | None = None,
             limit: int = 100) -> list[Item]:
        """Rows, oldest first, optionally filtered."""
        clause, params = self._filter(state, dest)
        with self._db.tx() as cur:
            rows = cur.execute(f"SELECT {_COLS} FROM items {clause} ORDER BY id LIMIT ?",
                               (*params, limit)).fetchall()
        return [Item(*r) for r in rows]

    def count(self, *, state: str | None = None, dest: str | None = None) -> int:
        """How many rows :meth:`rows` would list without a limit."""
        clause, params = self._filter(state, dest)
        with self._db.tx() as cur:
            return int(cur.execute(f"SELECT COUNT(*) FROM items {clause}", params).fetchone()[0])

    def retry(self, *, ids: Sequence[int] = (), dest: str | None = None,
              now: float | None = None) -> int:
        """Dead-lettered rows (all, by id, or by destination) back to pending, attempts reset."""
        now = time.time() if now is None else now
        sql = ("UPDATE items SET state = 'pending', attempts = 0, next_at = ?, updated_at = ? "
               "WHERE state = 'dead'")
        params: list[Any] = [now, now]
        if ids:
            sql += f" AND id IN ({_in(ids)})"
            params.extend(ids)
        if dest:
            sql += " AND dest = ?"
            params.append(dest)
        with self._db.tx() as cur:
            return len(cur.execute(sql + " RETURNING id", params).fetchall())

    def purge(self, *, state: str = "dead", ids: Sequence[int] = (),
              dest: str | None = None) -> tuple[int, list[str]]:
        """Delete rows in ``state``; returns (rows deleted, spool files now unreferenced)."""
        if state in ("pending", "inflight", "held", "committing"):
            raise ValueError("only dead or done rows can be purged")
        sql = "FROM items WHERE state = ?"
        params: list[Any] = [state]
        if ids:
            sql += f" AND id IN ({_in(ids)})"
            params.extend(ids)
        if dest:
            sql += " AND dest = ?"
            params.append(dest)
        with self._db.tx() as cur:
            spools = {str(r[0]) for r in cur.execute(f"SELECT spool {sql}", params).fetchall()}
            cur.execute(f"DELETE FROM attempts WHERE item_id IN (SELECT id {sql})", params)
            n = len(cur.execute(f"DELETE {sql} RETURNING id", params).fetchall())
            orphans = [s for s in spools if cur.execute(
                "SELECT 1 FROM items WHERE spool = ? LIMIT 1", (s,)).fetchone() is None]
            for s in orphans:
                cur.execute("DELETE FROM spool_sums WHERE spool = ?", (s,))
        return n, orphans
