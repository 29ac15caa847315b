"""systemd units for services on remote hosts: the pure parts (no target needed).

What they are checked against is real: the rendered units by ``systemd-analyze verify``;
the status mapping by ``systemctl show`` outputs in the shapes systemd 252 prints them
(the live mapping is exercised in ``tests/integration/test_kvm_guest_systemd.py``,
which also checks the env file against systemd's own parser, through a process's
environment).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need_binary

from pacsinfra.blueprint.load import validate
from pacsinfra.errors import DeployError
from pacsinfra.services import systemd as sd
from pacsinfra.services.remote.service import RemoteService, init_choice, unit_name
from pacsinfra.services.remote.session import HostSession
from pacsinfra.services.remote.settings import HostSettings
from pacsinfra.specs import ServiceSpec


def _service(kind: str = "archive", config: dict[str, Any] | None = None,
             root: str = "/opt/pacsinfra", user: str = "root") -> RemoteService:
    host = HostSettings(machine="st-archive-1", address="10.0.0.5", root=root, user=user,
                        host_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample",))
    cfg = config if config is not None else {"ae_title": "ARCH_A", "port": 11112,
                                             "data_dir": f"{root}/data/{kind}"}
    spec = ServiceSpec(address=f"service.{kind}[0]", name=f"st-archive-1-{kind}", service=kind,
                       kind=kind, machine="machine.archive[0]", config=cfg, host="10.0.0.5")
    return RemoteService(HostSession(host), spec)


def _verify(text: str, tmp_path: Path, name: str) -> str:
    need_binary("systemd-analyze")
    unit = tmp_path / name
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    return (proc.stdout + proc.stderr).strip()


# -- the unit a remote service gets -------------------------------------------------------------


@pytest.fixture
def host_root() -> Iterator[str]:
    """A root whose ``venv/bin/python`` exists (systemd-analyze checks ExecStart), outside
    the paths a hardened unit cannot see (so not under /tmp)."""
    root = Path(tempfile.mkdtemp(prefix="pacsinfra-unit-", dir="/dev/shm"))
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to(sys.executable)
    try:
        yield str(root)
    finally:
        shutil.rmtree(root)


def _config(kind: str, root: str, port: int) -> dict[str, Any]:
    if kind == "viewer":
        return {"port": port, "data_dir": f"{root}/data/viewer",
                "ohif": {"cache_dir": f"{root}/cache/ohif"}}
    return {"ae_title": "X", "port": port, "data_dir": f"{root}/data/{kind}",
            "spool_dir": f"{root}/data/{kind}"}


@pytest.mark.parametrize("kind", ["archive", "router", "viewer"])
def test_remote_units_are_clean_for_systemd(kind: str, tmp_path: Path, host_root: str) -> None:
    root = host_root
    svc = _service(kind, _config(kind, root, 104), root=root)
    text = svc.render_unit(with_secrets=True)
    assert f"ExecStart={root}/venv/bin/python -m pacsinfra {kind} serve --config " \
           f"{root}/services/{kind}/config.yaml" in text
    assert f"EnvironmentFile={root}/services/{kind}/secrets.env" in text
    # logged in as root, the service runs as the service account (its own group)
    assert "User=pacsinfra\n" in text and "Group=" not in text
    rw = f"{root}/cache/ohif {root}/data/viewer" if kind == "viewer" else f"{root}/data/{kind}"
    assert f"ReadWritePaths={rw}\n" in text
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in text  # port 104 only
    name = unit_name(svc.session.settings, kind)
    assert name.startswith("pacsinfra-") and name.endswith(f"-{kind}.service")
    assert _verify(text, tmp_path, name) == ""


@pytest.mark.parametrize("kind", ["archive", "router", "viewer"])
@pytest.mark.parametrize("port", [11112, 104])
def test_units_rate_ok_in_systemd_analyze_security(kind: str, port: int, tmp_path: Path,
                                                   host_root: str) -> None:
    """systemd's own assessment: "OK" is an exposure below 2.0 of 10 (20 of 100)."""
    need_binary("systemd-analyze")
    svc = _service(kind, _config(kind, host_root, port), root=host_root)
    unit = tmp_path / unit_name(svc.session.settings, kind)
    unit.write_text(svc.render_unit(with_secrets=True))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                           "--no-pager", str(unit)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    last = (proc.stdout.strip().splitlines() or ["?"])[-1]
    assert proc.returncode == 0, last
    assert "OK" in last, last
    if port >= 1024:
        assert "CapabilityBoundingSet=\n" in unit.read_text()  # no capability at all


