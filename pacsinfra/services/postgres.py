"""A PostgreSQL server from the target's own packages, set up and checked through a Transport.

What the ``database`` service needs on a machine, wherever it is (this box through
:class:`~pacsinfra.deploy.local.LocalTransport`, a host over SSH): the same commands.

- **Binaries**: ``/usr/lib/postgresql/<version>/bin`` (Debian/Ubuntu's ``postgresql``
  package), else ``postgres`` on ``PATH`` when it is that major version.
- **Who runs it**: PostgreSQL refuses to run as root. As root, the cluster belongs to
  the ``postgres`` system user (created by the package): one-off commands run through
  ``runuser -u postgres``, the server itself through ``setpriv`` (which *execs*, so the
  supervised pid is the postmaster and signals reach it directly). As anyone else the
  cluster belongs to that user.
- **The cluster**: ``initdb`` when the data directory is empty (UTF8, data checksums);
  an existing cluster of another major version is refused (that needs pg_upgrade).
  ``postgresql.conf`` and ``pg_hba.conf`` are written from the rendered config on every
  deploy: TCP on ``bind``:``port`` with SCRAM-SHA-256 for the services' role, the Unix
  socket with ``peer`` for the cluster's superuser only (who has no password at all).
- **Role and databases**: created idempotently over the socket by ``psql`` with the SQL
  on stdin. The password never appears on a command line, in a file, or in SQL: the
  role gets a SCRAM verifier computed here (:func:`scram_verifier`).
- **Health**: ``SELECT 1`` over TCP as the role, with its password, in every database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pacsinfra.deploy.transport import Transport, check, put_text, to_shell
from pacsinfra.errors import DeployError, ServiceCheckError
from pacsinfra.secrets import SecretRef
from pacsinfra.services import supervisor

PG_LIB = "/usr/lib/postgresql"
SYSTEM_USER = "postgres"
WILDCARDS = ("", "0.0.0.0", "::")
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# -- pure parts ----------------------------------------------------------------------------


def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    ``ALTER ROLE ... PASSWORD '<verifier>'`` sets the password without sending it: a
    server log line or a ``pg_stat_activity`` row shows the verifier, not the secret.
    """
    # SASLprep is the identity for ASCII; NFKC is its normalisation step for the rest.
    prepared = password if password.isascii() else unicodedata.normalize("NFKC", password)
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", prepared.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _name(value: Any, what: str) -> str:
    """A role or database name, checked again here: it goes into SQL unquoted by design."""
    text = str(value)
    if not _NAME.match(text):
        raise DeployError(f"{what} {text!r} is not a plain lower-case PostgreSQL name")
    return text


def conf_text(config: Mapping[str, Any]) -> str:
    """``postgresql.conf`` for a rendered database config."""
    bind = str(config.get("bind") or "127.0.0.1")
    lines = [
        "# written by pacsinfra from the site's blueprint; changes are overwritten by apply",
        f"listen_addresses = {_quote_literal('*' if bind in ('0.0.0.0', '::') else bind)}",
        f"port = {int(config.get('port', 5432))}",
        f"unix_socket_directories = {_quote_literal(str(config['socket_dir']))}",
        f"max_connections = {int(config.get('max_connections', 200))}",
        "password_encryption = 'scram-sha-256'",
        # logs go to stderr, which the supervisor writes to the service's log
        "logging_collector = off",
        "log_destination = 'stderr'",
        "log_line_prefix = '%m [%p] %q%u@%d '",
        # the SQL of a failing statement would be logged: pacsinfra never puts a secret
        # there, but the services' own statements carry patient data
        "log_min_error_statement = 'panic'",
        "fsync = on",
        "synchronous_commit = on",
        "full_page_writes = on",
    ]
    if config.get("shared_buffers"):
        lines.append(f"shared_buffers = {int(config['shared_buffers'])}MB")
    return "\n".join(lines) + "\n"


