"""The one ``qemu:///embed`` root of a test process.

libvirt initialises its embedded QEMU driver once per process: a second root in the same
process fails ("already open with path ..."), so every test that runs real QEMU through
embed shares the root made here (each on its own site, pools and domain names).
"""

from __future__ import annotations

from pathlib import Path

import pytest

QEMU_CONF = """\
user = "root"
group = "root"
security_driver = "none"
namespaces = []
stdio_handler = "file"
cgroup_controllers = ["cpu", "cpuacct"]
"""

_ROOT: Path | None = None


def embed_root(factory: pytest.TempPathFactory) -> Path:
    """The process's embed root (made on first use, with ``etc/qemu.conf``).

    A short path: QEMU's monitor socket lives under it and sun_path is 108 bytes."""
    global _ROOT
    if _ROOT is None:
        root = Path(factory.mktemp("qe"))
        (root / "etc").mkdir()
        (root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        _ROOT = root
    return _ROOT
