"""Property: no input makes ``pacsinfra validate`` crash; it always exits 0 or 2.

Valid blueprints are mutated structurally (delete keys, change types, insert
garbage, swap values) and at the byte level (random bytes spliced in, truncation),
then validated through the CLI in-process.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacsinfra.cli import cli

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "examples" / "kvm-quickstart.yaml", REPO / "blueprints" / "hospital-vsphere.yaml"]
TEXTS = [p.read_text() for p in SOURCES]
DOCS = [yaml.safe_load(t) for t in TEXTS]
TMP = Path(tempfile.mkdtemp(prefix="pacsinfra-fuzz-"))

garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["${var.nope}", "32GiB", "10.0.0.0/8", "{env: X}", "*", "&a", "\t", "0x10"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def _set(node: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    parent = _get(node, path[:-1])
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@st.composite
def mutated_doc(draw: st.DrawFn) -> str:
    doc = json.loads(json.dumps(draw(st.sampled_from(DOCS)), default=str))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "swap", "insert"]))
        try:
            if op == "delete":
                _set(doc, path, None, delete=True)
            elif op == "replace":
                _set(doc, path, draw(garbage))
            elif op == "swap":
                other = draw(st.sampled_from(paths))
                n = min(len(path), len(other))
                if path[:n] == other[:n]:
                    continue  # one contains the other: swapping would make a cycle
                a, b = _get(doc, path), _get(doc, other)
                _set(doc, path, b)
                _set(doc, other, a)
            else:
                target = _get(doc, path)
                if isinstance(target, dict):
                    target[draw(st.text(min_size=1, max_size=8))] = draw(garbage)
                elif isinstance(target, list):
                    target.append(draw(garbage))
        except (KeyError, IndexError, TypeError):
            continue  # the path moved under an earlier mutation
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(TEXTS)).encode())
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "overwrite", "truncate"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "overwrite":
            data[pos : pos + len(chunk)] = chunk
        else:
            del data[pos:]
    return bytes(data)


def _check(data: bytes, *extra: str) -> None:
    path = TMP / "bp.yaml"
    path.write_bytes(data)
    result = CliRunner().invoke(cli, ["validate", str(path), "--format", "json", *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 2), result.output
    out = json.loads(result.stdout)
    assert out["valid"] is (result.exit_code == 0)
    for d in out["errors"] + out["warnings"]:
        assert d["message"]


FAST = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FAST
@given(mutated_doc())
def test_structural_mutations_never_crash(text: str) -> None:
    _check(text.encode())


@FAST
@given(mutated_bytes())
def test_byte_mutations_never_crash(data: bytes) -> None:
    _check(data)


@settings(max_examples=40, deadline=None, database=None)
@given(mutated_doc(), st.sampled_from(["--strict", "--site=dr"]))
def test_options_never_crash(text: str, option: str) -> None:
    _check(text.encode(), option)


MULTISITE = REPO / "blueprints" / "multisite.yaml"


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.dictionaries(
        st.sampled_from(["archive_count", "archive_addrs", "vcenter", "other"]), garbage, max_size=4
    ),
    st.text(max_size=20),
    st.sampled_from([[], ["--site=dr"], ["--site=lab"], ["--strict"]]),
)
def test_variables_never_crash(values: dict[str, Any], cli_value: str, extra: list[str]) -> None:
    vf = TMP / "vars.yaml"
    vf.write_text(yaml.safe_dump(values))
    argv = ["validate", str(MULTISITE), "--format", "json", "--var-file", str(vf),
            "--var", f"vcenter={cli_value}", *extra]
    result = CliRunner().invoke(cli, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 2), result.output
    json.loads(result.stdout)
