"""Storage classes as PBM storage policies, marked in ``config.pacsinfra.policy.<name>``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.vsphere import classify as classify_mod
from pacsinfra.drivers.vsphere import pbm as pbm_mod
from pacsinfra.drivers.vsphere.client import VsphereClient
from pacsinfra.drivers.vsphere.host import VsphereHost, refuse_unowned
from pacsinfra.drivers.vsphere.inventory import Inventory
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound
from pacsinfra.specs import (
    ChangeKind,
    Observed,
    Ownership,
    PowerState,
    Rendered,
    StorageSpec,
    to_jsonable,
)

MARK_KIND = "policy"


def mark_of(spec: StorageSpec, owner: Ownership) -> dict[str, Any]:
    return {
        "owner": owner.to_dict(),
        "address": spec.address,
        "tier": spec.tier,
        "encrypted": spec.encrypted,
        "iops_reservation": spec.iops_reservation,
        "settings": to_jsonable(spec.settings),
    }


class Storage(KindHandler[StorageSpec]):
    """Storage policies for storage classes."""

    def __init__(self, host: VsphereHost) -> None:
        self.host = host
        self._store: pbm_mod.PolicyStore | None = None

    @property
    def client(self) -> VsphereClient:
        return self.host.client

    @property
    def inv(self) -> Inventory:
        return self.host.inventory

    @property
    def store(self) -> pbm_mod.PolicyStore:
        if self._store is None:
            self._store = pbm_mod.PolicyStore(self.client)
        return self._store

    # -- planning --------------------------------------------------------------------
    def render(self, spec: StorageSpec, owner: Ownership) -> Rendered:
        payload = {
            "method": "PbmCreate",
            "name": spec.name,
            "description": pbm_mod.description(spec),
            "rules": {f"{pbm_mod.NAMESPACE}.{k}": v for k, v in pbm_mod.rules_of(spec).items()},
        }
        return Rendered("application/json", json.dumps(payload, indent=2, sort_keys=True))

    def classify(self, spec: StorageSpec, field_name: str) -> ChangeKind:
        return classify_mod.classify(spec, field_name)

    def check(self, spec: StorageSpec) -> list[str]:
        if spec.provisioning not in ("thin", "thick"):
            return [f"{spec.address}: provisioning must be thin or thick"]
        return []

    def observe(self, policy: pbm_mod.Policy, mark: dict[str, Any] | None, fallback: StorageSpec | None) -> Observed:
        mk = mark or {}
        owner = None
        if mk.get("owner"):
            o = mk["owner"]
            owner = Ownership(site=str(o["site"]), address=str(o["address"]), lineage=str(o["lineage"]))
        src: Any = mk if owner else {}

        def pick(key: str, default: Any) -> Any:
            if key in src:
                return src[key]
            return getattr(fallback, key, default) if fallback else default

        reservation = policy.rules.get("proportionalCapacity")
        limit = policy.rules.get("iopsLimit")
        spec = StorageSpec(
            address=str(src.get("address") or (fallback.address if fallback else "")),
            name=policy.name,
            tier=str(pick("tier", "")),
            encrypted=bool(pick("encrypted", False)),
            provisioning="thick" if reservation is not None and int(reservation) >= pbm_mod.THICK_RESERVATION else "thin",
            iops_limit=int(limit) if limit else None,
            iops_reservation=pick("iops_reservation", None),
            settings=dict(pick("settings", {}) or {}),
        )
        return Observed(spec=spec, id=policy.id, owner=owner, power=PowerState.UNKNOWN)

    def read(self, spec: StorageSpec) -> Observed | None:
        policy = self.store.find(spec.name)
        self.inv.remember_policy(policy, spec.name)
        if policy is None:
            return None
        self._note_datastore(spec)
        return self.observe(policy, self.client.read_marks(MARK_KIND).get(spec.name), spec)

    def _note_datastore(self, spec: StorageSpec) -> None:
        ds = spec.settings.get("datastore")
        if ds:
            self.inv.storage_datastore[spec.name] = str(ds)

    def create(self, spec: StorageSpec, owner: Ownership) -> Observed:
        problems = self.check(spec)
        if problems:
            raise CapabilityError("; ".join(problems))
        existing = self.store.find(spec.name)
        marks = self.client.read_marks(MARK_KIND)
        if existing is not None:
            obs = self.observe(existing, marks.get(spec.name), spec)
            if obs.owner == owner:
                return obs
            raise AlreadyExists(f"vsphere: storage policy {spec.name!r} exists and is not pacsinfra's")
        self.client.write_mark(MARK_KIND, spec.name, mark_of(spec, owner))
        policy = self.store.create(spec)
        self.inv.remember_policy(policy, spec.name)
        self._note_datastore(spec)
        return self.observe(policy, mark_of(spec, owner), spec)

    def update(self, spec: StorageSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        owner = observed.owner
        if owner is None:
            raise CapabilityError(f"vsphere: {spec.name} carries no pacsinfra mark; refusing to "
                                  "change it")
        policy = self.store.find(spec.name)
        if policy is None:
            raise NotFound(f"vsphere: storage policy {spec.name!r} is gone")
        self.client.write_mark(MARK_KIND, spec.name, mark_of(spec, owner))
        if pbm_mod.rules_of(spec) != {k: int(v) for k, v in policy.rules.items() if k in ("proportionalCapacity", "iopsLimit")}:
            self.store.update(policy, spec)
        self._note_datastore(spec)
        again = self.read(spec)
        assert again is not None
        return again

    def delete(self, observed: Observed) -> None:
        refuse_unowned(observed, "delete")
        if not observed.leftover:
            self.store.delete(observed.id)
        self.client.write_mark(MARK_KIND, observed.spec.name, None)
        self.inv.remember_policy(None, observed.spec.name)

    def list_owned(self, site: str) -> list[Observed]:
        marks = {n: m for n, m in self.client.read_marks(MARK_KIND).items() if (m.get("owner") or {}).get("site") == site}
        if not marks:
            return []
        out = []
        for policy in self.store.all():
            if policy.name in marks:
                obs = self.observe(policy, marks.pop(policy.name), None)
                self._note_datastore(obs.spec)  # type: ignore[arg-type]
                out.append(obs)
        for name, mark in marks.items():  # a create killed between the mark and the policy
            o = mark["owner"]
            owner = Ownership(site=str(o["site"]), address=str(o["address"]),
                              lineage=str(o["lineage"]))
            spec = StorageSpec(address=owner.address, name=name, tier=str(mark.get("tier", "")))
            out.append(Observed(spec=spec, id=f"leftover:mark:{name}", owner=owner,
                                leftover="a mark whose storage policy was never made"))
        return out