def test_a_login_other_than_root_runs_the_services_itself() -> None:
    text = _service(user="pacs").render_unit(with_secrets=False)
    assert "User=pacs\n" in text


def test_a_unit_without_secrets_has_no_environment_file() -> None:
    text = _service().render_unit(with_secrets=False)
    assert "EnvironmentFile" not in text
    assert "ExecStart=/opt/pacsinfra/venv/bin/python -m pacsinfra archive serve" in text


def test_unit_names_follow_the_root() -> None:
    default = _service().session.settings
    assert unit_name(default, "archive-a") == "pacsinfra-archive-a.service"
    other = _service(root="/srv/pacs").session.settings
    second = _service(root="/srv/pacs2").session.settings
    assert unit_name(other, "archive") != unit_name(second, "archive")
    assert unit_name(other, "archive") == unit_name(other, "archive")


@pytest.mark.parametrize("root", ["/tmp/pacs", "/home/pacs", "/root/pacsinfra"])
def test_roots_a_hardened_unit_cannot_see_are_refused(root: str) -> None:
    with pytest.raises(DeployError) as info:
        _service(root=root).render_unit(with_secrets=False)
    assert f"{root} is hidden from a hardened systemd unit" in str(info.value)
    assert "init: supervisor" in str(info.value)


def test_data_under_a_hidden_path_is_refused_too() -> None:
    svc = _service(config={"ae_title": "A", "port": 11112, "data_dir": "/home/x/archive"})
    with pytest.raises(DeployError, match="/home/x/archive is hidden"):
        svc.render_unit(with_secrets=False)


def test_a_database_service_has_no_unit() -> None:
    svc = _service("database", {"port": 5432, "data_dir": "/opt/pacsinfra/data/db",
                                "socket_dir": "/opt/pacsinfra/run/db", "password": {"env": "X"}})
    assert svc.wants_systemd() is False  # always the supervisor (PgServer), no host asked
    with pytest.raises(DeployError, match="no systemd unit for a database"):
        svc.render_unit(with_secrets=False)


def test_init_supervisor_never_asks_the_host() -> None:
    svc = _service()
    svc.init = "supervisor"
    assert svc.wants_systemd() is False  # no connection was opened (there is no host)


# -- what the service writes -------------------------------------------------------------------


def test_writable_paths_cover_every_place_a_config_writes() -> None:
    archive = {"data_dir": "/srv/a", "tiers": [
        {"name": "fast", "path": "fast"},  # relative: under data_dir
        {"name": "slow", "path": "/mnt/slow/a"},
        {"name": "cloud", "kind": "s3", "path": "/ignored"},
    ], "index": {"backend": "sqlite", "path": "/var/lib/pacs-index/index.sqlite"},
        "audit": {"file": "/var/log/pacs/audit.log"}}
    assert sd.writable_paths("archive", archive) == [
        "/mnt/slow/a", "/srv/a", "/var/lib/pacs-index", "/var/log/pacs"]
    router = {"spool_dir": "/srv/r", "queue": {"backend": "sqlite", "path": "/srv/r/q.sqlite"}}
    assert sd.writable_paths("router", router) == ["/srv/r"]  # the queue is inside the spool
    pg = {"spool_dir": "/srv/r", "queue": {"backend": "postgresql", "path": "/x/q"}}
    assert sd.writable_paths("router", pg) == ["/srv/r"]


# -- the env file --------------------------------------------------------------------------------


def test_env_file_quotes_what_systemd_would_interpret() -> None:
    text = sd.env_file_text({"B_TOKEN": 'a "b" $HOME `id` \\ é', "A": "plain"})
    lines = text.splitlines()
    assert lines[0].startswith("#")  # a comment: who wrote it
    assert lines[1:] == ['A="plain"', 'B_TOKEN="a \\"b\\" \\$HOME \\`id\\` \\\\ é"']


def test_env_file_refuses_what_it_cannot_carry_without_echoing_values() -> None:
    with pytest.raises(DeployError) as info:
        sd.env_file_text({"BAD NAME": "x"})
    assert "BAD NAME" in str(info.value)
    with pytest.raises(DeployError) as info:
        sd.env_file_text({"TOKEN": "hunter2\0x"})
    assert "TOKEN" in str(info.value) and "hunter2" not in str(info.value)


# -- systemctl show -> ServiceStatus ----------------------------------------------------------


