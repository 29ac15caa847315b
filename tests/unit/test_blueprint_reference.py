"""The reference blueprints, the quickstart and the blueprint API the engine relies on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacsinfra.blueprint import load_blueprint
from pacsinfra.cli import cli
from pacsinfra.errors import BlueprintError

REPO = Path(__file__).resolve().parents[2]
BLUEPRINTS = sorted((REPO / "blueprints").glob("*.yaml")) + [
    REPO / "examples" / "kvm-quickstart.yaml", REPO / "examples" / "quickstart.yaml"]


def run(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(argv), catch_exceptions=False)
    return result.exit_code, result.output


def test_reference_set_is_complete() -> None:
    names = {p.name for p in BLUEPRINTS}
    assert {
        "hospital-kvm.yaml",
        "hospital-vsphere.yaml",
        "hospital-hyperv.yaml",
        "multisite.yaml",
        "edge-clinic.yaml",
        "hyperconverged.yaml",
        "quickstart.yaml",
        "kvm-quickstart.yaml",
    } <= names


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_reference_blueprints_validate_strictly(path: Path) -> None:
    code, out = run("validate", str(path), "--strict")
    assert code == 0, out
    assert "valid" in out


@pytest.mark.parametrize("site", ["dr", "lab"])
def test_multisite_overlays_validate(site: str) -> None:
    bp = load_blueprint(REPO / "blueprints" / "multisite.yaml", site=site, strict=True)
    assert bp.site_name == site
    assert "backup" not in bp.site.networks or site == "lab"
    if site == "dr":
        assert bp.site.networks["dicom"].cidr == "10.50.110.0/24"
        assert bp.site.machines["archive"].count == 1
        assert bp.site.provider.vsphere.server == "vc-dr.regional.example"
        assert bp.site.provider.vsphere.user == "pacsinfra@vsphere.local"  # merged, not replaced
        # locations point into the overlay for overlay values, into the base elsewhere
        file, line, _ = bp.locate("networks.dicom.cidr")
        assert file.endswith("multisite.yaml") and line > 100
    else:
        assert bp.site.provider.driver == "kvm" and bp.site.provider.vsphere is None
        file, line, _ = bp.locate("provider.driver")
        assert file.endswith("multisite-lab.yaml")


def test_hospital_has_what_the_issue_asks() -> None:
    s = load_blueprint(REPO / "blueprints" / "hospital-vsphere.yaml").site
    assert s.machines["archive"].count == 2
    assert s.machines["viewer"].count == 2 and s.machines["viewer"].gpu.mode == "vgpu"
    assert {n.purpose for n in s.networks.values()} == {"dicom", "database", "viewer", "management"}
    assert {c.tier for c in s.storage.values()} == {"performance", "capacity", "archive"}
    assert {svc.kind for svc in s.services.values()} == {"archive", "router", "database", "viewer"}
    hv = load_blueprint(REPO / "blueprints" / "hospital-hyperv.yaml").site
    assert hv.machines["viewer"].gpu.mode == "partition"


def test_contract_api_shapes() -> None:
    bp = load_blueprint(REPO / "blueprints" / "hospital-vsphere.yaml")
    s = bp.site
    assert s.api_version == "pacsinfra/v1" and s.metadata.name == "st-mary"
    role = s.machines["archive"]
    assert role.member_names("st-mary") == ["st-mary-archive-1", "st-mary-archive-2"]
    assert role.memory.size == 32 * 1024 and role.cpu.reservation == 8000  # MiB, MHz
    assert role.disks[1].size == 4 * 1024 * 1024
    assert role.nics[0].addresses == ["10.10.110.11", "10.10.110.12"]
    assert s.provider.vsphere.password.env == "VSPHERE_PASSWORD"
    assert s.services["archive"].config.index.service == "pacsdb"
    assert s.services["pacsdb"].config.shared_buffers == 16 * 1024
    assert bp.path.name == "hospital-vsphere.yaml" and bp.warnings == []
    assert bp.locate("machines.archive.disks[1].size") == (str(bp.path), 96, 28)
    assert bp.locate("no.such.field") is None


def test_engine_maps_the_quickstart() -> None:
    from pacsinfra.plan.desired import desired_site

    bp = load_blueprint(REPO / "examples" / "kvm-quickstart.yaml")
    desired = desired_site(bp.site)
    assert "machine.pacs[0]" in desired.resources
    spec = desired.resources["machine.pacs[0]"].spec
    assert spec.name == "quickstart-pacs-1" and spec.memory_mib == 4096
    assert spec.nics[0].address == "10.20.0.10" and spec.nics[0].prefix == 24


def test_variables_from_cli_and_file(tmp_path: Path) -> None:
    vf = tmp_path / "vars.yaml"
    vf.write_text("archive_count: 1\narchive_addrs: [10.40.110.99]\n")
    bp = load_blueprint(
        REPO / "blueprints" / "multisite.yaml",
        variables={"vcenter": "vc-test.example"},
        var_files=[vf],
    )
    assert bp.site.provider.vsphere.server == "vc-test.example"
    assert bp.site.machines["archive"].count == 1
    assert bp.site.machines["archive"].nics[0].addresses == ["10.40.110.99"]
    # an unused --var is a warning, a typo gets a suggestion
    bp = load_blueprint(REPO / "blueprints" / "multisite.yaml", variables={"vcentre": "x"})
    assert [w.code for w in bp.warnings] == ["unused-var"]


def test_literal_escape_and_interpolation(tmp_path: Path) -> None:
    text = (REPO / "examples" / "kvm-quickstart.yaml").read_text()
    text = text.replace("  description: One machine", "  description: ${var.who} uses $${var.x} in")
    p = tmp_path / "bp.yaml"
    p.write_text(text)
    bp = load_blueprint(p, variables={"who": "Radiology"})
    assert bp.site.metadata.description.startswith("Radiology uses ${var.x} in")


def test_secret_value_never_printed(tmp_path: Path) -> None:
    text = (REPO / "examples" / "kvm-quickstart.yaml").read_text().replace(
        '    uri: "test:///default"\n',
        '    uri: "test:///default"\n  vsphere: {server: vc, password: Very-Secret-4711}\n',
    )
    p = tmp_path / "bp.yaml"
    p.write_text(text)
    for fmt in ("text", "json"):
        code, out = run("validate", str(p), "--format", fmt)
        assert code == 2
        assert "Very-Secret-4711" not in out
        assert "literal secret" in out and "{env: NAME}" in out
    with pytest.raises(BlueprintError) as info:
        load_blueprint(p)
    assert "Very-Secret-4711" not in str(info.value)


def test_text_format_lines(tmp_path: Path) -> None:
    p = tmp_path / "bp.yaml"
    p.write_text(
        (REPO / "examples" / "kvm-quickstart.yaml").read_text().replace("storage: local}", "storage: locl}", 1)
    )
    code, out = run("validate", str(p))
    assert code == 2
    lines = [ln for ln in out.splitlines() if ": error: " in ln]
    assert len(lines) == 1
    assert lines[0].startswith(f"{p}:")
    assert "machines.pacs.disks[0].storage: unknown storage class 'locl' (did you mean 'local'?" in lines[0]


def test_warnings_print_and_exit_zero_unless_strict(tmp_path: Path) -> None:
    p = tmp_path / "bp.yaml"
    p.write_text(
        (REPO / "examples" / "quickstart.yaml").read_text().replace(
            "    encrypted: true ", "    encrypted: false"))
    code, out = run("validate", str(p))
    assert code == 0 and "warning: storage.disk.encrypted" in out
    code, out = run("validate", str(p), "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["valid"] is True and data["warnings"][0]["code"] == "phi-unencrypted"
    code, out = run("validate", str(p), "--strict")
    assert code == 2


def test_bad_var_option_is_usage_error() -> None:
    from pacsinfra.cli import main

    with pytest.raises(SystemExit) as info:
        main(["validate", str(REPO / "examples" / "kvm-quickstart.yaml"), "--var", "novalue"])
    assert info.value.code == 2


def test_schema_command() -> None:
    code, out = run("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"apiVersion", "kind", "metadata", "provider", "machines", "services", "sites"} <= set(
        schema["properties"]
    )
    # sizes accept both forms in the schema, like the loader does, and ${var.x}
    mem = schema["$defs"]["Memory"]["properties"]["size"]
    text = json.dumps(mem)
    assert '"type": "integer"' in text and '"type": "string"' in text
    from pacsinfra.blueprint.schema import VAR_REF_SCHEMA

    assert VAR_REF_SCHEMA in mem["anyOf"]


def test_schema_accepts_every_reference_and_rejects_shape_errors() -> None:
    from conftest import need_module

    need_module("jsonschema")
    import jsonschema
    import yaml

    from pacsinfra.blueprint.schema import blueprint_schema

    validator = jsonschema.Draft202012Validator(blueprint_schema())
    for path in BLUEPRINTS:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, f"{path.name}: {errors[0].message}"
    cases = REPO / "tests" / "cases" / "blueprint"
    for case in ("unknown-key-typo", "vlan-out-of-range", "bad-api-version", "wrong-types"):
        doc = yaml.safe_load((cases / case / "blueprint.yaml").read_text())
        assert list(validator.iter_errors(doc)), case


def test_validate_imports_no_dicom_stack() -> None:
    import subprocess

    code = (
        "import sys; from pacsinfra.cli import main\n"
        "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit: pass\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pynetdicom', 'pydicom', 'libvirt', "
        "'pyVmomi', 'winrm', 'paramiko')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "blueprints" / "hospital-vsphere.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_provider_round_trips_through_plan_json() -> None:
    from pacsinfra.apply.engine import provider_settings, settings_from_plan

    for name in ("hospital-vsphere.yaml", "hospital-hyperv.yaml", "hospital-kvm.yaml"):
        site = load_blueprint(REPO / "blueprints" / name).site
        data = provider_settings(site)
        assert json.loads(json.dumps(data)) == data
        driver = site.provider.driver
        assert settings_from_plan(data, driver) == getattr(site.provider, driver)


def test_var_file_values_are_located_in_the_var_file(tmp_path: Path) -> None:
    vf = tmp_path / "vars.yaml"
    vf.write_text("archive_count: 2\n")
    bp = load_blueprint(REPO / "blueprints" / "multisite.yaml", var_files=[vf])
    assert bp.locate("machines.archive.count") == (str(vf), 1, 16)


def test_bench_blueprint_is_valid(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_validate import generate
    finally:
        sys.path.remove(str(REPO / "bench"))
    p = tmp_path / "big.yaml"
    p.write_text(generate(60))
    bp = load_blueprint(p, strict=True)
    assert len(bp.site.machines) == 60
    assert bp.locate("machines.role0059.nics[1].addresses[0]")[1] > 700
