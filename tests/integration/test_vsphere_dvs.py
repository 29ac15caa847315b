"""Distributed port groups on vcsim, in a simulator of their own.

Kept apart from test_vsphere_driver.py: vcsim 0.24 crashes (nil pointer) when a
NIC is put on a new standard port group while two DVS port groups exist, so this
module creates DVS port groups only.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
from vsphere_sim import Vcsim, vcsim, vcsim_binary  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def driver(vcsim: Vcsim):  # noqa: F811
    from pacsinfra.drivers.vsphere.driver import VsphereDriver

    os.environ["PACSINFRA_TEST_VC_PASSWORD_DVS"] = vcsim.password
    d = VsphereDriver(
        {
            "server": vcsim.server,
            "user": vcsim.user,
            "password": {"env": "PACSINFRA_TEST_VC_PASSWORD_DVS"},
            "ca_file": str(vcsim.ca_file),
        }
    )
    d.connect()
    yield d
    d.close()


def _own(address: str) -> Any:
    from pacsinfra.specs import Ownership

    return Ownership(site="dvs-site", address=address, lineage="l1")


def test_distributed_port_group_vlan_nic_and_delete(driver: Any) -> None:
    from pyVmomi import vim

    from pacsinfra.specs import ChangeKind, MachineSpec, NetworkSpec, NicSpec, changed_fields

    net = NetworkSpec(
        address="network.dicom",
        name="D-DICOM",
        purpose="dicom",
        vlan=130,
        mtu=9000,
        settings={"distributed": True, "switch": "DVS0"},
    )
    obs = driver.create(net, _own(net.address))
    assert obs.spec.vlan == 130 and obs.spec.settings["distributed"] is True
    assert changed_fields(net, obs) == []
    pg = driver.networks._dvpg("D-DICOM")
    assert pg is not None
    assert driver.client.properties(pg, ["config"])["config"].defaultPortConfig.vlan.vlanId == 130

    vm = MachineSpec(
        address="machine.pacs[0]", name="dvs-vm-1", role="pacs", index=0, image={}, cpu_count=1,
        memory_mib=1024, nics=(NicSpec("D-DICOM", vlan=130, mtu=9000),), hostname="dvs-vm-1",
    )
    mobs = driver.create(vm, _own(vm.address))
    assert [n.network for n in mobs.spec.nics] == ["D-DICOM"] and changed_fields(vm, mobs) == []
    dev = [
        d for d in driver.client.properties(driver.machines.vm_of(mobs), ["config.hardware.device"])[
            "config.hardware.device"
        ] if isinstance(d, vim.vm.device.VirtualEthernetCard)
    ][0]
    assert isinstance(dev.backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    assert dev.backing.port.portgroupKey == driver.client.properties(pg, ["key"])["key"]

    retagged = replace(net, vlan=131)
    assert driver.classify_change(retagged, obs, "vlan") is ChangeKind.IN_PLACE
    obs = driver.update(retagged, obs, ["vlan"])
    assert obs.spec.vlan == 131
    assert driver.read(retagged).spec.vlan == 131

    # the same name declared as a standard port group: the kind of switch is observable drift
    as_standard = replace(net, settings={"switch": "vSwitch0"}, vlan=131)
    assert "settings" in changed_fields(as_standard, driver.read(as_standard))
    assert driver.classify(as_standard, "settings") is ChangeKind.REPLACE

    owned = {o.spec.address for o in driver.list_owned("dvs-site")}
    assert owned == {"network.dicom", "machine.pacs[0]"}
    driver.delete(mobs)
    driver.delete(obs)
    assert driver.read(net) is None
    assert driver.list_owned("dvs-site") == []
    driver.delete(obs)  # absent is success
