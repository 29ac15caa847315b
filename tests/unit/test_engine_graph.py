"""Graph ordering, the blueprint -> spec mapping, plan JSON and rendering."""

from __future__ import annotations

import click
import pytest
from memdriver import fake_site

from pacsinfra.errors import PlanError
from pacsinfra.plan.desired import cpu_shares, desired_site
from pacsinfra.plan.graph import Graph, Node
from pacsinfra.plan.plan import Plan
from pacsinfra.plan.render import render_plan
from pacsinfra.specs import (
    MachineSpec,
    NicSpec,
    Observed,
    changed_fields,
    spec_from_dict,
    spec_to_dict,
)


def _g(edges: list[tuple[str, str]]) -> Graph:
    g = Graph()
    for a, b in edges:
        for x in (a, b):
            if x not in g.nodes:
                g.add_node(Node(x, "machine"))
        g.add_dependency(a, b)
    return g


def test_layers_put_dependencies_first() -> None:
    g = _g([("m1", "n1"), ("m1", "s1"), ("m2", "n1"), ("svc", "m1"), ("svc", "m2")])
    assert g.layers() == [["n1", "s1"], ["m1", "m2"], ["svc"]]


def test_cycle_is_named() -> None:
    g = _g([("a", "b"), ("b", "c"), ("c", "a")])
    with pytest.raises(PlanError, match="cycle: a -> b -> c -> a"):
        g.layers()


def test_long_chain_has_no_recursion_limit() -> None:
    g = _g([(f"n{i + 1}", f"n{i}") for i in range(5000)])
    assert g.find_cycle() is None
    assert len(g.layers()) == 5001


def test_desired_names_addresses_and_dependencies() -> None:
    d = desired_site(fake_site(archives=2), driver="kvm")
    m0 = d.resources["machine.archive[0]"].spec
    m1 = d.resources["machine.archive[1]"].spec
    assert isinstance(m0, MachineSpec) and isinstance(m1, MachineSpec)
    assert (m0.name, m1.name) == ("st-mary-archive-1", "st-mary-archive-2")
    assert m0.cpu_shares == 2 * 2000  # high x 2 vCPUs
    assert [n.address for n in m1.nics] == ["10.10.110.12", None]
    assert (
        m1.nics[0].prefix == 24 and m1.nics[0].gateway == "10.10.110.1" and m1.nics[0].vlan == 110
    )
    assert m0.nics[0].network == "st-mary-dicom"  # no per-driver mapping: <site>-<name>
    assert m0.holds_data is True  # hosts an archive service
    assert m0.anti_affinity_group == "st-mary-archive"
    assert d.resources["machine.archive[0]"].depends_on == (
        "network.dicom",
        "network.management",
        "storage.flash",
    )
    first = [a for a in d.graph.layers()[0] if d.graph.nodes[a].kind != "external"]
    assert first == ["network.dicom", "network.management", "storage.flash"]
    assert "service.archive" in d.graph.layers()[-1]
    assert ("external.modalities", "service.archive", "C-STORE") in d.graph.flows


def test_per_driver_mapping_names_objects() -> None:
    d = desired_site(fake_site(), driver="fake")
    assert d.resources["storage.flash"].spec.name == "st-mary-flash"  # the fake has no network name key
    d = desired_site(fake_site(), driver="kvm")
    assert d.resources["machine.viewer[0]"].spec.holds_data is False


@pytest.mark.parametrize(
    ("given", "vcpus", "want"),
    [("low", 4, 2000), ("normal", 2, 2000), (777, 8, 777), (None, 2, None)],
)
def test_cpu_shares(given: object, vcpus: int, want: int | None) -> None:
    assert cpu_shares(given, vcpus) == want


def test_unassigned_mac_is_not_drift_but_a_pinned_one_is() -> None:
    spec = desired_site(fake_site(), driver="kvm").resources["machine.archive[0]"].spec
    assert isinstance(spec, MachineSpec)
    import dataclasses

    with_mac = dataclasses.replace(
        spec, nics=tuple(dataclasses.replace(n, mac="52:54:00:aa:bb:cc") for n in spec.nics)
    )
    assert changed_fields(spec, Observed(with_mac, "1", None)) == []
    pinned = dataclasses.replace(spec, nics=(NicSpec(network="x", mac="52:54:00:00:00:01"),))
    assert changed_fields(
        pinned,
        Observed(
            dataclasses.replace(pinned, nics=(NicSpec(network="x", mac="52:54:00:00:00:02"),)),
            "1",
            None,
        ),
    ) == ["nics"]
    fewer = dataclasses.replace(spec, nics=spec.nics[:1])
    assert changed_fields(spec, Observed(fewer, "1", None)) == ["nics"]


