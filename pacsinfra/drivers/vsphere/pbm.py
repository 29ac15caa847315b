"""Storage policies through the PBM endpoint (/pbm, pbm.version.version11, the vim session's cookie).

A storage class becomes a requirement profile with vSAN rules pacsinfra can read
back (object space reservation for thin/thick, IOPS limit); the rest of the
class (tier, encryption, IOPS reservation) lives in the ownership mark's intent.
Which policy a VM's disks carry is not reported back by vcsim
(PbmQueryAssociatedProfile returns []), so the driver treats it as unobservable
and instead checks placement itself before it creates anything:
:func:`check_placement` asks the placement solver whether the chosen datastore
satisfies the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import pbm

from pacsinfra.errors import CapabilityError
from pacsinfra.specs import StorageSpec

NAMESPACE = "VSAN"
THICK_RESERVATION = 100  # vSAN proportionalCapacity: % of the object reserved up front


def _resource_type() -> Any:
    return pbm.profile.ResourceType(resourceType="STORAGE")


def _rule(cap: str, value: Any) -> Any:
    return pbm.capability.CapabilityInstance(
        id=pbm.capability.CapabilityMetadata.UniqueId(namespace=NAMESPACE, id=cap),
        constraint=[
            pbm.capability.ConstraintInstance(
                propertyInstance=[pbm.capability.PropertyInstance(id=cap, value=value)]
            )
        ],
    )


def rules_of(spec: StorageSpec) -> dict[str, int]:
    """The rules pacsinfra writes for a storage class (and reads back)."""
    rules = {"proportionalCapacity": THICK_RESERVATION if spec.provisioning == "thick" else 0}
    if spec.iops_limit:
        rules["iopsLimit"] = int(spec.iops_limit)
    return rules


def constraints(spec: StorageSpec) -> Any:
    """The profile's constraints: one sub-profile of vSAN rules."""
    return pbm.profile.SubProfileCapabilityConstraints(
        subProfiles=[
            pbm.profile.SubProfileCapabilityConstraints.SubProfile(
                name="pacsinfra", capability=[_rule(k, v) for k, v in sorted(rules_of(spec).items())]
            )
        ]
    )


def description(spec: StorageSpec) -> str:
    """A human description shown in the vSphere client."""
    parts = [f"tier={spec.tier}", f"provisioning={spec.provisioning}"]
    if spec.encrypted:
        parts.append("encrypted")
    return "pacsinfra storage class " + spec.address + " (" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class Policy:
    """A storage policy found through PBM."""

    id: str
    name: str
    rules: dict[str, Any]


def parse_rules(profile: Any) -> dict[str, Any]:
    """``{capability id: value}`` of a profile's rules (every namespace)."""
    out: dict[str, Any] = {}
    cons = getattr(profile, "constraints", None)
    for sub in getattr(cons, "subProfiles", None) or ():
        for cap in sub.capability or ():
            for c in cap.constraint or ():
                for prop in c.propertyInstance or ():
                    out[str(prop.id)] = prop.value
    return out


class PolicyStore:
    """Look up, create and delete requirement profiles (``client`` is a VsphereClient)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def _pm(self) -> Any:
        return self.client.pbm_content.profileManager

    def all(self) -> list[Policy]:
        """Every storage requirement profile."""
        pm = self._pm
        ids = self.client.call(
            "vsphere: list storage policies",
            pm.PbmQueryProfile,
            resourceType=_resource_type(),
            profileCategory="REQUIREMENT",
        )
        if not ids:
            return []
        profiles = self.client.call("vsphere: read storage policies", pm.PbmRetrieveContent, profileIds=ids)
        return [Policy(id=p.profileId.uniqueId, name=p.name, rules=parse_rules(p)) for p in profiles or ()]

    def find(self, name: str) -> Policy | None:
        """The policy called ``name``, or None."""
        for p in self.all():
            if p.name == name:
                return p
        return None

    def create(self, spec: StorageSpec) -> Policy:
        """Create the requirement profile for ``spec`` (its name is the policy name)."""
        create_spec = pbm.profile.CapabilityBasedProfileCreateSpec(
            name=spec.name,
            description=description(spec),
            category="REQUIREMENT",
            resourceType=_resource_type(),
            constraints=constraints(spec),
        )
        pid = self.client.call(f"vsphere: create storage policy {spec.name}", self._pm.PbmCreate, createSpec=create_spec)
        return Policy(id=pid.uniqueId, name=spec.name, rules=rules_of(spec))

    def update(self, policy: Policy, spec: StorageSpec) -> None:
        """Rewrite the rules and description of an existing profile."""
        update = pbm.profile.CapabilityBasedProfileUpdateSpec(
            description=description(spec), constraints=constraints(spec)
        )
        self.client.call(
            f"vsphere: update storage policy {spec.name}",
            self._pm.PbmUpdate,
            profileId=pbm.profile.ProfileId(uniqueId=policy.id),
            updateSpec=update,
        )

    def delete(self, policy_id: str) -> None:
        """Delete one profile (absent is success: PbmDelete ignores unknown ids)."""
        self.client.call(
            "vsphere: delete storage policy",
            self._pm.PbmDelete,
            profileId=[pbm.profile.ProfileId(uniqueId=policy_id)],
        )

    def compatible_datastores(self, policy_id: str, datastores: Sequence[str]) -> set[str]:
        """Which of ``datastores`` (moref values) satisfy the policy, per PBM's placement solver."""
        solver = self.client.pbm_content.placementSolver
        hubs = [pbm.placement.PlacementHub(hubType="Datastore", hubId=d) for d in datastores]
        results = self.client.call(
            "vsphere: check storage policy placement",
            solver.PbmCheckRequirements,
            hubsToSearch=hubs,
            placementSubjectRequirement=[
                pbm.placement.CapabilityProfileRequirement(profileId=pbm.profile.ProfileId(uniqueId=policy_id))
            ],
        )
        return {r.hub.hubId for r in results or () if not r.error}


def check_placement(store: PolicyStore, policy: Policy, datastore_id: str, datastore_name: str) -> None:
    """Refuse (CapabilityError) to put a disk of ``policy`` on a datastore PBM finds incompatible."""
    ok = store.compatible_datastores(policy.id, [datastore_id])
    if datastore_id not in ok:
        raise CapabilityError(
            f"vsphere: datastore {datastore_name} does not satisfy storage policy {policy.name!r}; "
            "set the storage class's vsphere.datastore to a compatible datastore"
        )
