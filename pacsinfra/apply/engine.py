"""The engine's public API: plan, apply, destroy, refresh a site.

Later stages (deploy, DR rebuild) call this, not the CLI::

    from pacsinfra.blueprint import load_blueprint
    from pacsinfra.apply.engine import Engine

    with Engine(load_blueprint("site.yaml"), driver=None) as engine:   # driver from provider
        plan = engine.plan()
        result = engine.apply(plan, parallelism=10)

Every method that reads or writes state holds the state lock for its duration;
the lock is re-entrant within one thread, so a caller that wraps a plan and its
apply in ``with engine.locked("apply"):`` holds one lock (one lease) for both.
A plan records the state lineage and serial it was made against; ``apply``
refuses it once either moved.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pacsinfra.apply.events import EventSink, NullSink
from pacsinfra.apply.executor import ApplyFailed, ApplyResult, Executor
from pacsinfra.drivers.base import Driver
from pacsinfra.errors import PlanError, StateError
from pacsinfra.plan.desired import DesiredSite, desired_site, site_id
from pacsinfra.plan.diff import compute_plan, observe, select_targets
from pacsinfra.plan.plan import Action, Plan
from pacsinfra.providers import declaration, make_provider
from pacsinfra.services.layer import SiteDriver, service_steps
from pacsinfra.services.settings import DeployConfig, service_extras
from pacsinfra.specs import ServiceSpec
from pacsinfra.state.select import open_store
from pacsinfra.state.store import LockInfo, ResourceState, State, StateStore


def provider_settings(site: Any) -> dict[str, Any]:
    """The blueprint's provider section as JSON (secret references stay references)."""
    provider = site.provider
    if hasattr(provider, "model_dump"):
        data = provider.model_dump(mode="json", exclude_none=True, by_alias=True)
    else:
        data = dict(provider)
    assert isinstance(data, dict)
    return data


def deploy_settings(site: Any) -> dict[str, Any]:
    """The blueprint's deploy section as JSON (secret references stay references)."""
    deploy = getattr(site, "deploy", None)
    if deploy is None:
        return {}
    data = deploy.model_dump(mode="json", exclude_none=True) if hasattr(deploy, "model_dump") \
        else dict(deploy)
    assert isinstance(data, dict)
    extras = service_extras(getattr(site, "services", None))
    if extras:
        data["extras"] = extras
    return data


def driver_config(provider: Any, driver: str) -> Any:
    """The settings a driver is built with: ``provider.<driver>`` (model or dict)."""
    if isinstance(provider, dict):
        return provider.get(driver)
    return getattr(provider, driver, None)


def settings_from_plan(data: dict[str, Any], driver: str) -> Any:
    """A saved plan's ``provider.<driver>`` as the provider's declared settings model."""
    return declaration(driver).settings.model_validate(data.get(driver) or {})


def site_driver(name: str, settings: Any, *, deploy: Any = None, client: Any = None,
                provider: Driver | None = None, expected_hosts: int = 1) -> SiteDriver:
    """Provider ``name`` and the services on its machines, as the one driver the engine
    uses (``provider``: an instance the caller made, and connects and closes itself)."""
    own = provider is None
    if provider is None:
        provider = make_provider(name, settings, client=client, deploy=deploy)
    steps = service_steps(provider, declaration(name), DeployConfig.parse(deploy),
                          expected_hosts=expected_hosts)
    return SiteDriver(provider, steps, owns_provider=own)