def hba_text(superuser: str) -> str:
    """``pg_hba.conf``: the superuser over the socket by peer; everyone else by SCRAM on TCP."""
    return (
        "# written by pacsinfra; changes are overwritten by apply\n"
        "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
        f"local   all       {superuser}  peer\n"
        "host    all       all   0.0.0.0/0  scram-sha-256\n"
        "host    all       all   ::/0       scram-sha-256\n"
    )


def roles_sql(user: str, verifier: str, databases: Sequence[str]) -> str:
    """psql input that creates the role and its databases when missing (run it twice: no-op)."""
    user = _name(user, "role")
    out = [
        f"SELECT 'CREATE ROLE {user} LOGIN' WHERE NOT EXISTS "
        f"(SELECT FROM pg_roles WHERE rolname = '{user}')\\gexec",
        f"ALTER ROLE {user} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
        f"PASSWORD {_quote_literal(verifier)};",
    ]
    for db in databases:
        db = _name(db, "database")
        out.append(f"SELECT 'CREATE DATABASE {db} OWNER {user} ENCODING ''UTF8'' "
                   f"TEMPLATE template0' WHERE NOT EXISTS "
                   f"(SELECT FROM pg_database WHERE datname = '{db}')\\gexec")
        out.append(f"ALTER DATABASE {db} OWNER TO {user};")
    return "\n".join(out) + "\n"


def connect_host(config: Mapping[str, Any], host: str | None) -> str:
    """Where the pacsinfra machine reaches the server: a specific bind, else the machine."""
    bind = str(config.get("bind") or "")
    return bind if bind not in WILDCARDS else (host or "127.0.0.1")


# -- one server on one machine ---------------------------------------------------------------


