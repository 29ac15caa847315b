"""A bootable Linux guest for QEMU tests, built from Debian packages (no debootstrap).

What it makes (cached under ``~/.cache/pacsinfra-tests/guest-<key>/``, the key hashing
every package's name and version, the kernel's, the Python dependency wheels' and this
builder's own version, so a rerun only checks the key):

- ``vmlinuz``: Debian's cloud kernel (``linux-image-<ver>-cloud-amd64``), direct-booted.
- ``initrd.base``: a gzip'd cpio with busybox, the kernel modules the guest needs to see
  its virtio disk and NIC (loaded in ``modules.dep`` order) and ``/init``, which mounts the
  disk, copies in the per-run keys and switches to it.
- ``root.raw``: an ext4 file system (``mke2fs -d``: no loop mount, no root needed for it)
  holding the dependency closure of python3, python3-venv, openssh-server,
  busybox-static and systemd, each ``.deb`` unpacked with ``dpkg-deb`` (maintainer
  scripts are not run: the few files they would make are written here), the pacsinfra
  dependency wheels installed into ``/usr/local/lib/python3.X/dist-packages`` (so a venv
  with ``--system-site-packages`` needs only the pacsinfra wheel: pip under TCG is slow).

Two inits in one image, chosen by the kernel command line (the initramfs reads
``init=`` from ``/proc/cmdline``; :attr:`GuestImage.cmdline` or
:attr:`GuestImage.systemd_cmdline`):

- **busybox** (the default): ``/etc/pacsinfra-rc`` brings up ``eth0`` as 10.0.2.15/24
  (QEMU user networking), generates an SSH host key when none was given, starts sshd
  and prints the host keys on the console between ``-----BEGIN SSH HOST KEY
  KEYS-----`` markers, as cloud-init does (so the KVM driver learns them from the
  console log). PID 1 is not systemd: services run under the pacsinfra supervisor.
- **systemd** (``init=/lib/systemd/systemd``): the same steps as units: a oneshot
  ``pacsinfra-guest-net.service`` (eth0), ``pacsinfra-guest-hostkey.service`` (a key
  when none was given), Debian's own ``ssh.service``, and
  ``pacsinfra-guest-keys.service`` printing the keys on the console once sshd is up.
  Units that need what the image lacks (logind without D-Bus, gettys, first-boot
  set-up) are masked.

Per run, :func:`keyed_initrd` appends a second cpio to the base initrd holding the SSH
host key and root's ``authorized_keys`` (the kernel unpacks concatenated archives), so
the cached image holds no key and the test pins the host key it generated.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from support.locks import file_lock

BUILDER_VERSION = "5"
# util-linux (setpriv), passwd (useradd) and dash (/bin/sh: busybox's sh would run its own
# applets instead of the packages' commands): essential or required in every Debian
# install; pacsinfra runs services as an account it creates with them. nginx-light: the
# viewer's web server, which an admin installs from the distribution.
GUEST_PACKAGES = ("python3", "python3-venv", "openssh-server", "busybox-static", "systemd",
                  "util-linux", "passwd", "dash", "nginx-light")
# in the closure through maintainer scripts or alternatives, never used at run time
DROP = frozenset({"perl", "perl-modules-5.36", "libperl5.36", "usrmerge", "usr-is-merged"})
KERNEL_META = "linux-image-cloud-amd64"
# what the guest needs before its root file system is mounted (plus their dependencies)
BOOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
GUEST_ADDRESS = "10.0.2.15"  # QEMU user networking: the guest, its gateway and DNS
GUEST_GATEWAY = "10.0.2.2"
ROOT_SIZE = "768M"  # sparse: the file holds only what is written

SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
AuthorizedKeysFile /root/.ssh/authorized_keys
PidFile /run/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
"""

