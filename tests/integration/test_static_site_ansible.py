"""The ``static`` provider through ansible-runner: the same site, the same result as over SSH.

The site of ``test_static_site.py`` (router on host 1, archives on hosts 2 and 3, fan-out)
is applied with ``deploy: {engine: ssh}``, recorded and destroyed, then applied on the
same hosts and roots with ``deploy: {engine: ansible}``: every file pacsinfra writes
(marks, configs, supervisor specs, the wheel marker, the venv's distributions) has the
same content and mode, and the state the same content (timestamps aside). Then the
ansible-deployed site passes ``verify``, plans empty and is destroyed. A wrongly pinned
host key fails under ansible too, naming the machine and the pinned fingerprint, without a
traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import need, need_module
from support.netns_hosts import NetnsHost, netns_hosts  # noqa: F401 - fixture
from test_static_site import MACHINES, StaticSite, _netns_of, house, site  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

SERVICES = [(0, "router"), (1, "archive-a"), (2, "archive-b")]
# keys whose values differ from run to run by nature (clock, process, counter)
_VOLATILE = ("time", "_at", "created", "updated", "started", "serial", "lineage", "pid",
             "duration", "since", "stamp")


def _need_ansible() -> None:
    need_module("ansible_runner")
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    need(shutil.which("ansible-playbook", path=path) is not None,
         "ansible-playbook not installed (pip install -e '.[dev]' installs ansible-core)")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()
                if not any(t in k.lower() for t in _VOLATILE)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def host_files(s: StaticSite) -> dict[str, Any]:
    """What pacsinfra left on the hosts: path -> (mode, content) for its own files.

    The venv is compared by its distributions and entry points (their code is the same
    wheel and index either way); logs and data by name and mode only.
    """
    out: dict[str, Any] = {}
    for i, root in enumerate(s.roots):
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            key = f"host{i}/{rel}"
            parts = rel.parts
            if "__pycache__" in parts or path.is_symlink():
                continue
            mode = oct(path.stat().st_mode & 0o7777)
            if parts[0] == "venv" and len(parts) > 1 and parts[1] in ("lib", "include"):
                if path.is_dir() and path.name.endswith(".dist-info"):
                    out[key] = mode
                continue
            if path.is_dir() or parts[0] == "data" or path.suffix == ".log":
                out[key] = mode if path.is_dir() or parts[0] != "data" else "data"
                continue
            if path.suffix == ".pid":
                content: Any = "a pid"
            elif path.suffix == ".json":
                content = _strip(json.loads(path.read_text()))
            elif parts[0] == "venv" and parts[1] == "bin" and path.suffix not in (".py", ""):
                content = "binary"
            else:
                try:
                    content = path.read_text()
                except UnicodeDecodeError:
                    content = "binary"
            out[key] = (mode, content)
    return out


def state_of(s: StaticSite) -> Any:
    return _strip(json.loads((s.tmp / ".pacsinfra" / "stsite.state.json").read_text()))


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    return "\n".join(f"{k}:\n  ssh:     {a.get(k)!r:.300}\n  ansible: {b.get(k)!r:.300}"
                     for k in keys if a.get(k) != b.get(k))[:6000]


def test_ansible_engine_gives_the_same_site_as_ssh(site: StaticSite) -> None:  # noqa: F811
    _need_ansible()
    site.timeout = 900.0  # a playbook run per command on a shared 2-core machine
    bp = str(site.bp)
    times: dict[str, float] = {}

    def timed(label: str, *args: str) -> str:
        t0 = time.monotonic()
        out = site.ok(*args)
        times[label] = time.monotonic() - t0
        return out

    # the reference: over SSH (paramiko)
    site.write(engine="ssh")
    assert "Apply complete: 6 done (6 create)" in timed("ssh apply", "apply", bp, "--auto-approve")
    via_ssh, state_ssh = host_files(site), state_of(site)
    timed("ssh destroy", "destroy", bp, "--auto-approve")
    assert site.processes() == [] or _settle(site)

    # the same site through ansible-runner, on the same hosts and roots
    site.write(engine="ansible")
    site.ok("validate", "--strict", bp)
    out = timed("ansible apply", "apply", bp, "--auto-approve")
    assert "Apply complete: 6 done (6 create)" in out, out
    via_ansible, state_ansible = host_files(site), state_of(site)
    print("\n" + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    assert via_ansible == via_ssh, _diff(via_ssh, via_ansible)
    assert state_ansible == state_ssh, _diff({"state": state_ssh}, {"state": state_ansible})
    assert any(k.endswith("services/router/config.yaml") for k in via_ansible)
    assert via_ansible["host0/services/router/config.yaml"][0] == "0o640"

    for i, svc in SERVICES:  # in the host's namespace, from its venv
        pid = site.pid(i, svc)
        assert _netns_of(pid) == site.hosts[i].netns, (svc, pid)
    out = timed("ansible verify", "verify", bp)
    assert "smoke test PASSED" in out, out

    # the applied site is what the blueprint says: nothing to do (an in-place update that
    # restarts only the changed service is the same steps over either engine:
    # test_static_site.py takes one over SSH)
    site.ok("plan", bp, "--detailed-exitcode")

    out = timed("ansible destroy", "destroy", bp, "--auto-approve")
    assert "6 delete" in out, out
    assert _settle(site)
    for i, _ in SERVICES:
        assert not (site.roots[i] / "machine.json").exists()
        assert not (site.roots[i] / "venv").exists()
    assert (site.roots[1] / "data" / "archive-a").is_dir()
    print("\n" + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))


def _settle(s: StaticSite) -> bool:
    deadline = time.monotonic() + 10
    while s.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return s.processes() == []


def test_wrong_host_key_is_refused_through_ansible(site: StaticSite) -> None:  # noqa: F811
    from pacsinfra.deploy.ssh import fingerprint, parse_public_key

    _need_ansible()
    hosts = site.hosts
    site.write(keys=[hosts[1].host_key_line, hosts[1].host_key_line, hosts[2].host_key_line],
               engine="ansible")  # host 0 (the router's) is pinned to host 1's key
    t0 = time.monotonic()
    r = site.cli("apply", str(site.bp), "--auto-approve")
    took = time.monotonic() - t0
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert "Traceback" not in text, text
    assert "HOST KEY MISMATCH" in text and MACHINES[0] in text, text
    assert hosts[0].address in text, text
    assert fingerprint(parse_public_key(hosts[1].host_key_line)) in text, text  # pinned
    assert fingerprint(parse_public_key(hosts[0].host_key_line)) in text, text  # offered
    assert "PRIVATE KEY" not in text
    assert not any((root / "machine.json").exists() for root in site.roots)
    assert site.processes() == []
    print(f"\nrefused in {took:.1f}s")
