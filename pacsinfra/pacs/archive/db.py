"""One small DB-API layer over SQLite (WAL) and PostgreSQL (psycopg 3), plus migrations.

SQL is written once with ``?`` placeholders; :class:`Database` rewrites them to
``%s`` for psycopg. Everything else the archive needs (``INSERT ... ON CONFLICT``,
``LIKE``, ``lower()``) is spelled the same in both dialects.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacsinfra.errors import PacsinfraError
from pacsinfra.fsutil import private_dir, private_file
from pacsinfra.pacs.archive.config import IndexConfig


class IndexError_(PacsinfraError):
    """The index database cannot be opened or migrated."""


Row = tuple[Any, ...]

# Versioned migrations: (version, statements). Append only; never edit a shipped one.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE patient (
                patient_id TEXT PRIMARY KEY,
                patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT,
                num_studies INTEGER NOT NULL DEFAULT 0,
                num_instances INTEGER NOT NULL DEFAULT 0)""",
            """CREATE TABLE study (
                study_uid TEXT PRIMARY KEY,
                patient_id TEXT NOT NULL,
                patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT,
                study_date TEXT, study_time TEXT, accession_number TEXT, study_id TEXT,
                study_description TEXT, referring_physician TEXT,
                modalities TEXT NOT NULL DEFAULT '\\',
                num_series INTEGER NOT NULL DEFAULT 0,
                num_instances INTEGER NOT NULL DEFAULT 0,
                created_at DOUBLE PRECISION, last_access DOUBLE PRECISION)""",
            "CREATE INDEX study_patient ON study(patient_id)",
            "CREATE INDEX study_date_ix ON study(study_date)",
            "CREATE INDEX study_accession ON study(accession_number)",
            """CREATE TABLE series (
                series_uid TEXT PRIMARY KEY,
                study_uid TEXT NOT NULL,
                modality TEXT, series_number TEXT, series_description TEXT,
                body_part TEXT, series_date TEXT, series_time TEXT,
                num_instances INTEGER NOT NULL DEFAULT 0)""",
            "CREATE INDEX series_study ON series(study_uid)",
            """CREATE TABLE instance (
                sop_uid TEXT PRIMARY KEY,
                series_uid TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                sop_class_uid TEXT NOT NULL,
                instance_number TEXT,
                transfer_syntax TEXT NOT NULL,
                tier TEXT NOT NULL,
                rel_path TEXT NOT NULL,
                size BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                ds_offset INTEGER NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                calling_ae TEXT)""",
            "CREATE INDEX instance_series ON instance(series_uid)",
            "CREATE INDEX instance_study ON instance(study_uid)",
        ],
    ),
    (
        2,
        [
            # Lifecycle bookkeeping: studies that failed migration are parked, not retried forever.
            """CREATE TABLE migration_failure (
                study_uid TEXT PRIMARY KEY, to_tier TEXT NOT NULL,
                reason TEXT NOT NULL, failed_at DOUBLE PRECISION NOT NULL)""",
        ],
    ),
    (
        3,
        [
            # Deletion journal: files whose index rows were deleted, written in the same
            # transaction; a row leaves only after its file is unlinked (crash-safe delete).
            """CREATE TABLE pending_unlink (
                tier TEXT NOT NULL, rel_path TEXT NOT NULL,
                queued_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tier, rel_path))""",
        ],
    ),
    (
        4,
        [
            # What a viewer needs to lay out an image before reading it (QIDO-RS instance
            # level). NULL for instances indexed before this migration: answered without.
            "ALTER TABLE instance ADD COLUMN img_rows INTEGER",
            "ALTER TABLE instance ADD COLUMN img_columns INTEGER",
            "ALTER TABLE instance ADD COLUMN bits_allocated INTEGER",
            "ALTER TABLE instance ADD COLUMN num_frames INTEGER",
        ],
    ),
    (
        5,
        [
            # Reads refused because the file no longer hashed to the indexed sum. Keyed by
            # the sum too: a re-stored instance (new sum) is no longer flagged.
            """CREATE TABLE flagged (
                sop_uid TEXT NOT NULL, sha256 TEXT NOT NULL, reason TEXT NOT NULL,
                flagged_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (sop_uid, sha256))""",
        ],
    ),
    (
        6,
        [
            # Storage commitment requests (PS3.4 J) accepted but not yet reported: the row
            # is written before the N-ACTION is answered and leaves once the requester
            # acknowledged the N-EVENT-REPORT, so a restart in between still reports.
            """CREATE TABLE commitment (
                transaction_uid TEXT PRIMARY KEY, calling_ae TEXT NOT NULL,
                refs TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, next_try DOUBLE PRECISION NOT NULL,
                last_error TEXT)""",
        ],
    ),
    (
        7,
        [
            # Worklist items (Modality Worklist and UPS-RS): the data set as DICOM JSON,
            # and the columns the index filters and auto-completion joins on.
            """CREATE TABLE worklist (
                uid TEXT PRIMARY KEY, state TEXT NOT NULL, patient_id TEXT,
                accession TEXT, study_uid TEXT, start_date TEXT, modality TEXT,
                station_ae TEXT, created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL, transaction_uid TEXT,
                dataset TEXT NOT NULL)""",
            "CREATE INDEX worklist_state ON worklist(state, start_date)",
        ],
    ),
    (
        8,
        [
            # Instances taken away by rejection notes (IHE IOCM), also those named before
            # they arrived; tier/rel_path: where the file of a hidden one still is (NULL
            # once deleted, or never received).
            """CREATE TABLE rejection (
                sop_uid TEXT PRIMARY KEY, study_uid TEXT, series_uid TEXT,
                code TEXT NOT NULL, note_uid TEXT NOT NULL,
                rejected_at DOUBLE PRECISION NOT NULL, tier TEXT, rel_path TEXT)""",
            "CREATE INDEX rejection_note ON rejection(note_uid)",
        ],
    ),
    (
        9,
        [
            # Archive clusters: each node's heartbeat, and the leases that pick the one
            # node running once-only jobs (lifecycle, retention, scrub).
            """CREATE TABLE cluster_node (
                node TEXT PRIMARY KEY, address TEXT, version TEXT,
                started_at DOUBLE PRECISION NOT NULL, heartbeat_at DOUBLE PRECISION NOT NULL,
                stored BIGINT NOT NULL DEFAULT 0)""",
            """CREATE TABLE cluster_lease (
                job TEXT PRIMARY KEY, holder TEXT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL, token BIGINT NOT NULL)""",
            # each node's upload queue is its receive cache's rows (tier "<tier>@<node>")
            "CREATE INDEX instance_tier ON instance(tier)",
        ],
    ),
]