# first stage: in the initramfs; the disk's modules are not reachable before it is mounted
INITRAMFS_INIT = """\
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
# init= on the kernel command line picks the second stage (the kernel keeps it from us)
INIT=
for x in $(/bin/busybox cat /proc/cmdline); do
  case "$x" in init=*) INIT="${x#init=}" ;; esac
done
for m in $(/bin/busybox cat /modules.order); do /bin/busybox insmod /modules/$m; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
/bin/busybox mount -t ext4 -o rw /dev/vda /newroot || { echo "pacsinfra-guest: no /dev/vda"; exec /bin/busybox sh; }
if [ -d /keys ]; then
  # busybox-static has no install(1)
  /bin/busybox cp /keys/ssh_host_ed25519_key /keys/ssh_host_ed25519_key.pub /newroot/etc/ssh/
  /bin/busybox chmod 0600 /newroot/etc/ssh/ssh_host_ed25519_key
  /bin/busybox mkdir -p /newroot/root/.ssh
  /bin/busybox cp /keys/authorized_keys /newroot/root/.ssh/authorized_keys
  /bin/busybox chmod 0600 /newroot/root/.ssh/authorized_keys
fi
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
echo "pacsinfra-guest: switching to the root file system (init ${INIT:-busybox})"
[ -n "$INIT" ] && exec /bin/busybox switch_root /newroot "$INIT"
exec /bin/busybox switch_root /newroot /usr/bin/busybox init
"""

INITTAB = """\
::sysinit:/etc/pacsinfra-rc
::respawn:-/usr/bin/busybox sh </dev/null >/dev/null 2>&1
::ctrlaltdel:/usr/bin/busybox poweroff -f
::shutdown:/usr/bin/busybox umount -a -r
"""

RC = f"""\
#!/usr/bin/busybox sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
hostname pacsinfra-guest
ip link set lo up
ip addr add {GUEST_ADDRESS}/24 dev eth0
ip link set eth0 up
ip route add default via {GUEST_GATEWAY}
echo "nameserver 10.0.2.3" > /etc/resolv.conf
mkdir -p /run/sshd
chmod 0755 /run/sshd
[ -e /etc/ssh/ssh_host_ed25519_key ] || \\
  /usr/bin/ssh-keygen -q -t ed25519 -N "" -C root@pacsinfra-guest -f /etc/ssh/ssh_host_ed25519_key
/usr/sbin/sshd -f /etc/ssh/sshd_config.pacsinfra -E /run/sshd.log && \\
  echo "pacsinfra-guest: sshd started on {GUEST_ADDRESS}:22" > /dev/console
# the host keys on the serial console, as cloud-init prints them (cc_keys_to_console), so
# whoever made the machine learns them out of band instead of trusting them on first use
{{ echo "-----BEGIN SSH HOST KEY KEYS-----"; cat /etc/ssh/ssh_host_*_key.pub
  echo "-----END SSH HOST KEY KEYS-----"; }} > /dev/console
"""

# -- the systemd flavour: the rc's steps as units ----------------------------------------------
SYSTEMD_INIT = "/lib/systemd/systemd"
NET_UNIT = f"""\
[Unit]
Description=pacsinfra test guest: eth0 on QEMU's user network
DefaultDependencies=no
After=systemd-sysctl.service
Before=network.target ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/busybox ip link set lo up
ExecStart=/usr/bin/busybox ip addr add {GUEST_ADDRESS}/24 dev eth0
ExecStart=/usr/bin/busybox ip link set eth0 up
ExecStart=/usr/bin/busybox ip route add default via {GUEST_GATEWAY}

[Install]
WantedBy=multi-user.target
"""
HOSTKEY_UNIT = """\
[Unit]
Description=pacsinfra test guest: an SSH host key when none was given
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -C root@pacsinfra-guest -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
"""
# after ssh.service (Type=notify: sshd listens by then), like cloud-init's keys-to-console
KEYS_UNIT = """\
[Unit]
Description=pacsinfra test guest: SSH host keys on the console, as cloud-init prints them
After=ssh.service
Wants=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c '{ echo "-----BEGIN SSH HOST KEY KEYS-----"; cat /etc/ssh/ssh_host_*_key.pub; echo "-----END SSH HOST KEY KEYS-----"; } > /dev/console'

[Install]
WantedBy=multi-user.target
"""
GUEST_UNITS = {"pacsinfra-guest-net.service": NET_UNIT,
               "pacsinfra-guest-hostkey.service": HOSTKEY_UNIT,
               "pacsinfra-guest-keys.service": KEYS_UNIT}
