"""QEMU user-mode networking (slirp) NICs: ``NicSpec.network = "user:<options>"``.

For test and edge hosts with no libvirt network (``qemu:///embed`` has no network
driver): the guest sits behind QEMU's own NAT (guest 10.0.2.15, gateway 10.0.2.2, which
is the host's loopback, DNS 10.0.2.3) and is reached through port forwards, e.g.::

    user:hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:11112-:11112

libvirt 9's ``<interface type='user'>`` takes ``<portForward>`` only with the passt
backend, so such a NIC is rendered as QEMU arguments in ``<qemu:commandline>``
(``-netdev user,id=pinet<i>,...`` + ``-device virtio-net-pci,netdev=pinet<i>,mac=...``),
with ``i`` the NIC's index in the spec so parsing puts it back in its place. libvirt
marks such a domain "tainted (custom-argv)"; it runs normally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pacsinfra.errors import CapabilityError

PREFIX = "user:"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NETDEV_ID = "pinet"
FIRST_SLOT = 0x18  # on q35's pcie.0; at most MAX_NICS user-mode NICs per machine
MAX_NICS = 4
# what may follow "user:" (passed to -netdev user): forwards and the NAT's own addressing;
# never id= (ours) nor options that run host commands or serve host files (guestfwd, smb, tftp)
ALLOWED = frozenset({"hostfwd", "net", "host", "dns", "dhcpstart", "restrict", "ipv6",
                     "hostname"})
_HOSTFWD = re.compile(r"(tcp|udp):(\d{1,3}(\.\d{1,3}){3})?:\d{1,5}-(\d{1,3}(\.\d{1,3}){3})?:\d{1,5}")
_VALUE = re.compile(r"[A-Za-z0-9.:/_-]*")


def is_user(network: str) -> bool:
    """Whether a NicSpec.network value names a user-mode NIC."""
    return network.startswith(PREFIX)


def options(network: str) -> str:
    """The ``-netdev user`` options of a ``user:...`` value, validated (CapabilityError)."""
    opts = network[len(PREFIX):]
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if key not in ALLOWED or not sep:
            raise CapabilityError(
                f"user-mode NIC option {item!r} is not allowed (use {', '.join(sorted(ALLOWED))})")
        if not _VALUE.fullmatch(value):
            raise CapabilityError(f"user-mode NIC option {item!r} has an unexpected character")
        if key == "hostfwd" and not _HOSTFWD.fullmatch(value):
            raise CapabilityError(
                f"hostfwd {value!r}: expected tcp|udp:[hostaddr]:hostport-[guestaddr]:guestport")
    return opts


@dataclass(frozen=True)
class UserNic:
    """One user-mode NIC as rendered: its index among the machine's NICs, MAC and options."""

    index: int
    mac: str
    options: str

    def args(self) -> list[str]:
        """The QEMU arguments that make it."""
        netdev = f"user,id={NETDEV_ID}{self.index}" + (f",{self.options}" if self.options else "")
        # an explicit slot on the root bus: QEMU places argv devices before libvirt's, and
        # libvirt fills pcie.0 from slot 1 up (its root ports), so take slots from 0x18 up
        device = (f"virtio-net-pci,netdev={NETDEV_ID}{self.index},mac={self.mac},"
                  f"bus=pcie.0,addr={FIRST_SLOT + self.index:#x}")
        return ["-netdev", netdev, "-device", device]


def parse_args(args: list[str]) -> list[UserNic]:
    """The user-mode NICs among ``<qemu:commandline>`` arguments (others are ignored)."""
    netdevs: dict[int, str] = {}
    macs: dict[int, str] = {}
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-netdev" and value.startswith(f"user,id={NETDEV_ID}"):
            head, _, rest = value[len(f"user,id={NETDEV_ID}"):].partition(",")
            if head.isdigit():
                netdevs[int(head)] = rest
        elif flag == "-device" and f"netdev={NETDEV_ID}" in value:
            fields = dict(f.partition("=")[::2] for f in value.split(",")[1:])
            idx = fields.get("netdev", "")[len(NETDEV_ID):]
            if idx.isdigit():
                macs[int(idx)] = fields.get("mac", "").lower()
    return [UserNic(i, macs.get(i, ""), netdevs[i]) for i in sorted(netdevs)]
