"""Sites shaped like the blueprint model, built from plain namespaces, for the engine's tests."""

from __future__ import annotations

from typing import Any

from pacsinfra.drivers.fake.driver import FakeDriver as MemDriver  # noqa: F401  # the tests' name


# -- a blueprint-shaped site built from plain namespaces (engine unit tests only) ------------
def fake_site(
    name: str = "st-mary",
    *,
    archives: int = 2,
    viewers: int = 1,
    memory: int = 4096,
    shares: Any = "high",
) -> Any:
    """A minimal object with the attributes of the blueprint contract's Site."""
    from types import SimpleNamespace as NS

    img = NS(kvm={"volume": "debian12.qcow2", "pool": "default"}, fake={"template": "debian12"})
    nets = {
        "dicom": NS(
            purpose="dicom",
            vlan=110,
            cidr="10.10.110.0/24",
            gateway="10.10.110.1",
            mtu=9000,
            qos="high",
            fake=None,
        ),
        "management": NS(
            purpose="management",
            vlan=None,
            cidr="10.10.1.0/24",
            gateway=None,
            mtu=1500,
            qos=None,
            fake=None,
        ),
    }
    storage = {
        "flash": NS(
            tier="performance",
            encrypted=True,
            provisioning="thin",
            iops_limit=20000,
            iops_reservation=None,
            fake={"pool": "flash-pool"},
        ),
    }
    archive = NS(
        count=archives,
        image="debian12",
        cpu=NS(count=2, reservation=None, shares=shares, limit=None),
        memory=NS(size=memory, reservation=None, lock=False, hugepages=False),
        disks=[NS(name="os", size=10240, storage="flash", mount=None)],
        nics=[
            NS(network="dicom", addresses=[f"10.10.110.{11 + i}" for i in range(archives)]),
            NS(network="management", addresses=[]),
        ],
        gpu=None,
        placement=NS(anti_affinity=True, hosts=[], cluster=None),
        services=["archive"],
        holds_data=None,
    )
    viewer = NS(
        count=viewers,
        image="debian12",
        cpu=NS(count=1, reservation=None, shares=None, limit=None),
        memory=NS(size=1024, reservation=None, lock=False, hugepages=False),
        disks=[],
        nics=[NS(network="management", addresses=[])],
        gpu=NS(mode="vgpu", profile="grid_a40-8q", count=1, device=None),
        placement=None,
        services=["viewer"],
        holds_data=None,
    )
    machines = {"archive": archive}
    if viewers:
        machines["viewer"] = viewer
    services = {
        "archive": NS(kind="archive", config={"ae_title": "ARCHIVE"}),
        "viewer": NS(kind="viewer", config={}),
    }
    return NS(
        metadata=NS(name=name),
        provider=NS(driver="fake", fake={}, model_dump=lambda **kw: {"driver": "fake"}),
        deploy=None,
        images={"debian12": img},
        networks=nets,
        storage=storage,
        machines=machines,
        services=services,
    )


def fake_blueprint(tmp_path: Any, site: Any = None, overlay: str | None = None) -> Any:
    """A LoadedBlueprint-shaped object around :func:`fake_site`."""
    from pathlib import Path
    from types import SimpleNamespace as NS

    path = Path(tmp_path) / "site.yaml"
    path.write_text("# fake\n")
    return NS(
        site=site if site is not None else fake_site(), path=path, site_name=overlay, warnings=[]
    )