# What the image cannot run or does not need, masked (a link to /dev/null): logind wants
# D-Bus, the gettys a udev-announced tty; first-boot and update units would only cost
# boot time under TCG.
MASKED_UNITS = ("systemd-logind.service", "getty.target", "serial-getty@ttyS0.service",
                "getty-static.service", "systemd-firstboot.service",
                "proc-sys-fs-binfmt_misc.automount", "systemd-binfmt.service",
                "systemd-journal-catalog-update.service", "systemd-update-done.service",
                "ldconfig.service", "systemd-hwdb-update.service",
                "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service",
                "systemd-repart.service", "systemd-ask-password-wall.path",
                "systemd-ask-password-console.path", "e2scrub_reap.service")
MACHINE_ID = "5f0c1a0e7c9d4b6e8a2f3b4c5d6e7f80\n"  # set: not a first boot (no firstboot prompts)

PASSWD = "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n" \
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
SHADOW = "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"


@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel, base initrd, root file system (raw ext4) and facts about it."""

    kernel: Path
    initrd: Path
    root: Path
    python: str  # "3.11"
    # cryptomgr.notests: the kernel's crypto self-tests only cost boot time here, and on a
    # loaded host a TCG vCPU running them was starved into a soft lockup until the boot
    # timeout (seen: "soft lockup - CPU#0 stuck for 156s! [cryptomgr_test]")
    cmdline: str = "console=ttyS0 panic=-1 quiet cryptomgr.notests"
    build_seconds: float = 0.0  # 0 when it came from the cache

    @property
    def systemd_cmdline(self) -> str:
        """The command line that boots the same image with systemd as PID 1."""
        return f"{self.cmdline} init={SYSTEMD_INIT}"


def _run(args: Sequence[str], *, cwd: Path | None = None, timeout: float = 600,
         stdin: bytes | None = None) -> str:
    res = subprocess.run(list(args), cwd=cwd, capture_output=True, timeout=timeout, input=stdin)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({res.returncode}): "
                           f"{res.stderr.decode(errors='replace')[-1500:]}")
    return res.stdout.decode(errors="replace")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pacsinfra-tests`` (default ``~/.cache/pacsinfra-tests``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pacsinfra-tests"


# -- which packages ---------------------------------------------------------------------------
def dependency_closure(roots: Iterable[str]) -> list[str]:
    """Every real package ``roots`` depend on (Depends/Pre-Depends, recursively), minus DROP.

    apt-cache lists every alternative of an ``a | b`` dependency; that over-approximates
    (a few unused packages) but never misses one.
    """
    out = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *roots])
    names = {ln.strip() for ln in out.splitlines() if ln and not ln.startswith((" ", "<"))}
    return sorted(names - DROP)


def candidate_versions(names: Sequence[str]) -> dict[str, str]:
    """The version apt would install of each package (one ``apt-cache show`` call)."""
    out = _run(["apt-cache", "show", "--no-all-versions", *names])
    versions: dict[str, str] = {}
    name = ""
    for ln in out.splitlines():
        if ln.startswith("Package: "):
            name = ln.split(": ", 1)[1]
        elif ln.startswith("Version: ") and name and name not in versions:
            versions[name] = ln.split(": ", 1)[1]
    missing = sorted(set(names) - set(versions))
    if missing:
        raise RuntimeError(f"apt knows no candidate for {missing}")
    return versions


def kernel_package() -> str:
    """The concrete ``linux-image-<abi>-cloud-amd64`` the meta package points at."""
    out = _run(["apt-cache", "depends", KERNEL_META])
    found = re.findall(r"Depends: (linux-image-[0-9][^\s]*-cloud-amd64)", out)
    if not found:
        raise RuntimeError(f"{KERNEL_META} depends on no kernel image: {out[-300:]}")
    return found[0]


def download(versions: dict[str, str], dest: Path) -> list[Path]:
    """The ``.deb`` of each package at its version: from apt's local archive when it is
    there, else ``apt-get download`` (one call for all the rest)."""
    dest.mkdir(parents=True, exist_ok=True)
    local = Path("/var/cache/apt/archives")
    want = []
    for name, ver in versions.items():
        pattern = f"{name}_{ver.replace(':', '%3a')}_*.deb"
        if any(dest.glob(pattern)):
            continue
        hit = sorted(local.glob(pattern))
        if hit:
            shutil.copy2(hit[0], dest / hit[0].name)
        else:
            want.append(f"{name}={ver}")
    if want:
        _run(["apt-get", "download", "-q", *want], cwd=dest, timeout=900)
    return sorted(dest.glob("*.deb"))


# -- the root file system ----------------------------------------------------------------------
def unpack(debs: Iterable[Path], staging: Path) -> None:
    """Unpack each .deb's data into ``staging`` (usr-merged, as Debian 12 installs it)."""
    for sub in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (staging / link).symlink_to(f"usr/{link}")
    for deb in debs:
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                              check=True).stdout
        # --keep-directory-symlink: /bin, /lib ... stay links into /usr
        _run(["tar", "-x", "--keep-directory-symlink", "-C", str(staging)], stdin=data)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def configure(staging: Path) -> None:
    """What maintainer scripts and an installer would have made, and the guest's init."""
    staging.chmod(0o755)  # the guest's / (a temporary directory is 0700)
    _write(staging / "etc/passwd", PASSWD)
    _write(staging / "etc/group", GROUP)
    _write(staging / "etc/shadow", SHADOW, 0o600)
    _write(staging / "etc/hostname", "pacsinfra-guest\n")
    _write(staging / "etc/hosts", "127.0.0.1 localhost pacsinfra-guest\n")
    _write(staging / "etc/ssh/sshd_config.pacsinfra", SSHD_CONFIG)
    _write(staging / "etc/inittab", INITTAB)
    _write(staging / "etc/pacsinfra-rc", RC, 0o755)
    configure_systemd(staging)
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "opt", "var/tmp"):
        (staging / d).mkdir(parents=True, exist_ok=True)
    (staging / "tmp").chmod(0o1777)
    (staging / "root").chmod(0o700)
    # busybox applets for every command the packages do not provide (sh, ip, mount, ps ...)
    busybox = staging / "usr/bin/busybox"
    applets = _run([str(busybox), "--list-full"]).split()
    # a command a package provides anywhere on PATH wins (util-linux's setpriv in
    # /usr/bin, not busybox's in /usr/sbin, which PATH would find first)
    provided = {p.name for d in ("usr/bin", "usr/sbin") if (staging / d).is_dir()
                for p in (staging / d).iterdir()}
    for applet in applets:
        target = staging / applet
        if Path(applet).name in provided:
            continue
        if not target.exists() and not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to("/usr/bin/busybox")
    if not (staging / "usr/bin/sh").exists():  # dash's postinst makes this link in Debian
        (staging / "usr/bin/sh").symlink_to(
            "dash" if (staging / "usr/bin/dash").exists() else "busybox")


