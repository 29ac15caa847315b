"""Golden tests of every rendered Hyper-V script, and the parameter-embedding contract.

Each case in tests/golden/hyperv/<case>/ is data: ``input.json`` (a spec and settings, or a
script name and its parameters) -> ``expected.ps1`` (the exact script) and
``expected.params.json`` (the one JSON document the script decodes). Record them again after
a deliberate template change with ``PACSINFRA_RECORD=1 pytest tests/unit/test_hyperv_scripts.py``
and review the diff.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
from conftest import need_module
from support.record import check_text

need_module("winrm")

from pacsinfra.drivers.hyperv import scripts  # noqa: E402
from pacsinfra.drivers.hyperv import vm as mach  # noqa: E402
from pacsinfra.drivers.hyperv.driver import HypervDriver  # noqa: E402
from pacsinfra.errors import CapabilityError  # noqa: E402
from pacsinfra.specs import MachineSpec, Ownership, spec_from_dict  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hyperv"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.json").is_file())


def render_case(case: dict[str, Any]) -> scripts.Script:
    """What the driver renders for one golden input (pure: no connection)."""
    if case["call"] == "script":
        return scripts.render(case["script"], case["parameters"])
    drv = HypervDriver(case["config"], client=object())
    spec = spec_from_dict(case["spec"])
    owner = Ownership(**case["owner"])
    if case["call"] == "create":
        r = drv.render(spec, owner)
        name, _, params = scripts.parse_script(r.text)
        assert params == r.parameters
        return scripts.Script(name=name, text=r.text, parameters=r.parameters)
    assert case["call"] == "update" and isinstance(spec, MachineSpec)
    params = mach.set_vm_parameters(spec, case["vm_id"], owner, case["fields"],
                                    stop_first=case["stop_first"], ctx=drv.host.context())
    return scripts.render("set-vm", params)


def test_every_script_has_a_golden_case() -> None:
    rendered = {render_case(json.loads((GOLDEN / c / "input.json").read_text())).name for c in CASES}
    assert rendered == set(scripts.SCRIPTS)


@pytest.mark.parametrize("case_name", CASES)
def test_golden(case_name: str) -> None:
    folder = GOLDEN / case_name
    case = json.loads((folder / "input.json").read_text())
    script = render_case(case)
    params_text = json.dumps(script.parameters, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    check_text(folder / "expected.ps1", script.text, f"{case_name}: the script")
    check_text(folder / "expected.params.json", params_text, f"{case_name}: the parameters")
    # the contract: header, one base64 literal that decodes to exactly the parameters
    name, version, decoded = scripts.parse_script(script.text)
    assert (name, version) == (script.name, scripts.SCRIPTS[script.name])
    assert decoded == json.loads(params_text)
    assert script.text.count("$PacsinfraParams = '") == 1
    assert "$ErrorActionPreference = 'Stop'" in script.text and "exit 1" in script.text
    # no parameter value is pasted into the PowerShell source: apart from the base64
    # literal, the script is the same text whatever the parameters
    assert strip_params(script.text) == strip_params(scripts.render(script.name, {}).text)


def strip_params(text: str) -> str:
    return scripts.PARAMS_RE.sub("$PacsinfraParams = ''", text)


def test_injection_case_keeps_hostile_names_as_data() -> None:
    case = json.loads((GOLDEN / "machine-injection" / "input.json").read_text())
    script = render_case(case)
    evil = case["spec"]["name"]
    assert "'" in evil and "$(" in evil
    assert evil not in script.text and "Stop-Computer" not in script.text and "calc" not in script.text
    _, _, params = scripts.parse_script(script.text)
    assert params["name"] == evil
    assert params["adapters"][0]["switch"] == "sw'; calc; '"
    # the only quoted literal carrying data is base64: no quote can appear inside it
    literal = re.search(r"\$PacsinfraParams = '([^']*)'", script.text)
    assert literal is not None
    assert json.loads(base64.b64decode(literal.group(1)))["name"] == evil


def test_encoded_command_fits_powershell_command_line() -> None:
    # UTF-16LE + base64 is 8/3 of the characters; CreateProcess takes 32767
    for c in CASES:
        text = render_case(json.loads((GOLDEN / c / "input.json").read_text())).text
        encoded = base64.b64encode(text.encode("utf-16-le"))
        assert len(encoded) + 60 < 32767, c


def test_oversized_script_is_refused_before_sending() -> None:
    with pytest.raises(CapabilityError, match="powershell.exe accepts at most"):
        scripts.render("get-storage", {"paths": ["D:\\" + "x" * 200] * 100, "root": None})


def test_templates_are_strict(tmp_path: Path) -> None:
    env = scripts.environment()
    assert env.undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("host-info.ps1.j2").render(script="host-info", version=1)


def test_parse_script_rejects_foreign_text() -> None:
    with pytest.raises(ValueError):
        scripts.parse_script("Get-VM | Remove-VM -Force")
    with pytest.raises(ValueError):
        scripts.render("format-c", {})


def test_model_facts_use_the_keys_the_templates_write() -> None:
    """The test model and the templates agree on every key of the VM and switch facts."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support.hyperv_model import HypervHost, Switch, Vm

    host = HypervHost()
    vm = Vm(id="1", name="a", path="C:\\", memory={"dynamic": False, "startup_mib": 2, "minimum_mib": 2,
                                                   "maximum_mib": 2})
    facts = host._vm_facts(vm)
    text = (scripts.template_dirs()[-1] / "_vm_facts.ps1.j2").read_text()
    keys = set(facts) | set(facts["processor"]) | set(facts["memory"]) | set(facts["secure_boot"])
    for k in keys:
        assert re.search(rf"\b{k} = ", text), f"{k} not written by _vm_facts.ps1.j2"
    sw_text = (scripts.template_dirs()[-1] / "_switch_facts.ps1.j2").read_text()
    for k in host._switch_facts(Switch(id="1", name="s", type="internal")):
        assert re.search(rf"\b{k} = ", sw_text), k
    info = (scripts.template_dirs()[-1] / "host-info.ps1.j2").read_text()
    for k in host._host_info({}):
        assert re.search(rf"\b{k} = ", info), k


def _syntax_errors(node: Any, out: list[str]) -> None:
    if node.type == "ERROR" or node.is_missing:
        out.append(f"line {node.start_point.row + 1} col {node.start_point.column}: {node.type}")
    for child in node.children:
        _syntax_errors(child, out)


def test_every_rendered_script_parses_as_powershell() -> None:
    """No PowerShell here: tree-sitter's PowerShell grammar catches unbalanced braces, quotes, etc."""
    need_module("tree_sitter_powershell")
    import tree_sitter_powershell
    from tree_sitter import Language, Parser

    parser = Parser(Language(tree_sitter_powershell.language()))
    assert parser.parse(b"try {\n  $x = @{ a = 1\n} catch { }").root_node.has_error  # it does catch errors
    for c in CASES:
        text = render_case(json.loads((GOLDEN / c / "input.json").read_text())).text
        errors: list[str] = []
        _syntax_errors(parser.parse(text.encode("utf-8")).root_node, errors)
        assert errors == [], f"{c}: {errors[:5]}"