class Engine:
    """Plan / apply / destroy / refresh one site against one driver and one state store."""

    def __init__(
        self,
        blueprint: Any | None,
        state_path: str | Path | None = None,
        driver: Driver | None = None,
        *,
        store: StateStore | None = None,
        sink: EventSink | None = None,
        lock_timeout: float = 0.0,
        plan: Plan | None = None,
    ) -> None:
        """``blueprint`` is a LoadedBlueprint (or None with ``plan`` to apply a saved plan).

        ``driver`` defaults to the blueprint's ``provider.driver``, built from its
        settings and connected on first use; a driver passed in is used as is and
        not closed by the engine.
        """
        if blueprint is None and plan is None:
            raise ValueError("Engine needs a blueprint or a saved plan")
        self.blueprint = blueprint
        self.desired: DesiredSite | None = None
        if blueprint is not None:
            self.desired = desired_site(blueprint.site, overlay=blueprint.site_name)
            self.site = self.desired.site
            self.driver_name = self.desired.driver
            self.provider: dict[str, Any] = provider_settings(blueprint.site)
            self.deploy: dict[str, Any] = deploy_settings(blueprint.site)
            bp_path = Path(blueprint.path)
            name, overlay = self.desired.name, self.desired.overlay
        else:
            assert plan is not None
            self.site, self.driver_name, self.provider = plan.site, plan.driver, plan.provider
            self.deploy = plan.deploy
            bp_path = Path(plan.blueprint) if plan.blueprint else Path.cwd() / "plan"
            name, overlay = plan.name, plan.overlay
        if store is None:
            section = getattr(blueprint.site, "state", None) if blueprint is not None else None
            store = open_store(str(state_path) if state_path else None, blueprint_path=bp_path,
                               name=name, overlay=overlay, section=section)
        self.store: StateStore = store
        self.sink: EventSink = sink or NullSink()
        self.lock_timeout = lock_timeout
        self._given = driver
        self._driver: SiteDriver | None = None
        self._connected = False
        self._plan = plan
        self._lock_held = threading.local()

    # -- lifecycle --------------------------------------------------------------------
    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        state_path: str | Path | None = None,
        driver: Driver | None = None,
        **kw: Any,
    ) -> Engine:
        """An engine able to apply a saved plan without its blueprint."""
        return cls(None, state_path, driver, plan=plan, **kw)

    def _service_hosts(self) -> int:
        """How many machines run services (the deploy engine ``auto`` decides by it)."""
        specs = ([r.spec for r in self.desired.resources.values()] if self.desired is not None
                 else [s.desired for s in self._plan.steps] if self._plan is not None else [])
        return len({s.machine for s in specs if isinstance(s, ServiceSpec)}) or 1

    @property
    def driver(self) -> SiteDriver:
        """The provider and the services on its machines as one driver, built and connected
        on first use."""
        if self._driver is None:
            if self.blueprint is not None:
                config = driver_config(self.blueprint.site.provider, self.driver_name)
            else:
                config = settings_from_plan(self.provider, self.driver_name)
            # a driver passed in is the caller's: connected and closed by the caller
            self._driver = site_driver(self.driver_name, config, deploy=self.deploy,
                                       provider=self._given,
                                       expected_hosts=self._service_hosts())
        if not self._connected:
            self._driver.connect()
            self._connected = True
        return self._driver

    def close(self) -> None:
        """Close what the engine built (a driver passed in stays open)."""
        if self._driver is not None and self._connected:
            self._driver.close()
            self._connected = False
        close_store = getattr(self.store, "close", None)
        if close_store is not None:
            close_store()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def locked(self, operation: str) -> Iterator[LockInfo | None]:
        """Hold the state lock (re-entrant within one thread of this engine)."""
        if getattr(self._lock_held, "on", False):
            yield None
            return
        with self.store.lock(operation, timeout=self.lock_timeout) as info:
            self._lock_held.on = True
            try:
                yield info
            finally:
                self._lock_held.on = False

    # -- state ------------------------------------------------------------------------
    def read_state(self) -> State | None:
        """The current state (checked to belong to this site)."""
        state = self.store.read()
        if state is not None and state.site != self.site:
            raise StateError(
                f"state {self.store.describe()} belongs to site {state.site!r}, not {self.site!r}; "
                "pass --state to pick the right file"
            )
        return state

    # -- operations -------------------------------------------------------------------
    def plan(self, *, destroy: bool = False, targets: Sequence[str] = ()) -> Plan:
        """Compare blueprint, state and hypervisor; no changes are made."""
        if self.desired is None:
            raise PlanError("planning needs the blueprint, not a saved plan")
        with self.locked("plan"):
            state = self.read_state()
            plan = compute_plan(
                self.desired,
                state,
                self.driver,
                provider=self.provider,
                deploy=self.deploy,
                destroy=destroy,
                blueprint=str(Path(self.blueprint.path).resolve()) if self.blueprint else "",
            )
        return select_targets(plan, targets)

    def check_plan(self, plan: Plan, state: State | None, *, allow_replace: bool) -> None:
        """Refuse a plan made for another site, against an older state, or replacing data."""
        if plan.site != self.site:
            raise PlanError(f"the plan is for site {plan.site!r}, not {self.site!r}")
        lineage = state.lineage if state else None
        serial = state.serial if state else None
        if (lineage, serial) != (plan.state_lineage, plan.state_serial):
            raise PlanError(
                "the state changed since this plan was made "
                f"(plan: lineage {plan.state_lineage} serial {plan.state_serial}; "
                f"now: lineage {lineage} serial {serial}); make a new plan"
            )
        refused = [s for s in plan.steps if s.action is Action.REPLACE and s.holds_data]
        if refused and not allow_replace:
            lines = "\n".join(f"  {s.address} (forced by {', '.join(s.forces)})" for s in refused)
            raise PlanError(
                "refusing to replace machines that hold data (their disks would be destroyed):\n"
                f"{lines}\nrerun with --allow-replace once the data is safe elsewhere"
            )

    def apply(
        self,
        plan: Plan,
        *,
        parallelism: int | None = None,
        allow_replace: bool = False,
        stop: threading.Event | None = None,
    ) -> ApplyResult:
        """Carry out ``plan`` with ``parallelism`` steps at once (None: the blueprint's
        ``deploy.parallelism``, else 10); raises ApplyError (with the summary) if any step
        failed."""
        if parallelism is None:
            parallelism = DeployConfig.parse(self.deploy).parallelism
        with self.locked("destroy" if plan.destroy else "apply"):
            state = self.read_state()
            self.check_plan(plan, state, allow_replace=allow_replace)
            if state is None:
                state = State(site=self.site, driver=self.driver_name)
            if not plan.has_changes:
                return ApplyResult(serial=state.serial)
            executor = Executor(
                self.driver, self.store, state, parallelism=parallelism, sink=self.sink, stop=stop
            )
            result = executor.run(plan.steps)
        if not result.ok:
            raise ApplyFailed(result)
        return result

    def destroy(self, *, parallelism: int = 10, targets: Sequence[str] = ()) -> ApplyResult:
        """Delete everything this site owns, in reverse dependency order."""
        with self.locked("destroy"):
            return self.apply(self.plan(destroy=True, targets=targets), parallelism=parallelism)

    def refresh(self) -> tuple[State, list[str]]:
        """Bring the state's records in line with the hypervisor; returns the state and what changed."""
        with self.locked("refresh"):
            state = self.read_state() or State(site=self.site, driver=self.driver_name)
            seen = observe(self.driver, self.site, state)
            notes: list[str] = []
            for addr, rec in list(state.resources.items()):
                obs = seen.by_address.get(addr)
                if obs is None:
                    del state.resources[addr]
                    notes.append(f"{addr}: gone from the hypervisor, removed from state")
                    continue
                new = ResourceState.from_observed(obs, obs.owner or rec.owner, rec.depends_on)
                if (new.id, new.spec, new.power, new.addresses) != (
                    rec.id,
                    rec.spec,
                    rec.power,
                    rec.addresses,
                ):
                    state.resources[addr] = new
                    notes.append(f"{addr}: updated from the hypervisor")
            wanted = self.desired.resources if self.desired else {}
            for addr, obs in seen.by_address.items():
                if addr not in state.resources and addr in wanted and obs.owner is not None:
                    state.resources[addr] = ResourceState.from_observed(
                        obs, obs.owner, wanted[addr].depends_on
                    )
                    notes.append(f"{addr}: adopted (owned by this site, was missing from state)")
            if notes or self.store.read() is None:
                self.store.write(state)
            return state, notes

    def state_rm(self, addresses: Sequence[str]) -> list[str]:
        """Drop records from the state (the hypervisor is not touched)."""
        with self.locked("state rm"):
            state = self.read_state()
            if state is None:
                raise StateError(f"no state at {self.store.describe()}")
            missing = [a for a in addresses if a not in state.resources]
            if missing:
                raise StateError(f"not in state: {', '.join(missing)}")
            for a in addresses:
                del state.resources[a]
            self.store.write(state)
            return list(addresses)


def engine_site_id(blueprint: Any) -> str:
    """The ownership site id of a loaded blueprint."""
    return site_id(str(blueprint.site.metadata.name), blueprint.site_name)