def like_escape(text: str) -> str:
    """Escape a literal for ``LIKE ? ESCAPE '!'`` (the same in SQLite and PostgreSQL)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


class Database:
    """A connection per thread to one index database, same API for both backends."""

    def __init__(self, backend: str, connect: Any, *, max_idle: int = 8) -> None:
        self.backend = backend
        self._connect = connect
        self._max_idle = max_idle
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections (a small pool: association threads come and go, connections stay) --
    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Borrow a connection for one statement or transaction."""
        with self._lock:
            c = self._idle.pop() if self._idle else None
        if c is None:
            c = self._connect()
        ok = False
        try:
            yield c
            ok = True
        finally:
            # A PostgreSQL connection that raised may be broken: do not pool it.
            keep = ok or self.backend == "sqlite"
            with self._lock:
                if keep and not self._closed and len(self._idle) < self._max_idle:
                    self._idle.append(c)
                    c = None
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - dropping a connection we will not reuse
                    pass

    def close(self) -> None:
        """Close the pooled connections (borrowed ones close when returned)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing at shutdown, nothing to do about it
                pass

    # -- SQL -------------------------------------------------------------------------------
    def sql(self, text: str) -> str:
        """Rewrite ``?`` placeholders for the backend's param style."""
        if self.backend == "postgresql":
            return text.replace("%", "%%").replace("?", "%s")
        return text

    def query(self, text: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a SELECT and return all rows (autocommitted read)."""
        with self.connection() as c:
            cur = c.cursor()
            try:
                cur.execute(self.sql(text), tuple(params))
                rows = [tuple(r) for r in cur.fetchall()]
            finally:
                cur.close()
            if self.backend == "postgresql":
                c.rollback()  # end the implicit read transaction (no snapshot held open)
        return rows

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self.connection() as c:
            cur = c.cursor()
            try:
                if self.backend == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                yield Cursor(self, cur)
                c.commit()
            except BaseException:
                c.rollback()
                raise
            finally:
                cur.close()


class Cursor:
    """A cursor inside a transaction, with the placeholder shim applied."""

    def __init__(self, db: Database, cur: Any) -> None:
        self._db = db
        self._cur = cur

    def execute(self, text: str, params: Sequence[Any] = ()) -> Cursor:
        """Execute one statement."""
        self._cur.execute(self._db.sql(text), tuple(params))
        return self

    def executemany(self, text: str, rows: Iterable[Sequence[Any]]) -> None:
        """Execute one statement for many parameter rows."""
        self._cur.executemany(self._db.sql(text), [tuple(r) for r in rows])

    def fetchall(self) -> list[Row]:
        """Rows of the last SELECT."""
        return [tuple(r) for r in self._cur.fetchall()]

    def fetchone(self) -> Row | None:
        """One row of the last SELECT, or None."""
        r = self._cur.fetchone()
        return tuple(r) if r is not None else None

    @property
    def rowcount(self) -> int:
        """Rows touched by the last statement."""
        return int(self._cur.rowcount)


def _sqlite_connect(path: str) -> Any:
    def connect() -> sqlite3.Connection:
        c = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss (the WAL is fsynced per commit);
        # group commit keeps the number of commits (and fsyncs) low.
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA case_sensitive_like=ON")
        c.execute("PRAGMA foreign_keys=OFF")
        c.execute("PRAGMA cache_size=-16384")  # 16 MiB per pooled connection
        return c

    return connect


def _pg_connect(cfg: IndexConfig) -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise IndexError_(
            'the postgresql index needs psycopg 3: pip install "psycopg[binary]"'
        ) from exc
    password = cfg.password.resolve() if cfg.password is not None else None

    def connect() -> Any:
        try:
            return psycopg.connect(
                host=cfg.host, port=cfg.port, dbname=cfg.database, user=cfg.user,
                password=password, connect_timeout=10,
            )
        except psycopg.Error as exc:
            raise IndexError_(
                f"cannot connect to postgresql at {cfg.host}:{cfg.port}/{cfg.database} "
                f"as {cfg.user}: {type(exc).__name__}"
            ) from exc

    return connect


def open_database(cfg: IndexConfig, data_dir: Path) -> Database:
    """Open (and migrate) the index that ``cfg`` describes."""
    if cfg.backend == "sqlite":
        path = Path(cfg.path) if cfg.path else data_dir / "index.sqlite"
        if not path.is_absolute():
            path = data_dir / path
        private_dir(path.parent)
        private_file(path)  # patient names and IDs: 0640 (the WAL and SHM files follow)
        db = Database("sqlite", _sqlite_connect(str(path)))
    else:
        db = Database("postgresql", _pg_connect(cfg))
    migrate(db)
    return db


def schema_version(db: Database) -> int:
    """The highest applied migration (0 on an empty database)."""
    with db.transaction() as cur:
        if db.backend == "postgresql":  # two nodes creating it at once would collide
            cur.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


# The advisory lock PostgreSQL migrations hold (transaction-scoped: safe behind a
# connection pooler, released at commit even if the node dies).
_MIGRATION_LOCK = 0x7061637369  # "pacsi"


class SchemaTooNew(IndexError_):
    """The index was migrated by a newer pacsinfra than this one."""


def migrate(db: Database) -> int:
    """Apply pending migrations, each in its own transaction; return the new version.

    Several archive processes (workers, cluster nodes) may start at once on one index:
    each migration runs under the write lock (SQLite) or an advisory transaction lock
    (PostgreSQL), and is skipped by whoever gets there second. An index newer than this
    code is refused: an older node must not write to a schema it does not know.
    """
    current = schema_version(db)
    known = MIGRATIONS[-1][0]
    if current > known:
        raise SchemaTooNew(
            f"the archive index has schema version {current}, newer than this pacsinfra "
            f"{_version()} knows (up to {known}): another node runs a newer pacsinfra; "
            "upgrade this node to the same version before starting it")
    applied = _applied(db)
    for version, statements in MIGRATIONS:
        if version in applied:  # by set, not by maximum: a gap filled later still runs
            continue
        with db.transaction() as cur:
            if db.backend == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            # Re-check under the lock: another archive process may have migrated.
            row = cur.execute(
                "SELECT COUNT(*) FROM schema_version WHERE version = ?", (version,)
            ).fetchone()
            if row and row[0]:
                continue
            for stmt in statements:
                cur.execute(stmt)
            cur.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        current = max(current, version)
    return current


def _applied(db: Database) -> set[int]:
    """The migration versions already applied."""
    return {int(r[0]) for r in db.query("SELECT version FROM schema_version")}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pacsinfra")
    except PackageNotFoundError:
        return "(unknown version)"