def test_spec_json_round_trip() -> None:
    for res in desired_site(fake_site(), driver="kvm").resources.values():
        assert spec_from_dict(spec_to_dict(res.spec)) == res.spec


def test_render_and_plan_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from memdriver import MemDriver, fake_blueprint

    from pacsinfra.apply.engine import Engine

    eng = Engine(fake_blueprint(tmp_path), tmp_path / "s.json", MemDriver())
    plan = eng.plan()
    text = click.unstyle(render_plan(plan))
    assert "+ machine.archive[0] (st-mary-archive-1): create" in text
    assert text.strip().endswith("Plan: 6 to add, 0 to change, 0 to destroy.")
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    assert [s.desired for s in again.steps] == [s.desired for s in plan.steps]


def test_draw_dot_and_mermaid_show_the_site() -> None:
    from pacsinfra.plan.draw import to_dot, to_mermaid

    g = desired_site(fake_site(archives=2), driver="kvm").graph
    dot = to_dot(g, "site st-mary")
    assert 'machine_archive_0_ -> network_dicom [label="10.10.110.11"]' in dot
    assert "machine_archive_0_ -> storage_flash" in dot and "os 10GiB" in dot
    assert "GPU vgpu grid_a40-8q x1" in dot
    assert "service_archive -> machine_archive_1_" in dot
    assert "external_modalities -> service_archive" in dot and "color=blue" in dot
    assert "service_archive -> service_viewer" in dot
    mm = to_mermaid(g)
    assert mm.startswith("flowchart LR\n")
    assert "machine_archive_1_ -->|10.10.110.12| network_dicom" in mm
    assert "service_archive ==>|QIDO/WADO| service_viewer" in mm


def test_event_sinks_plain_and_json() -> None:
    import io
    import json

    from pacsinfra.apply.events import Event, JsonSink, PlainSink

    buf = io.StringIO()
    sink = PlainSink(buf)
    sink(Event("start", "machine.a[0]", "create"))
    sink(Event("done", "machine.a[0]", "create", elapsed=1.25))
    sink(Event("fail", "machine.a[1]", "create", "no such image", 0.5))
    sink(Event("skip", "service.x", "create", "depends on machine.a[1], which failed"))
    assert buf.getvalue().splitlines() == [
        "machine.a[0]: creating...",
        "machine.a[0]: created (1.2s)",
        "machine.a[1]: create FAILED (0.5s): no such image",
        "service.x: skipped (depends on machine.a[1], which failed)",
    ]
    buf = io.StringIO()
    JsonSink(buf)(Event("done", "machine.a[0]", "create", elapsed=1.25, data={"id": "x"}))
    rec = json.loads(buf.getvalue())
    assert (
        rec["event"] == "done"
        and rec["address"] == "machine.a[0]"
        and rec["elapsed"] == 1.25
        and rec["id"] == "x"
    )


def test_rich_sink_prints_finished_steps_and_summary() -> None:
    import io

    from pacsinfra.apply.events import Event, RichSink

    buf = io.StringIO()
    sink = RichSink(buf)
    sink(Event("begin", data={"steps": 2}))
    sink(Event("start", "machine.a[0]", "create"))
    sink(Event("done", "machine.a[0]", "create", elapsed=0.5))
    sink(Event("fail", "machine.a[1]", "create", "boom [red]not markup[/red]", 0.1))
    sink(Event("end", message="Apply FAILED: 1 done"))
    sink.close()
    text = buf.getvalue()
    assert "machine.a[0]: created (0.5s)" in text
    assert "machine.a[1]: create FAILED (0.1s): boom [red]not markup[/red]" in text
    assert "Apply FAILED: 1 done" in text


def test_leaf_changes_summarise_added_elements_and_skip_open_macs() -> None:
    from pacsinfra.plan.render import leaf_changes

    before = [{"network": "a", "mac": "52:54:00:00:00:01", "mtu": 1500}]
    after = [{"network": "a", "mac": None, "mtu": 9000}, {"network": "b", "mac": None, "mtu": 1500}]
    assert leaf_changes("nics", before, after) == [
        ("nics[0].mtu", 1500, 9000),
        ("nics[1]", "<absent>", {"network": "b", "mtu": 1500}),
    ]
