"""Storage classes on libvirt: a directory pool each, marked by a zero-byte marker volume.

The XML is rendered and parsed in :mod:`.pool`; the volumes behind pools (libvirt's, or
plain directories on ``qemu:///embed``) are :mod:`.volumes`. A pool that an interrupted
create left defined but unmarked carries a UUID only pacsinfra gives it
(:func:`.pool.pool_uuid`) and no volume: it reads as absent, and create completes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.kvm import classify as classify_mod
from pacsinfra.drivers.kvm import pool as pool_mod
from pacsinfra.drivers.kvm.host import KvmHost, claim
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound, TaskFailed
from pacsinfra.specs import ChangeKind, Observed, Ownership, PowerState, Rendered, StorageSpec


class Storage(KindHandler[StorageSpec]):
    """Directory pools."""

    def __init__(self, host: KvmHost) -> None:
        self.host = host

    # -- reading ---------------------------------------------------------------------
    def _half_done(self, name: str, desired: StorageSpec | None) -> bool:
        """Whether pool ``name`` is an empty, unmarked pool defined by an interrupted
        create (or left by an interrupted delete) of ``desired``."""
        if desired is None or desired.name != name:
            return False
        volumes = self.host.lc.volumes
        return volumes.pool_uuid(name) == pool_mod.pool_uuid(desired) and not volumes.volume_names(
            name)

    def _read(self, name: str, desired: StorageSpec | None) -> Observed | None:
        volumes = self.host.lc.volumes
        if not volumes.pool_exists(name):
            return None
        owner = self.host.pool_owner(name)
        if owner is None and self._half_done(name, desired):
            return None  # not there yet (or any more): create completes it
        spec = pool_mod.parse_pool(name, volumes.pool_path(name), owner, desired)
        return Observed(spec=spec, id=volumes.pool_uuid(name), owner=owner, power=PowerState.ON,
                        unobservable=pool_mod.UNOBSERVABLE)

    def read(self, spec: StorageSpec) -> Observed | None:
        return self._read(spec.name, spec)

    def list_owned(self, site: str) -> list[Observed]:
        out = []
        for name in self.host.lc.volumes.pool_names():
            obs = self._read(name, None)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        return out

    # -- planning --------------------------------------------------------------------
    def render(self, spec: StorageSpec, owner: Ownership) -> Rendered:
        uuid = pool_mod.pool_uuid(spec)
        return Rendered(
            "application/xml",
            pool_mod.with_uuid(pool_mod.render_pool(spec, self.host.pool_root()), uuid),
            {"marker": pool_mod.marker_name(owner), "uuid": uuid},
        )

    def classify(self, spec: StorageSpec, field_name: str) -> ChangeKind:
        return classify_mod.classify(spec, field_name)

    # -- acting ----------------------------------------------------------------------
    def create(self, spec: StorageSpec, owner: Ownership) -> Observed:
        """Create the pool with its marker; completes a half-done pool of an earlier run."""
        volumes = self.host.lc.volumes
        if claim("storage pool", spec.name, self.read(spec), owner):
            found = self.read(spec)
            assert found is not None
            return found
        root = self.host.pool_root()
        path = pool_mod.pool_path(spec, root)
        xml = pool_mod.with_uuid(pool_mod.render_pool(spec, root), pool_mod.pool_uuid(spec))
        try:
            volumes.create_pool(spec.name, path, xml, pool_mod.marker_name(owner))
        except Exception:
            # only a pool this call defined (ours by its UUID) and still empty
            if self._half_done(spec.name, spec):
                volumes.delete_pool(spec.name)
            raise
        found = self.read(spec)
        if found is None:
            raise TaskFailed(f"kvm: pool {spec.name} vanished after creation")
        return found

    def update(self, spec: StorageSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        if observed.owner is None:
            raise AlreadyExists(f"kvm: {spec.name} is not owned by pacsinfra; refusing to change it")
        replace = [f for f in fields if self.classify(spec, f) == ChangeKind.REPLACE]
        if replace:
            raise CapabilityError(f"kvm: changing {replace} of pool {spec.name} needs a replace")
        # Everything else is pacsinfra's own bookkeeping (not modelled by libvirt).
        found = self.read(spec)
        if found is None:
            raise NotFound(f"kvm: pool {spec.name} vanished during update")
        return found

    def delete(self, observed: Observed) -> None:
        name = observed.spec.name
        volumes = self.host.lc.volumes
        if not volumes.pool_exists(name):
            return
        if self.host.pool_owner(name) is None:
            raise AlreadyExists(f"kvm: pool {name} is not owned by pacsinfra; not deleting it")
        others = [v for v in volumes.volume_names(name)
                  if pool_mod.owner_from_marker(v) is None]
        if others:
            raise TaskFailed(
                f"kvm: pool {name} still holds {len(others)} volume(s) that no machine of this "
                f"site owns ({', '.join(others[:3])}); move them elsewhere or delete them first")
        volumes.delete_pool(name)  # the pool before (or with) its marker: see Volumes.delete_pool