def configure_systemd(staging: Path) -> None:
    """What booting with systemd as PID 1 needs: the guest's units enabled (links, as
    ``systemctl enable`` makes them), Debian's ``ssh.service`` with this sshd config,
    multi-user as the default target, the masks, a machine id and the resolver."""
    etc = staging / "etc/systemd/system"
    wants = etc / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for name, text in GUEST_UNITS.items():
        _write(etc / name, text)
        (wants / name).symlink_to(f"../{name}")
    (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    (etc / "default.target").symlink_to("/lib/systemd/system/multi-user.target")
    for name in MASKED_UNITS:
        (etc / name).symlink_to("/dev/null")
    # ssh.service checks the default config (sshd -t) before it starts sshd
    _write(staging / "etc/ssh/sshd_config", SSHD_CONFIG)
    _write(staging / "etc/machine-id", MACHINE_ID, 0o444)
    _write(staging / "etc/resolv.conf", "nameserver 10.0.2.3\n")
    for d in ("var/lib/systemd", "var/log"):
        (staging / d).mkdir(parents=True, exist_ok=True)


def python_version(staging: Path) -> str:
    """``3.X`` of the guest's python3 (from the file the package installed)."""
    target = os.readlink(staging / "usr/bin/python3")
    m = re.fullmatch(r"python(3\.\d+)", target)
    if not m:
        raise RuntimeError(f"unexpected /usr/bin/python3 -> {target}")
    return m.group(1)


def install_wheels(staging: Path, wheelhouse: Path, requirements: Sequence[str], py: str) -> None:
    """Install the dependency wheels into the guest's site directory and byte-compile the
    guest's standard library (same magic number: this interpreter is also 3.X), since
    compiling on first import under TCG costs seconds per module."""
    site = staging / f"usr/local/lib/python{py}/dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
          str(wheelhouse), "--no-warn-script-location", "--disable-pip-version-check",
          "--target", str(site), *requirements], timeout=600)
    _run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-x", r"(test|lib2to3)/",
          str(staging / f"usr/lib/python{py}")], timeout=600)


