"""``deploy.authorized_keys``: the public keys new machines accept for the deploy login."""

from __future__ import annotations

from pathlib import Path

import yaml

from pacsinfra.blueprint import load_blueprint
from pacsinfra.drivers.kvm.cloudinit import build_seed
from pacsinfra.plan.desired import desired_site
from pacsinfra.specs import MachineSpec

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPacsinfraDeployKeyForTestsOnly00000000 admin"


def _machines(path: Path) -> list[MachineSpec]:
    d = desired_site(load_blueprint(str(path)).site)
    return [r.spec for r in d.resources.values() if isinstance(r.spec, MachineSpec)]


def test_new_kvm_machines_get_the_key_through_cloud_init(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "blueprints" / "edge-clinic.yaml").read_text())
    data["deploy"]["authorized_keys"] = [KEY]
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(data))
    machines = _machines(bp)
    assert machines and all(m.ssh_authorized_keys == (KEY,) for m in machines)
    seed = build_seed(machines[0])
    assert KEY in str(seed.user_data)


def test_existing_hosts_are_not_given_keys(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "examples" / "static-site.yaml").read_text())
    data["deploy"]["authorized_keys"] = [KEY]
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(data))
    assert all(m.ssh_authorized_keys == () for m in _machines(bp))


def test_a_key_that_is_not_a_public_key_line_is_refused(tmp_path: Path) -> None:
    from pacsinfra.errors import BlueprintError

    data = yaml.safe_load((REPO / "blueprints" / "edge-clinic.yaml").read_text())
    data["deploy"]["authorized_keys"] = ["-----BEGIN OPENSSH PRIVATE KEY-----"]
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(data))
    try:
        load_blueprint(str(bp))
    except BlueprintError as exc:
        assert "deploy.authorized_keys" in str(exc)
    else:
        raise AssertionError("a private key line was accepted as an authorized key")
