"""Start govmomi's vCenter simulator (tools/vcsim) on a free loopback port, for tests and benchmarks.

The build (tools/vcsim/build.sh) is part of setup: it is fast when already built,
and a failed build fails the tests under PACSINFRA_REQUIRE_INTEGRATION=1.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.locks import file_lock
from support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "vcsim" / "build.sh"


class VcsimUnavailable(RuntimeError):
    """The simulator cannot be built or started here (reason in the message)."""


def build() -> Path:
    """Build (or find the cached) vcsim binary; raise VcsimUnavailable with the build log on failure."""
    if shutil.which("go") is None and os.geteuid() != 0:
        raise VcsimUnavailable("go is not installed (apt-get install golang-go golang-github-vmware-govmomi-dev)")
    with file_lock(REPO / ".cache" / "vcsim.lock"):  # parallel workers build it once
        proc = subprocess.run(["sh", str(BUILD)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise VcsimUnavailable(f"tools/vcsim/build.sh failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def make_ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacsinfra test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _free_port() -> int:
    return free_port()


@dataclass
class Vcsim:
    """A running simulator: where it listens, its credentials and its CA."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    user: str
    password: str
    ca_file: Path

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(binary: Path, tmp: Path, *, vms: int = 0, hosts: int = 3, extra: tuple[str, ...] = ()) -> Vcsim:
    """Start vcsim with TLS from a private CA on a free loopback port (retried on a port race)."""
    ca, cert, key = make_ca(tmp)
    user, password = "pacs-admin", "s3cret-" + os.urandom(4).hex()
    last = ""
    for _ in range(5):
        port = _free_port()
        cmd = [
            str(binary), "-l", f"127.0.0.1:{port}", "-vm", str(vms), "-host", str(hosts),
            "-tlscert", str(cert), "-tlskey", str(key), "-username", user, "-password", password, *extra,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.startswith("VCSIM_URL="):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        return Vcsim(proc, "127.0.0.1", port, user, password, ca)
                time.sleep(0.05)
        proc.kill()
        _, err = proc.communicate()
        last = err[-2000:]
    raise VcsimUnavailable(f"vcsim did not start: {last}")


# -- pytest fixtures (import them into a test module: ``from vsphere_sim import vcsim_binary, vcsim``) --
try:
    import pytest
except ImportError:  # the benchmark imports this module without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    from conftest import need, need_module  # type: ignore[import-not-found]

    @pytest.fixture(scope="session")
    def vcsim_binary() -> Path:
        """The simulator binary, built by tools/vcsim/build.sh (a failed build fails in CI)."""
        need_module("pyVmomi")
        try:
            return build()
        except VcsimUnavailable as exc:
            need(False, str(exc))
            raise

    @pytest.fixture(scope="module")
    def vcsim(vcsim_binary: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
        """A simulator of one datacenter, one cluster of 3 hosts, no VMs (one per test module)."""
        sim = start(vcsim_binary, tmp_path_factory.mktemp("vcsim"))
        try:
            yield sim
        finally:
            sim.stop()
