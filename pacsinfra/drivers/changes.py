"""Change tables: how disruptive changing each field is, per resource kind, for one driver.

Each driver states its hypervisor's rules as three tables (machine, network, storage)
mapping a spec field — or a dotted sub-field such as ``disks.size_mib.grow`` — to a
:class:`~pacsinfra.specs.ChangeKind`. What is not in a table is a REPLACE: the
safe side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pacsinfra.specs import ChangeKind, MachineSpec, NetworkSpec, Spec, StorageSpec


@dataclass(frozen=True)
class ChangeTables:
    """One driver's change tables."""

    machine: Mapping[str, ChangeKind]
    network: Mapping[str, ChangeKind]
    storage: Mapping[str, ChangeKind]

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        """The worst case for changing ``field_name`` of ``spec`` (unknown fields: REPLACE)."""
        if isinstance(spec, MachineSpec):
            table = self.machine
        elif isinstance(spec, NetworkSpec):
            table = self.network
        elif isinstance(spec, StorageSpec):
            table = self.storage
        else:  # ServiceSpec and anything newer: not this table's business
            return ChangeKind.REPLACE
        return table.get(field_name, table.get(field_name.split(".")[0], ChangeKind.REPLACE))

    def disk_changes(self, desired: MachineSpec, actual: MachineSpec) -> ChangeKind:
        """The worst change among the disks, disk by disk (growth alone is what the table says).

        Needs ``disks.size_mib.grow``/``.shrink`` and ``disks.<attr>`` entries in the
        machine table. The first disk is built from the image, so its position must not change.
        """
        have = {d.name: d for d in actual.disks}
        want = {d.name: d for d in desired.disks}
        kind = ChangeKind.IN_PLACE
        if set(have) != set(want):
            kind = max(kind, ChangeKind.NEEDS_POWER_OFF)
        for name, w in want.items():
            h = have.get(name)
            if h is None:
                continue
            if w.size_mib > h.size_mib:
                kind = max(kind, self.machine["disks.size_mib.grow"])
            elif w.size_mib < h.size_mib:
                kind = max(kind, self.machine["disks.size_mib.shrink"])
            for attr in ("storage", "provisioning", "iops_limit", "mount"):
                if getattr(w, attr) != getattr(h, attr):
                    kind = max(kind, self.machine[f"disks.{attr}"])
        if desired.disks and actual.disks and desired.disks[0].name != actual.disks[0].name:
            kind = ChangeKind.REPLACE
        return kind
