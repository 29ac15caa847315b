"""How the suite is spread over parallel workers (pytest-xdist).

``make test`` runs ``pytest -n <workers> --dist loadscope --no-loadscope-reorder`` and this
plugin's scheduler (:func:`make_scheduler`) gives every test a group, which runs whole on
one worker:

- a test module is a group of its own, so its module-scoped fixtures (a vSphere
  simulator, SSH hosts in network namespaces, a PostgreSQL cluster) are set up once;
- the long modules (each :data:`LONG_SHARE` of the whole run or more: QEMU guests,
  ansible runs, crash loops) are dealt into :data:`LANES` groups, balanced by duration. At most that many of them
  run at the same time, each lane one module after another, while the other workers take
  the short modules: on a 2-core machine more than two CPU-bound modules at once only
  slow each other down past their timeouts.

Workers take groups in collection order, which is sorted longest first (lanes, then the
other modules), so the long work starts at once and short modules fill the gaps at the
end. A module's duration is what it took in the last run that ran all of it (pytest's
cache, ``pacsinfra/module-seconds``, written by the run's controller), else what
:data:`HEAVY` says, else 0. Without ``-n`` only the order of modules changes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

CACHE_KEY = "pacsinfra/module-seconds"
#: a module taking at least this share of the whole run's time runs in a lane
LONG_SHARE = 0.04
#: how many long modules run at the same time
LANES = 2
#: what the longest modules took on the 2-core test machine with three workers (a cold
#: cache's guess)
HEAVY: dict[str, float] = {
    "tests/integration/test_kvm_guest_systemd.py": 700,
    "tests/integration/test_static_site_ansible.py": 460,
    "tests/integration/test_kvm_guest_e2e.py": 260,
    "tests/integration/test_vsphere_services.py": 194,
    "tests/integration/test_engine_crash.py": 178,
    "tests/integration/test_static_site.py": 156,
    "tests/integration/test_hyperv_services.py": 122,
    "tests/integration/test_dr_static.py": 100,
    "tests/integration/test_local_site.py": 78,
    "tests/integration/test_viewer_browser.py": 75,
    "tests/integration/test_dr_blueprint_source.py": 69,
    "tests/integration/test_archive_policy.py": 45,
}


def module_of(nodeid: str) -> str:
    """``tests/x/test_y.py`` of ``tests/x/test_y.py::test_z[param]``."""
    return nodeid.split("::", 1)[0]


def expected_seconds(config: pytest.Config) -> dict[str, float]:
    """Each module's expected duration: the cache's, else :data:`HEAVY`'s."""
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    cached = cache.get(CACHE_KEY, {}) if cache is not None else {}
    return {**HEAVY, **{m: float(v[0]) for m, v in cached.items()}}


def groups(seconds: dict[str, float], modules: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    """(module -> its group, module -> its rank in the run) for ``modules``: the long ones
    dealt into lanes balanced by duration, every other module a group of its own; ranked
    longest group first."""
    lanes: list[list[str]] = [[] for _ in range(LANES)]
    load = [0.0] * LANES
    long = LONG_SHARE * sum(seconds.get(m, 0.0) for m in modules)
    for module in sorted((m for m in modules if seconds.get(m, 0.0) >= max(long, 1.0)),
                         key=lambda m: -seconds[m]):
        lane = load.index(min(load))
        lanes[lane].append(module)
        load[lane] += seconds[module]
    group = {m: f"lane{i}" for i, lane in enumerate(lanes) for m in lane}
    weight = {f"lane{i}": load[i] for i in range(LANES)}
    weight.update({m: seconds.get(m, 0.0) for m in modules if m not in group})
    rank = {m: i for i, m in enumerate(sorted(
        modules, key=lambda m: (-weight[group.get(m, m)], -seconds.get(m, 0.0))))}
    return {m: group.get(m, m) for m in modules}, rank


def plan(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Sort ``items`` longest group first (in place): the order every worker collects,
    which the scheduler hands out."""
    modules = list(dict.fromkeys(module_of(it.nodeid) for it in items))
    _, rank = groups(expected_seconds(config), modules)
    items.sort(key=lambda it: rank[module_of(it.nodeid)])


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The xdist scheduler that runs each group whole on one worker (``-n`` runs only).

    xdist's own ``loadgroup`` names groups by rewriting node ids, which pytest 9 no longer
    allows; this scheduler finds each test's group from its module instead.
    """
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """LoadScope whose scope is the test's group (a lane or its module)."""

        group: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.group is None:
                modules = list(dict.fromkeys(module_of(n) for n in self.collection or ()))
                self.group = groups(expected_seconds(config), modules)[0]
            module = module_of(nodeid)
            return self.group.get(module, module)

    return GroupScheduling(config, log)


class DurationRecorder:
    """Adds up each module's test durations on the controller, and caches the modules
    that ran whole (as many tests as the cache saw last time, or more)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seconds: dict[str, float] = defaultdict(float)
        self.tests: dict[str, set[str]] = defaultdict(set)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        module = module_of(report.nodeid)
        self.seconds[module] += report.duration
        self.tests[module].add(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(self.config, "cache", None)
        if cache is None or not self.seconds:
            return
        known: dict[str, Any] = dict(cache.get(CACHE_KEY, {}))
        for module, secs in self.seconds.items():
            count = len(self.tests[module])
            if count >= int((known.get(module) or [0, 0])[1]):
                known[module] = [round(secs, 1), count]
        cache.set(CACHE_KEY, known)


def register(config: pytest.Config) -> None:
    """Record durations on the controller (or a run without workers), not on workers."""
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(DurationRecorder(config), "pacsinfra-durations")