class PgServer:
    """The PostgreSQL cluster of one ``database`` service on the machine ``transport`` reaches."""

    def __init__(self, transport: Transport, name: str, config: Mapping[str, Any],
                 *, host: str | None = None) -> None:
        self.t = transport
        self.name = name  # the service's resource name, for messages
        self.config = config
        self.host = host
        self.data_dir = str(config.get("data_dir", ""))
        self.socket_dir = str(config.get("socket_dir", ""))
        self.port = int(config.get("port", 5432))
        self.version = int(config.get("version", 15))
        self._bindir: str | None = None
        self._owner: str | None = None
        self._is_root = False
        self._superuser: str | None = None

    # -- the target --------------------------------------------------------------------
    def _run(self, cmd: list[str], what: str, timeout: float = 120.0, *,
             input: bytes | None = None) -> str:
        res = self.t.run(cmd, timeout, input=input)
        if res.rc != 0:
            tail = "\n  ".join((res.stderr or res.stdout).strip().splitlines()[-6:])
            raise DeployError(f"{self.name}: {what} failed (exit {res.rc}): "
                              f"{to_shell(cmd)[:160]}" + (f"\n  {tail}" if tail else ""))
        return res.stdout

    def bindir(self) -> str:
        """The directory of this major version's server binaries on the target."""
        if self._bindir is None:
            want = f"{PG_LIB}/{self.version}/bin"
            if self.t.exists(f"{want}/postgres"):
                self._bindir = want
            else:
                found = self.t.run(["sh", "-c", "command -v postgres"], 30).stdout.strip()
                if found:
                    ver = self.t.run([found, "--version"], 30).stdout
                    m = re.search(r"\s(\d+)(?:\.\d+)?", ver)
                    if m and int(m.group(1)) == self.version:
                        self._bindir = os.path.dirname(found)
            if self._bindir is None:
                listing = self.t.run(["ls", "-1", PG_LIB], 30).stdout.split()
                have = sorted(v for v in listing if v.isdigit())
                raise DeployError(
                    f"{self.name}: PostgreSQL {self.version} is not installed on {self.t.name} "
                    f"({want}/postgres missing; installed: {', '.join(have) or 'none'}): "
                    f"apt-get install -y postgresql-{self.version}, or set the service's "
                    "version to one that is installed")
        return self._bindir

    def owner(self) -> str:
        """The system user the cluster belongs to (``postgres`` when deploying as root)."""
        if self._owner is None:
            uid = self.t.run(["id", "-u"], 30).stdout.strip()
            if uid == "0":
                self._is_root = True
                if self.t.run(["id", "-u", SYSTEM_USER], 30).rc != 0:
                    raise DeployError(
                        f"{self.name}: PostgreSQL refuses to run as root and {self.t.name} has "
                        f"no {SYSTEM_USER!r} user (the postgresql package creates it: "
                        "apt-get install -y postgresql)")
                self._owner = SYSTEM_USER
            else:
                self._owner = self.t.run(["id", "-un"], 30).stdout.strip()
        return self._owner

    def _as_owner(self) -> list[str]:
        """Prefix of a one-off command run as the cluster's owner, from ``/``."""
        # cwd /: the owner may not be allowed into the caller's working directory
        env = ["env", "-C", "/"]
        return ["runuser", "-u", SYSTEM_USER, "--", *env] if self._root() else env

    def _root(self) -> bool:
        """Deploying as root (the cluster then belongs to the ``postgres`` user)."""
        self.owner()
        return self._is_root

    def superuser(self) -> str:
        """The cluster's superuser role: its owner's name (peer authentication maps them)."""
        if self._superuser is None:
            self._superuser = self.owner()
            if self._superuser == str(self.config.get("user")):
                raise DeployError(
                    f"{self.name}: the services' role {self._superuser!r} is also the system "
                    "user that owns the cluster (its superuser); choose another user")
        return self._superuser

    # -- preparing the cluster ---------------------------------------------------------
    def prepare(self) -> None:
        """Directories, ``initdb`` when empty, config files. Idempotent."""
        bindir, owner = self.bindir(), self.owner()
        self._run(["mkdir", "-p", "--", self.data_dir, self.socket_dir], "creating directories")
        if self._root():
            self._run(["chown", f"{owner}:", "--", self.data_dir, self.socket_dir],
                      "handing the directories to the postgres user")
        self._run(["chmod", "0700", "--", self.data_dir], "restricting the data directory")
        if self.t.run([*self._as_owner(), "test", "-w", self.data_dir, "-a", "-x",
                       self.socket_dir], 30).rc != 0:
            raise DeployError(
                f"{self.name}: user {owner!r} cannot reach {self.data_dir} or {self.socket_dir} "
                f"on {self.t.name} (a parent directory is not searchable by it, e.g. a home "
                "directory with mode 0700): put the provider's root or the service's data_dir "
                "and socket_dir where that user can reach them")
        version_file = f"{self.data_dir}/PG_VERSION"
        if self.t.exists(version_file):
            have = self._run(["cat", version_file], "reading PG_VERSION").strip()
            if have != str(self.version):
                raise DeployError(
                    f"{self.name}: {self.data_dir} holds a PostgreSQL {have} cluster but the "
                    f"service runs version {self.version}: upgrade it with pg_upgrade, or set "
                    f"version: {have}")
        else:
            listing = self._run(["ls", "-A", "--", self.data_dir], "listing the data directory")
            if listing.strip():
                raise DeployError(
                    f"{self.name}: {self.data_dir} is not empty and holds no PostgreSQL "
                    "cluster; refusing to initialise over it")
            self._run([*self._as_owner(), f"{bindir}/initdb", "-D", self.data_dir,
                       "-U", self.superuser(), "-E", "UTF8", "--locale=C.UTF-8",
                       "--data-checksums", "--auth-local=peer", "--auth-host=scram-sha-256"],
                      "initdb", timeout=300)
        self.write_files()

    def write_files(self) -> None:
        """``postgresql.conf`` and ``pg_hba.conf`` in the data directory (owner-only)."""
        for fname, text in (("postgresql.conf", conf_text(self.config)),
                            ("pg_hba.conf", hba_text(self.superuser()))):
            path = f"{self.data_dir}/{fname}"
            put_text(self.t, text, path, 0o600)
            if self._root():
                check(self.t, ["chown", f"{self.owner()}:", "--", path], 30)

    # -- running -------------------------------------------------------------------------
    def argv(self) -> list[str]:
        """The server command the supervisor runs (the postmaster itself, as the owner)."""
        cmd = [f"{self.bindir()}/postgres", "-D", self.data_dir]
        if self._root():
            return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}",
                    "--init-groups", "--", *cmd]
        return cmd

    def supervised(self, base: supervisor.ServiceSpec) -> supervisor.ServiceSpec:
        """``base`` (name, run dir) turned into the server's supervisor spec."""
        from dataclasses import replace

        # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, work is flushed.
        return replace(base, argv=self.argv(), cwd="/", stop_signal="SIGINT", stop_timeout=60.0)

    def psql(self, sql: str, database: str = "postgres", timeout: float = 60.0) -> str:
        """Run ``sql`` (from stdin) as the superuser over the Unix socket; its output."""
        cmd = [*self._as_owner(), f"{self.bindir()}/psql", "-X", "-q", "-A", "-t",
               "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir, "-p", str(self.port),
               "-U", self.superuser(), "-d", database, "-f", "-"]
        return self._run(cmd, "psql", timeout, input=sql.encode())

    def password(self) -> str:
        """The role's password, resolved now (never stored)."""
        raw = self.config.get("password")
        if not raw:
            raise DeployError(f"{self.name}: the database service has no password reference")
        return SecretRef.model_validate(raw).resolve()

    def ensure_roles(self) -> None:
        """Create the role (and set its password) and the databases it owns."""
        user = str(self.config.get("user", "pacs"))
        dbs = [str(d) for d in self.config.get("databases", ())]
        self.psql(roles_sql(user, scram_verifier(self.password()), dbs))

    def select_one(self) -> None:
        """``SELECT 1`` in every database over TCP as the role, as a client would."""
        import psycopg

        user = str(self.config.get("user", "pacs"))
        where = connect_host(self.config, self.host)
        password = self.password()
        for db in self.config.get("databases", ()):
            with psycopg.connect(host=where, port=self.port, dbname=str(db), user=user,
                                 password=password, connect_timeout=5) as conn:
                row = conn.execute("SELECT 1").fetchone()
                if not row or row[0] != 1:
                    raise DeployError(f"{self.name}: SELECT 1 in {db} returned {row!r}")

    def wait_healthy(self, status: Callable[[], supervisor.ServiceStatus],
                     log_tail: Callable[[], str], *, log_where: str,
                     timeout: float = 60.0, poll: float = 0.25) -> float:
        """Wait for the server, create role and databases, then ``SELECT 1`` as the role.

        Returns the seconds it took; raises :class:`ServiceCheckError` with the end of the
        server's log when it dies or does not answer in time.
        """
        import psycopg

        started = time.monotonic()
        deadline = started + timeout
        last = "no answer"
        roles_done = False
        while True:
            st = status()
            if not st.active or st.state in ("failed", "exited", "stopped", "dead"):
                last = f"process {st.state} (last exit {st.last_exit})"
                break
            if st.last_exit is not None:
                last = "process exited at start"
                break
            try:
                if not roles_done:
                    self.psql("SELECT 1;", timeout=15)
                    self.ensure_roles()
                    roles_done = True
                self.select_one()
                return time.monotonic() - started
            except psycopg.Error as exc:
                # libpq's message names host, database and user, never the password
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                last = f"SELECT 1 as {self.config.get('user')}: {type(exc).__name__} {first}"
            except DeployError as exc:
                last = str(exc).splitlines()[-1].strip()
            if time.monotonic() > deadline:
                break
            time.sleep(poll)
        host = connect_host(self.config, self.host)
        raise ServiceCheckError(
            f"{self.name}: health check failed: PostgreSQL {host}:{self.port}: {last} after "
            f"{time.monotonic() - started:.1f}s; end of its log ({log_where}):\n{log_tail()}")
