"""The database service without a server: rendering, wiring, plan-time checks, pure PG parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsinfra.apply.engine import site_driver
from pacsinfra.blueprint import load_blueprint
from pacsinfra.errors import BlueprintError, PlanError
from pacsinfra.plan.desired import desired_site
from pacsinfra.services import postgres
from pacsinfra.services.local import paths
from pacsinfra.specs import ServiceSpec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "local-database.yaml"


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Path:
    # short: the database's socket goes under it (pytest's tmp_path can be too deep)
    r = Path("/tmp/pxunit-root")
    monkeypatch.setenv(paths.ROOT_ENV, str(r))
    return r


def _resources(text: str | None = None, tmp: Path | None = None) -> dict[str, object]:
    if text is None:
        return dict(desired_site(load_blueprint(str(EXAMPLE)).site).resources)
    assert tmp is not None
    bp = tmp / "site.yaml"
    bp.write_text(text)
    return dict(desired_site(load_blueprint(str(bp)).site).resources)


def test_index_and_queue_rendered_from_the_database(root: Path) -> None:
    res = _resources()
    db, arc, rtr = (res[a] for a in ("service.pacsdb[0]", "service.archive[0]",
                                     "service.router[0]"))
    mdir = root / "local-db-demo" / "machines" / "local-db-demo-db-1"
    cfg = db.spec.config  # type: ignore[attr-defined]
    assert cfg["data_dir"] == str(mdir / "data" / "pacsdb")
    assert cfg["socket_dir"] == str(mdir / "run" / "pg-pacsdb")
    assert cfg["bind"] == "127.0.0.1" and cfg["password"] == {"env": "PACS_DB_PASSWORD"}
    index = arc.spec.config["index"]  # type: ignore[attr-defined]
    assert index == {"backend": "postgresql", "host": "127.0.0.1", "port": 15432,
                     "database": "pacs", "user": "pacs", "password": {"env": "PACS_DB_PASSWORD"}}
    queue = rtr.spec.config["queue"]  # type: ignore[attr-defined]
    assert (queue["host"], queue["port"], queue["database"], queue["user"]) == (
        "127.0.0.1", 15432, "router", "pacs")
    assert "service" not in index and "service" not in queue
    # the archive and the router start after the database (and are removed before it)
    assert "service.pacsdb[0]" in arc.depends_on  # type: ignore[attr-defined]
    assert "service.pacsdb[0]" in rtr.depends_on  # type: ignore[attr-defined]
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.router.config import RouterConfig

    ArchiveConfig.model_validate(dict(arc.spec.config))  # type: ignore[attr-defined]
    RouterConfig.model_validate(dict(rtr.spec.config))  # type: ignore[attr-defined]


def test_socket_dir_fits_a_unix_socket_path(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path / ("x" * 90)))
    sock = _resources()["service.pacsdb[0]"].spec.config["socket_dir"]  # type: ignore[attr-defined]
    assert sock.startswith("/tmp/pacsinfra-pg-") and len(sock) < 60
    assert sock == _resources()["service.pacsdb[0]"].spec.config["socket_dir"]  # type: ignore[attr-defined]
    text = EXAMPLE.read_text().replace("port: 15432", f"port: 15432\n      socket_dir: /{'s' * 100}")
    with pytest.raises(PlanError, match="socket_dir"):
        _resources(text, tmp_path)


def test_check_names_what_the_driver_cannot_do(root: Path) -> None:
    drv = site_driver("local", None)
    base = {"address": "service.db[0]", "name": "s-db-1-db", "service": "db",
            "kind": "database", "machine": "machine.db[0]"}
    ok = ServiceSpec(**base, config={"password": {"env": "X"}})  # type: ignore[arg-type]
    assert drv.check(ok) == []
    bad = ServiceSpec(**base, config={"tls": {"enabled": True}, "replica_of": "p"})  # type: ignore[arg-type]
    problems = drv.check(bad)
    assert len(problems) == 3
    assert "password" in problems[0] and "TLS" in problems[1] and "replica" in problems[2]


def test_blueprint_refuses_bad_names_and_a_foreign_user(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("databases: [pacs, router]", "databases: [pacs, Router, postgres]")
    text = text.replace("index: {backend: postgresql, service: pacsdb}",
                        "index: {backend: postgresql, service: pacsdb, user: someone}")
    bp = tmp_path / "bad.yaml"
    bp.write_text(text)
    with pytest.raises(BlueprintError) as err:
        load_blueprint(str(bp))
    diags = {d.path: d for d in err.value.diagnostics}
    assert "services.pacsdb.config.databases[1]" in diags, list(diags)
    assert diags["services.pacsdb.config.databases[1]"].line > 0
    text = EXAMPLE.read_text().replace(
        "index: {backend: postgresql, service: pacsdb}",
        "index: {backend: postgresql, service: pacsdb, user: someone}")
    bp.write_text(text)
    with pytest.raises(BlueprintError) as err:
        load_blueprint(str(bp))
    codes = {(d.path, d.code) for d in err.value.diagnostics}
    assert ("services.archive.config.index.user", "user-mismatch") in codes, codes


def test_scram_verifier_shape_and_salt() -> None:
    v1 = postgres.scram_verifier("pencil", salt=b"0123456789abcdef")
    v2 = postgres.scram_verifier("pencil", salt=b"0123456789abcdef")
    assert v1 == v2 and v1.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert "pencil" not in v1
    assert postgres.scram_verifier("pencil") != postgres.scram_verifier("pencil")  # random salt


def test_sql_and_conf_text() -> None:
    sql = postgres.roles_sql("pacs", "SCRAM-SHA-256$4096:x$y:z", ["pacs", "router"])
    assert sql.count("\\gexec") == 3 and "CREATE DATABASE router OWNER pacs" in sql
    with pytest.raises(Exception, match="plain lower-case"):
        postgres.roles_sql("pacs; DROP", "v", [])
    conf = postgres.conf_text({"bind": "0.0.0.0", "port": 5433, "socket_dir": "/run/x",
                               "shared_buffers": 64})
    assert "listen_addresses = '*'" in conf and "port = 5433" in conf
    assert "shared_buffers = 64MB" in conf and "unix_socket_directories = '/run/x'" in conf
    hba = postgres.hba_text("postgres")
    assert "local   all       postgres  peer" in hba and "trust" not in hba
