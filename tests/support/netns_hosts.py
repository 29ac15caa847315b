"""SSH "hosts" for deploy tests: one network namespace + veth pair + sshd per host.

Each host gets a /30 on 10.200.<X>.0/24 (X chosen free per run): the root namespace
side is .4i+1, the host side .4i+2. sshd runs with ``ip netns exec`` inside
``unshare -m --propagation private`` with a tmpfs on /run (sshd needs /run/sshd and
must not touch the machine's), its own ed25519 host key, key-only root login,
``UsePAM no`` and ``StrictModes no``. Hosts share the machine's file system view;
tests give each host its own work directory.

Use the ``netns_hosts`` fixture (module scope, 3 hosts) or :class:`NetnsLab` directly.
Everything is torn down at the end: processes in the namespaces, namespaces, veths.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import need, need_binary

from support.locks import file_lock


@dataclass
class NetnsHost:
    """One SSH target. ``known_hosts`` pins its key; ``key_file`` logs in as root."""

    name: str
    netns: str
    address: str
    port: int
    host_key_line: str  # "ssh-ed25519 AAAA..." (the public key sshd presents)
    known_hosts: Path
    key_file: Path
    workdir: Path  # a directory for this host's files (hosts share the file system)
    proc: subprocess.Popen[bytes] | None = None
    root_address: str = ""  # the root namespace's end of this host's veth (.4i+1)
    root_veth: str = ""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def _free_subnet() -> int:
    used = _run("ip", "-4", "-o", "addr").stdout
    for _ in range(200):
        x = random.randint(1, 254)
        if f"10.200.{x}." not in used:
            return x
    raise RuntimeError("no free 10.200.X.0/24 subnet")


SSHD_CONFIG = """\
ListenAddress {address}
Port {port}
HostKey {hostkey}
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxSessions 50
MaxStartups 50:30:100
Subsystem sftp internal-sftp
LogLevel ERROR
"""


class NetnsLab:
    """Creates N hosts on enter, removes them on exit (also after a failed start)."""

    def __init__(self, n: int, root: Path) -> None:
        self.n = n
        self.root = root
        self.tag = f"{os.getpid() % 10000}{random.randint(0, 99):02d}"
        self.hosts: list[NetnsHost] = []
        self._veths: list[str] = []
        self._netns: list[str] = []
        self._addresses: list[tuple[str, str, str, str]] = []  # netns, root veth, root ip, host ip

    def __enter__(self) -> NetnsLab:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        client_key = self.root / "id_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pacsinfra-test",
             "-f", str(client_key))
        known_hosts = self.root / "known_hosts"
        # chosen and taken under one lock: parallel workers (and other runs) never pick
        # the same subnet between one's look at the addresses and its first address
        with file_lock(Path(tempfile.gettempdir()) / "pacsinfra-lab-subnet.lock"):
            self._links(_free_subnet())
        self._sshds(client_key, known_hosts)

    def _links(self, x: int) -> None:
        """Namespaces, veth pairs and addresses of every host on 10.200.<x>.0/24."""
        for i in range(self.n):
            ns = f"pxd{self.tag}h{i}"
            veth_root, veth_ns = f"pxr{self.tag}{i}", f"pxn{self.tag}{i}"
            root_ip, host_ip = f"10.200.{x}.{4 * i + 1}", f"10.200.{x}.{4 * i + 2}"
            _run("ip", "netns", "add", ns)
            self._netns.append(ns)
            _run("ip", "link", "add", veth_root, "type", "veth", "peer", "name", veth_ns)
            self._veths.append(veth_root)
            _run("ip", "link", "set", veth_ns, "netns", ns)
            _run("ip", "addr", "add", f"{root_ip}/30", "dev", veth_root)
            _run("ip", "link", "set", veth_root, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{host_ip}/30", "dev", veth_ns)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", veth_ns, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            self._addresses.append((ns, veth_root, root_ip, host_ip))

    def _sshds(self, client_key: Path, known_hosts: Path) -> None:
        """A host key and an sshd in each namespace; the known_hosts file pinning them."""
        lines: list[str] = []
        for i, (ns, veth_root, root_ip, host_ip) in enumerate(self._addresses):
            hdir = self.root / f"host{i}"
            (hdir / "work").mkdir(parents=True)
            hostkey = hdir / "ssh_host_ed25519_key"
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey))
            shutil.copy(f"{client_key}.pub", hdir / "authorized_keys")
            cfg = hdir / "sshd_config"
            cfg.write_text(SSHD_CONFIG.format(address=host_ip, port=22, hostkey=hostkey, dir=hdir))
            pub = (hdir / "ssh_host_ed25519_key.pub").read_text().split()
            key_line = f"{pub[0]} {pub[1]}"
            lines.append(f"{host_ip} {key_line}")
            log = open(hdir / "sshd.log", "wb")  # noqa: SIM115 - lives as long as sshd
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
                 "sh", "-c",
                 "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/sshd && "
                 f"exec /usr/sbin/sshd -D -e -f {cfg}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )
            self.hosts.append(NetnsHost(
                name=f"host{i}", netns=ns, address=host_ip, port=22, host_key_line=key_line,
                known_hosts=known_hosts, key_file=client_key, workdir=hdir / "work", proc=proc,
                root_address=root_ip, root_veth=veth_root,
            ))
        known_hosts.write_text("\n".join(lines) + "\n")
        for h in self.hosts:
            _wait_port(h, 15.0)

    def close(self) -> None:
        """Kill what runs in our namespaces, delete them and their veths."""
        for ns in self._netns:
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for h in self.hosts:
            if h.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(h.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.proc.wait(5)
        for ns in self._netns:
            _run("ip", "netns", "del", ns, check=False)
        for veth in self._veths:
            _run("ip", "link", "del", veth, check=False)  # usually gone with its peer
        self._netns.clear()
        self._veths.clear()


def route_between(hosts: list[NetnsHost]) -> None:
    """Let the hosts reach each other and the root-namespace end of every lab link.

    Each host gets a route per lab address (the other hosts, the other links' root ends)
    through its own veth — no default route, so nothing leaves for any other address —
    and the root namespace forwards what arrives on *these veths only*
    (``conf/<veth>/forwarding``; the machine's ``ip_forward`` is left as it is). Undone
    with the namespaces and veths at teardown.
    """
    for h in hosts:
        for o in hosts:
            if o is h:
                continue
            for addr in (o.address, o.root_address):
                _run("ip", "netns", "exec", h.netns, "ip", "route", "replace", f"{addr}/32",
                     "via", h.root_address)
        Path(f"/proc/sys/net/ipv4/conf/{h.root_veth}/forwarding").write_text("1\n")


def _wait_port(host: NetnsHost, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.proc is not None and host.proc.poll() is not None:
            log = (host.workdir.parent / "sshd.log").read_text(errors="replace")
            raise RuntimeError(f"sshd for {host.name} exited: {log[-500:]}")
        with contextlib.suppress(OSError), socket.create_connection(
            (host.address, host.port), timeout=0.5
        ) as s:
            s.settimeout(1.0)
            if s.recv(4).startswith(b"SSH-"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd for {host.name} did not answer on {host.address}:{host.port}")


def require_netns() -> None:
    """Skip (laptop) or fail (CI) unless we can create namespaces and run sshd."""
    need(os.geteuid() == 0, "root is needed to create network namespaces")
    need_binary("ip", "unshare", "ssh-keygen")
    need(Path("/usr/sbin/sshd").exists(), "/usr/sbin/sshd missing (apt-get install openssh-server)")


@pytest.fixture(scope="module")
def netns_hosts() -> Iterator[list[NetnsHost]]:
    """Three SSH hosts in their own network namespaces, torn down after the module."""
    require_netns()
    root = Path(tempfile.mkdtemp(prefix="pacsinfra-netns-"))
    try:
        with NetnsLab(3, root) as lab:
            yield lab.hosts
    finally:
        shutil.rmtree(root, ignore_errors=True)
