"""AnsibleFleet (ansible-runner) against the same namespace sshds as the SSH transport."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import need_module
from support.netns_hosts import NetnsHost, netns_hosts  # noqa: F401 - fixture

from pacsinfra.deploy.ansible import AnsibleFleet, FleetHost
from pacsinfra.deploy.ssh import SSHTarget, SSHTransport

pytestmark = pytest.mark.integration

CMD = "ip -4 -o addr show | awk '{print $2, $4}' | sort; echo to-stderr >&2; id -un"


def _fleet(hosts: list[NetnsHost], work: Path, keys: dict[str, str] | None = None) -> AnsibleFleet:
    need_module("ansible_runner")
    return AnsibleFleet([
        FleetHost(name=h.name, address=h.address, key_file=h.key_file,
                  host_keys=[(keys or {}).get(h.name, h.host_key_line)],
                  vars={"workdir": str(h.workdir)})  # the namespaces share one file system
        for h in hosts
    ], work)


def test_same_results_as_ssh_then_idempotent_playbook(netns_hosts: list[NetnsHost],  # noqa: F811
                                                      tmp_path: Path) -> None:
    hosts = netns_hosts[:2]
    with _fleet(hosts, tmp_path / "a") as fleet:
        _same_then_idempotent(fleet, hosts)


def _same_then_idempotent(fleet: AnsibleFleet, hosts: list[NetnsHost]) -> None:
    via_ansible = fleet.run(CMD)
    for h in hosts:
        with SSHTransport(SSHTarget(host=h.address, key_file=h.key_file,
                                    known_hosts=h.known_hosts)) as t:
            via_ssh = t.run(CMD)
        assert via_ansible[h.name] == via_ssh, h.name
        assert h.address in via_ssh.stdout

    plays = [{
        "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "archive config",
                   "copy": {"dest": "{{ workdir }}/archive.yaml", "mode": "0640",
                            "content": "ae_title: ARCHIVE\nport: 11112\n"}}],
    }]
    first = fleet.playbook(plays)
    assert first.ok, first
    assert {n: o.changed for n, o in first.hosts.items()} == {h.name: 1 for h in hosts}
    for h in hosts:
        cfg = h.workdir / "archive.yaml"
        assert cfg.read_text() == "ae_title: ARCHIVE\nport: 11112\n"
        assert oct(cfg.stat().st_mode & 0o777) == "0o640"
    again = fleet.playbook(plays)
    assert again.ok and again.changed == 0  # a rerun reports no changes
    assert all(o.ok == 1 for o in again.hosts.values())


def test_changed_host_key_makes_the_host_unreachable(netns_hosts: list[NetnsHost],  # noqa: F811
                                                     tmp_path: Path) -> None:
    good, bad = netns_hosts[0], netns_hosts[2]
    # Pin host 0's key for host 2: the key host 2 presents does not match.
    with _fleet([good, bad], tmp_path / "b", keys={bad.name: good.host_key_line}) as fleet:
        res = fleet.run("echo hi")
        known = fleet.known_hosts.read_text()
    assert res[good.name].rc == 0 and res[good.name].stdout == "hi\n"
    assert res[bad.name].rc == 255
    assert "host key" in res[bad.name].stderr.lower()
    # And nothing was learnt: the known_hosts file still pins the wrong key only.
    assert bad.host_key_line not in known
