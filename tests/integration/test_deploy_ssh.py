"""SSHTransport against real sshd processes in network namespaces."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
from support.netns_hosts import NetnsHost, netns_hosts  # noqa: F401 - fixture

from pacsinfra.deploy.ssh import (
    SSHTarget,
    SSHTransport,
    fingerprint,
    host_keys_from_console,
    parse_public_key,
    scan_host_key,
)
from pacsinfra.deploy.transport import check, put_text
from pacsinfra.errors import DeployError, SSHError

pytestmark = pytest.mark.integration


def _t(h: NetnsHost, **kw: object) -> SSHTransport:
    args: dict[str, object] = {"host": h.address, "key_file": h.key_file,
                               "known_hosts": h.known_hosts}
    args.update(kw)
    return SSHTransport(SSHTarget(**args))  # type: ignore[arg-type]


def test_commands_on_each_host_run_in_its_own_namespace(netns_hosts: list[NetnsHost]) -> None:  # noqa: F811
    for h in netns_hosts:
        with _t(h) as t:
            rc, out, err = t.run("ip -4 -o addr show | grep -c 10.200.; echo err >&2; exit 3")
            assert rc == 3 and out.strip() == "1" and err.strip() == "err"
            # The address inside the namespace is this host's, and only this host's.
            assert h.address in t.run(["ip", "-4", "-o", "addr"]).stdout
            res = t.run(["printf", "%s|", "a b", "$HOME", "it's"])
            assert res.stdout == "a b|$HOME|it's|"  # list commands are quoted exactly
            # More than paramiko's 2 MiB window each way: no deadlock between stdin and stdout.
            assert t.run("cat", input=b"x" * 5_000_000).stdout == "x" * 5_000_000


def test_connection_is_reused_and_reopened(netns_hosts: list[NetnsHost]) -> None:  # noqa: F811
    h = netns_hosts[0]
    with _t(h) as t:
        started = time.monotonic()
        outs = [t.run("echo $$ $PPID").stdout.split() for _ in range(20)]
        per_cmd = (time.monotonic() - started) / 20
        assert len({sh for sh, _ in outs}) == 20  # each command its own shell...
        parents = {ppid for _, ppid in outs}
        assert len(parents) == 1  # ...under one sshd connection process
        first = t.connect()
        assert per_cmd < 0.5, per_cmd
        first.get_transport().close()  # type: ignore[union-attr]  # the link drops
        assert t.run("echo back").stdout.strip() == "back"  # reconnected
        assert t.connect() is not first
        assert t.run("echo $PPID").stdout.split() != list(parents)


def test_timeout_returns_124_and_parallel_use_is_safe(netns_hosts: list[NetnsHost]) -> None:  # noqa: F811
    with _t(netns_hosts[1]) as t:
        started = time.monotonic()
        rc, _out, err = t.run("sleep 30", timeout=0.7)
        assert rc == 124 and "timed out" in err and time.monotonic() - started < 5
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: t.run(f"echo {i}").stdout.strip(), range(32)))
        assert outs == [str(i) for i in range(32)]
        with pytest.raises(DeployError, match="exit 7"):
            check(t, "echo nope >&2; exit 7")


def test_put_get_exists_atomic_with_mode(netns_hosts: list[NetnsHost], tmp_path: Path) -> None:  # noqa: F811
    h = netns_hosts[2]
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    remote = str(h.workdir / "sub dir" / "blob.bin")
    with _t(h) as t:
        assert not t.exists(remote)
        t.put(src, remote, 0o600)
        assert t.exists(remote)
        assert t.run(["stat", "-c", "%a", remote]).stdout.strip() == "600"
        digest = t.run(["sha256sum", remote]).stdout.split()[0]
        assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
        # No temp file left beside it.
        assert os.listdir(h.workdir / "sub dir") == ["blob.bin"]
        put_text(t, "v2\n", remote, 0o644)
        back = tmp_path / "back"
        t.get(remote, back)
        assert back.read_text() == "v2\n"
        with pytest.raises(SSHError, match="downloading"):
            t.get(str(h.workdir / "missing"), tmp_path / "x")


def test_pinned_key_from_blueprint_is_accepted(netns_hosts: list[NetnsHost]) -> None:  # noqa: F811
    h = netns_hosts[0]
    with SSHTransport(SSHTarget(host=h.address, key_file=h.key_file,
                                host_keys=[h.host_key_line])) as t:
        assert t.run("echo ok").stdout == "ok\n"
        assert fingerprint(t.host_key()) == fingerprint(parse_public_key(h.host_key_line))


def test_unknown_host_key_is_refused_with_fingerprint(netns_hosts: list[NetnsHost],  # noqa: F811
                                                      tmp_path: Path) -> None:
    h = netns_hosts[1]
    other = tmp_path / "known_hosts"
    other.write_text(f"{netns_hosts[0].address} {netns_hosts[0].host_key_line}\n")
    presented = fingerprint(scan_host_key(h.address, h.port))
    t = _t(h, known_hosts=other)
    with pytest.raises(SSHError, match="unknown SSH host key") as info:
        t.run("true")
    assert presented in str(info.value)
    assert t._client is None  # nothing ran, nothing kept


def test_changed_host_key_is_refused(netns_hosts: list[NetnsHost]) -> None:  # noqa: F811
    h = netns_hosts[2]
    impostor = paramiko.Ed25519Key.from_path(str(h.key_file))  # any other ed25519 key
    pinned = f"{impostor.get_name()} {impostor.get_base64()}"
    t = SSHTransport(SSHTarget(host=h.address, key_file=h.key_file, host_keys=[pinned]))
    with pytest.raises(SSHError, match="HOST KEY MISMATCH") as info:
        t.run("true")
    msg = str(info.value)
    assert fingerprint(impostor) in msg
    assert fingerprint(parse_public_key(h.host_key_line)) in msg


def test_wrong_client_key_and_no_pin_are_clear_errors(netns_hosts: list[NetnsHost],  # noqa: F811
                                                      tmp_path: Path) -> None:
    h = netns_hosts[0]
    stranger = paramiko.Ed25519Key.from_path(str(h.key_file))
    bad = tmp_path / "id_other"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {bad}")
    with pytest.raises(SSHError, match="authentication refused"):
        _t(h, key_file=bad).run("true")
    with pytest.raises(SSHError, match="never trusts a key on first use"):
        SSHTransport(SSHTarget(host=h.address, key_file=h.key_file))
    with pytest.raises(SSHError, match="cannot connect"):
        SSHTransport(SSHTarget(host=h.address, port=2, key_file=h.key_file,
                               host_keys=[h.host_key_line]), pkey=stranger).run("true")


def test_host_keys_from_cloud_init_console() -> None:
    console = (
        "[  5.1] cloud-init[500]: ok\n-----BEGIN SSH HOST KEY KEYS-----\n"
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= root@vm\n"
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO root@vm\n-----END SSH HOST KEY KEYS-----\nlogin:"
    )
    keys = host_keys_from_console(console)
    assert [k.split()[0] for k in keys] == ["ecdsa-sha2-nistp256", "ssh-ed25519"]
    assert host_keys_from_console("no keys here") == []