def _show(**props: object) -> str:
    base: dict[str, object] = {"LoadState": "loaded", "ActiveState": "active",
                               "SubState": "running", "MainPID": 176, "NRestarts": 0,
                               "ExecMainCode": 0, "ExecMainStatus": 0, "Result": "success"}
    base.update(props)
    return "".join(f"{k}={v}\n" for k, v in base.items())


@pytest.mark.parametrize(("props", "active", "state", "last_exit"), [
    ({}, True, "running", None),
    # killed, waiting RestartSec before the automatic restart
    ({"ActiveState": "activating", "SubState": "auto-restart", "MainPID": 0,
      "ExecMainCode": 2, "ExecMainStatus": 9, "Result": "signal"},
     True, "backoff", {"code": None, "signal": "SIGKILL"}),
    ({"ActiveState": "failed", "SubState": "failed", "MainPID": 0, "ExecMainCode": 1,
      "ExecMainStatus": 2, "Result": "start-limit-hit"},
     False, "failed", {"code": 2, "signal": None}),
    ({"ActiveState": "inactive", "SubState": "dead", "MainPID": 0, "ExecMainCode": 1},
     False, "exited", {"code": 0, "signal": None}),
    ({"ActiveState": "inactive", "SubState": "dead", "MainPID": 0, "ExecMainCode": 2,
      "ExecMainStatus": 15}, False, "stopped", {"code": None, "signal": "SIGTERM"}),
    ({"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead", "MainPID": 0},
     False, "stopped", None),
])
def test_status_from_systemctl_show(props: dict[str, object], active: bool, state: str,
                                    last_exit: dict[str, object] | None) -> None:
    st = sd.status_from_show("archive", _show(**props))
    assert (st.active, st.state, st.last_exit) == (active, state, last_exit)
    assert st.pid == (props.get("MainPID", 176) or None)


def test_running_means_what_the_supervisor_means() -> None:
    from pacsinfra.services.common import is_running

    assert is_running(sd.status_from_show("a", _show()))
    assert is_running(sd.status_from_show("a", _show(ActiveState="activating",
                                                     SubState="auto-restart", ExecMainCode=1)))
    assert not is_running(sd.status_from_show("a", _show(ActiveState="failed")))
    assert not is_running(sd.status_from_show("a", _show(LoadState="not-found")))


def test_unit_names_are_checked_before_any_command() -> None:
    with pytest.raises(DeployError, match="not a valid service unit name"):
        sd.SystemdUnit(object(), "a", "x; rm -rf /")  # type: ignore[arg-type]


# -- the setting -----------------------------------------------------------------------------------

_SITE = """\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: st}}
provider:
  driver: static
  static:
{static}    hosts:
      st-a-1: {{address: 10.0.0.5, host_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"]}}
deploy: {{key_file: /k{deploy}}}
machines:
  a: {{cpu: {{count: 1}}, memory: {{size: 1GiB}}}}
"""


class _Loaded:
    def __init__(self, loaded: Any, diagnostics: list[Any]) -> None:
        self.site = loaded.site if loaded is not None else None
        self.diagnostics = diagnostics


def _load(tmp_path: Path, static: str = "", deploy: str = "") -> _Loaded:
    path = tmp_path / "site.yaml"
    path.write_text(_SITE.format(static=static, deploy=deploy))
    return _Loaded(*validate(path))


def test_deploy_init_reaches_the_services(tmp_path: Path) -> None:
    result = _load(tmp_path, deploy=", init: systemd")
    assert result.site is not None, result.diagnostics
    from pacsinfra.apply.engine import deploy_settings, site_driver

    # from the model, and from a saved plan's JSON
    for deploy in (result.site.deploy, deploy_settings(result.site)):
        drv = site_driver("static", result.site.provider.static, deploy=deploy)
        assert drv.services is not None and drv.services.init == "systemd"  # type: ignore[attr-defined]
    assert init_choice("auto") == "auto"
    with pytest.raises(DeployError, match="init 'upstart' is not one of"):
        init_choice("upstart")


def test_init_in_the_provider_section_says_where_it_moved(tmp_path: Path) -> None:
    result = _load(tmp_path, static="    init: supervisor\n")
    assert result.site is None
    (diag,) = [d for d in result.diagnostics if d.severity == "error"]
    assert diag.path == "provider.static.init" and "moved: set it as deploy.init" in diag.hint


def test_an_unknown_init_is_refused(tmp_path: Path) -> None:
    result = _load(tmp_path, deploy=", init: upstart")
    assert result.site is None
    assert any("init" in d.path for d in result.diagnostics), result.diagnostics