def make_ext4(staging: Path, out: Path) -> None:
    """An ext4 image of ``staging`` without mounting anything (``mke2fs -d``)."""
    tmp = out.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "pacsroot", "-E", "root_owner=0:0",
          "-d", str(staging), str(tmp), ROOT_SIZE], timeout=600)
    tmp.rename(out)


# -- kernel and initramfs ----------------------------------------------------------------------
def _modname(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def module_order(modroot: Path, wanted: Sequence[str]) -> list[Path]:
    """Module files for ``wanted`` and their dependencies, dependencies first.

    The package ships no ``modules.dep`` (its postinst runs depmod, which the build host
    may lack), so each module's ``depends=`` is read from its ``.modinfo`` strings;
    built-in modules (``modules.builtin``) need no file.
    """
    files = {_modname(p): p for p in (modroot / "kernel").rglob("*.ko")}
    builtin = {_modname(Path(p)) for p in (modroot / "modules.builtin").read_text().split()}
    order: list[Path] = []

    def visit(name: str) -> None:
        if name in builtin:
            return
        path = files.get(name)
        if path is None:
            raise RuntimeError(f"kernel module {name} is neither built in nor a file")
        if path in order:
            return
        m = re.search(rb"(?:^|\0)depends=([^\0]*)", path.read_bytes())
        for dep in (m.group(1).decode().split(",") if m else []):
            if dep:
                visit(dep.replace("-", "_"))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, content) entries (directories: mode 0o040xxx)."""
    out = io.BytesIO()

    def entry(name: str, mode: int, data: bytes, ino: int) -> None:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))

    for i, (name, mode, data) in enumerate(entries, start=1):
        entry(name, mode, data, i)
    entry("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


def make_initrd(kernel_tree: Path, busybox: Path, out: Path) -> None:
    """The first-stage initramfs: busybox, the boot modules in load order, ``/init``."""
    modroot = next((kernel_tree / "lib/modules").iterdir())
    order = module_order(modroot, BOOT_MODULES)
    entries: list[tuple[str, int, bytes]] = [
        ("bin", 0o040755, b""), ("modules", 0o040755, b""),
        ("bin/busybox", 0o100755, busybox.read_bytes()),
        ("init", 0o100755, INITRAMFS_INIT.encode()),
        ("modules.order", 0o100644, "\n".join(p.name for p in order).encode() + b"\n"),
    ]
    entries += [(f"modules/{p.name}", 0o100644, p.read_bytes()) for p in order]
    out.write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=1))


def keyed_initrd(image: GuestImage, host_key: Path, authorized_keys: str, out: Path) -> Path:
    """``image.initrd`` followed by a cpio of this run's SSH host key and root's keys."""
    extra = _cpio_newc([
        ("keys", 0o040700, b""),
        ("keys/ssh_host_ed25519_key", 0o100600, host_key.read_bytes()),
        ("keys/ssh_host_ed25519_key.pub", 0o100644, host_key.with_suffix(".pub").read_bytes()),
        ("keys/authorized_keys", 0o100600, authorized_keys.encode()),
    ])
    out.write_bytes(image.initrd.read_bytes() + gzip.compress(extra, compresslevel=1))
    return out


# -- all of it, cached -------------------------------------------------------------------------
def build_guest(wheelhouse: Path, requirements: Sequence[str], *,
                log: list[str] | None = None) -> GuestImage:
    """The guest image for these package versions and wheels, built once and cached."""
    log = log if log is not None else []
    kpkg = kernel_package()
    names = dependency_closure(GUEST_PACKAGES)
    versions = candidate_versions([*names, kpkg])
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    key = hashlib.sha256(json.dumps(
        [BUILDER_VERSION, sorted(versions.items()), wheels, sorted(requirements),
         INITRAMFS_INIT, RC, SSHD_CONFIG, INITTAB, GUEST_UNITS, MASKED_UNITS,
         MACHINE_ID]).encode()).hexdigest()[:16]
    where = cache_dir() / f"guest-{key}"
    with file_lock(cache_dir() / f"guest-{key}.lock"):  # one build; the others wait for it
        return _build_guest(where, versions, kpkg, wheelhouse, requirements, log)


def _build_guest(where: Path, versions: dict[str, str], kpkg: str, wheelhouse: Path,
                 requirements: Sequence[str], log: list[str]) -> GuestImage:
    facts = where / "guest.json"
    if facts.exists():
        py = json.loads(facts.read_text())["python"]
        return GuestImage(where / "vmlinuz", where / "initrd.base", where / "root.raw", py)

    t0 = time.monotonic()
    debs = cache_dir() / "debs"
    with tempfile.TemporaryDirectory(prefix="guest-build-", dir=cache_dir()) as tmp:
        work = Path(tmp)
        kdeb = download({kpkg: versions.pop(kpkg)}, debs)
        kdeb = [d for d in kdeb if d.name.startswith(f"{kpkg}_")]
        files = [d for d in download(versions, debs)
                 if d.name.split("_", 1)[0] in versions
                 and d.name.split("_")[1].replace("%3a", ":") == versions[d.name.split("_", 1)[0]]]
        log.append(f"downloaded {len(files) + 1} packages in {time.monotonic() - t0:.1f}s")
        ktree = work / "kernel"
        _run(["dpkg-deb", "-x", str(kdeb[0]), str(ktree)])
        staging = work / "root"
        unpack(files, staging)
        configure(staging)
        py = python_version(staging)
        log.append(f"unpacked at {time.monotonic() - t0:.1f}s (python {py})")
        install_wheels(staging, wheelhouse, requirements, py)
        log.append(f"wheels installed at {time.monotonic() - t0:.1f}s")
        where.mkdir(parents=True, exist_ok=True)
        vmlinuz = next((ktree / "boot").glob("vmlinuz-*"))
        shutil.copy2(vmlinuz, where / "vmlinuz")
        make_initrd(ktree, staging / "usr/bin/busybox", where / "initrd.base")
        make_ext4(staging, where / "root.raw")
        seconds = time.monotonic() - t0
        log.append(f"image built in {seconds:.1f}s")
        facts.write_text(json.dumps({"python": py, "packages": versions, "kernel": kpkg,
                                     "seconds": round(seconds, 1)}, indent=1))
    return GuestImage(where / "vmlinuz", where / "initrd.base", where / "root.raw", py,
                      build_seconds=seconds)
