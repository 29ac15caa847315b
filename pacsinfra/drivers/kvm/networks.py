"""Networks on libvirt: a network object per blueprint network (QEMU's user-mode NAT has none).

The XML is rendered from and parsed back into the spec in :mod:`.network`; the mark is
in the network's metadata. A change that needs the network restarted (its addressing,
MTU) restarts it; a name change is a replace.
"""

from __future__ import annotations

from collections.abc import Sequence

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.kvm import classify as classify_mod
from pacsinfra.drivers.kvm import network as net
from pacsinfra.drivers.kvm.host import KvmHost, claim
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound, TaskFailed
from pacsinfra.specs import ChangeKind, NetworkSpec, Observed, Ownership, PowerState, Rendered


class Networks(KindHandler[NetworkSpec]):
    """libvirt networks."""

    def __init__(self, host: KvmHost) -> None:
        self.host = host

    # -- reading ---------------------------------------------------------------------
    def _read(self, name: str, desired: NetworkSpec | None) -> Observed | None:
        lc = self.host.lc
        xml = lc.network_xml(name)
        if xml is None:
            return None
        spec, owner = net.parse_network(xml, address=desired.address if desired else None)
        return Observed(spec=spec, id=lc.network_uuid(name), owner=owner,
                        power=PowerState.ON if lc.network_active(name) else PowerState.OFF)

    def read_name(self, name: str) -> Observed | None:
        """The libvirt network ``name`` (mark and whether it runs), or None when absent."""
        return self._read(name, None)

    def read(self, spec: NetworkSpec) -> Observed | None:
        return self._read(spec.name, spec)

    def list_owned(self, site: str) -> list[Observed]:
        out = []
        for name in self.host.lc.network_names():
            obs = self._read(name, None)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        return out

    # -- planning --------------------------------------------------------------------
    def render(self, spec: NetworkSpec, owner: Ownership) -> Rendered:
        return Rendered("application/xml", net.render_network(spec, owner))

    def classify(self, spec: NetworkSpec, field_name: str) -> ChangeKind:
        return classify_mod.classify(spec, field_name)

    def check(self, spec: NetworkSpec) -> list[str]:
        problems = []
        if self.host.embedded:
            problems.append(f"{spec.address}: qemu:///embed has no network driver")
        try:
            net.network_inputs(spec)
        except CapabilityError as exc:
            problems.append(str(exc))
        return problems

    # -- acting ----------------------------------------------------------------------
    def create(self, spec: NetworkSpec, owner: Ownership) -> Observed:
        lc = self.host.lc
        existing = self.read(spec)
        if claim("network", spec.name, existing, owner):
            assert existing is not None
            if existing.power != PowerState.ON:  # an earlier create killed before the start
                lc.start_network(spec.name)
            found = self.read(spec)
            assert found is not None
            return found
        try:
            lc.define_network(net.render_network(spec, owner), spec.name, start=True)
        except Exception:
            self._remove(spec.name, check_owner=False)
            raise
        found = self.read(spec)
        if found is None:
            raise TaskFailed(f"kvm: network {spec.name} vanished after creation")
        return found

    def update(self, spec: NetworkSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        if observed.owner is None:
            raise AlreadyExists(f"kvm: {spec.name} is not owned by pacsinfra; refusing to change it")
        kinds = [self.classify(spec, f) for f in fields]
        if ChangeKind.REPLACE in kinds:
            raise CapabilityError(f"kvm: changing {list(fields)} of {spec.name} needs a replace")
        restart = any(k >= ChangeKind.NEEDS_POWER_OFF for k in kinds)
        lc = self.host.lc
        xml = net.render_network(spec, observed.owner, uuid=lc.network_uuid(spec.name))
        lc.define_network(xml, spec.name, start=True, restart=restart)
        found = self.read(spec)
        if found is None:
            raise NotFound(f"kvm: network {spec.name} vanished during update")
        return found

    def delete(self, observed: Observed) -> None:
        self._remove(observed.spec.name)

    def _remove(self, name: str, *, check_owner: bool = True) -> None:
        found = self._read(name, None)
        if found is None:
            return
        if check_owner and found.owner is None:
            raise AlreadyExists(f"kvm: network {name} is not owned by pacsinfra; not deleting it")
        self.host.lc.delete_network(name)
