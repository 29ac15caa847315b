"""Table-driven bad blueprints: one folder per case in tests/cases/blueprint/.

Each folder holds ``blueprint.yaml`` (plus overlay / var files it names), an
optional ``args.json`` (``site``, ``vars``, ``var_files``, ``strict``, ``blueprint``)
and ``expected.json``: the list of diagnostics the validation must report, each
``{"code", "path", "line", "message"}`` and optionally ``"hint"`` and ``"file"``
(``message`` and ``hint`` are substrings; ``file`` is the name of the file the
diagnostic points into, ``blueprint.yaml`` when absent; ``line`` 0
means "no line": the file cannot be read at all). Every expected diagnostic must be
found and no other error may appear. Each case runs through the CLI in-process
(exit code 2, JSON output) and must never produce a traceback.

To record a case's ``expected.json`` again (then review the diff):
``PACSINFRA_RECORD=1 pytest tests/unit/test_blueprint_cases.py -k <case>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.record import recording

from pacsinfra.blueprint.load import validate
from pacsinfra.cli import cli

CASES_DIR = Path(__file__).resolve().parents[1] / "cases" / "blueprint"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())


def _args(case: Path) -> dict[str, Any]:
    f = case / "args.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _cli_args(case: Path, args: dict[str, Any]) -> list[str]:
    argv = ["validate", str(case / args.get("blueprint", "blueprint.yaml")), "--format", "json"]
    if args.get("site"):
        argv += ["--site", args["site"]]
    for k, v in args.get("vars", {}).items():
        argv += ["--var", f"{k}={v}"]
    for vf in args.get("var_files", []):
        argv += ["--var-file", str(case / vf)]
    if args.get("strict"):
        argv.append("--strict")
    return argv


def test_there_are_many_cases() -> None:
    assert len(CASES) >= 50


def _record(path: Path, errors: list[Any]) -> None:
    """Write ``errors`` as a case's expected.json. A hint the file held is kept where the
    diagnostic still has it; a new one is taken when it is a "did you mean"."""
    old = json.loads(path.read_text()) if path.is_file() else []
    hints = {(e["code"], e["path"], e["line"]): e["hint"] for e in old if "hint" in e}
    rows: list[dict[str, Any]] = []
    for d in errors:
        row: dict[str, Any] = {"code": d.code, "path": d.path, "line": d.line,
                               "message": d.message[:60]}
        kept = hints.get((d.code, d.path, d.line))
        if kept and kept in d.hint:
            row["hint"] = kept
        elif d.hint.startswith("did you mean"):
            row["hint"] = d.hint.split("?")[0] + "?"
        if d.file and Path(d.file).name != "blueprint.yaml":
            row["file"] = Path(d.file).name
        rows.append(row)
    path.write_text(json.dumps(rows, indent=2) + "\n")


@pytest.mark.parametrize("name", CASES)
def test_case(name: str) -> None:
    case = CASES_DIR / name
    args = _args(case)
    loaded, diags = validate(
        case / args.get("blueprint", "blueprint.yaml"),
        site=args.get("site"),
        variables=args.get("vars"),
        var_files=[case / v for v in args.get("var_files", [])],
        strict=bool(args.get("strict")),
        all_sites=args.get("site") is None,  # as the CLI does without --site
    )
    errors = [d for d in diags if d.severity == "error"]
    if recording():
        _record(case / "expected.json", errors)
    expected = json.loads((case / "expected.json").read_text())
    assert loaded is None and errors, f"{name}: expected the blueprint to be invalid"
    unmatched = list(errors)
    for exp in expected:
        hit = next(
            (
                d
                for d in unmatched
                if d.code == exp["code"]
                and d.path == exp["path"]
                and d.line == exp["line"]
                and exp["message"] in d.message
                and exp.get("hint", "") in d.hint
                and Path(d.file).name == exp.get("file", "blueprint.yaml")
            ),
            None,
        )
        assert hit is not None, f"{name}: missing {exp}; got {[str(d) for d in unmatched]}"
        unmatched.remove(hit)
        if hit.line:
            assert hit.column > 0 and hit.file, f"{name}: {hit} has no column"
    assert not unmatched, f"{name}: unexpected errors {[str(d) for d in unmatched]}"

    # the same through the CLI: exit code 2, JSON with the same errors, no traceback
    result = CliRunner().invoke(cli, _cli_args(case, args), catch_exceptions=False)
    assert result.exit_code == 2, result.output
    out = json.loads(result.stdout)
    assert out["valid"] is False
    assert len(out["errors"]) == len(expected)
    assert "Traceback" not in result.output
