"""The YAML reader: values, locations, and what it refuses (never raising)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pacsinfra.blueprint.yaml_safe import load_yaml, load_yaml_text


def test_values_and_locations() -> None:
    text = "a: 1\nb:\n  - x\n  - {c: yes, d: '1.5', e: 1.5, f: ~, g: 52:54:00:aa:bb:cc}\non: off\n"
    value, loc, diags = load_yaml_text(text, "t.yaml")
    assert diags == []
    assert value == {
        "a": 1,
        "b": ["x", {"c": True, "d": "1.5", "e": 1.5, "f": None, "g": "52:54:00:aa:bb:cc"}],
        "on": False,  # keys keep their text; values are YAML 1.1
    }
    assert loc is not None
    a = loc.child("a")
    assert (a.line, a.col, a.key_line, a.key_col) == (1, 4, 1, 1)
    c = loc.child("b").child(1).child("c")
    assert (c.file, c.line, c.col, c.key_line, c.key_col) == ("t.yaml", 4, 9, 4, 6)


def test_anchors_merge_keys_and_sharing() -> None:
    text = "base: &b {x: 1, y: 2}\nitem:\n  <<: *b\n  y: 3\nlist: &l [1, 2]\nagain: *l\n"
    value, loc, diags = load_yaml_text(text, "t.yaml")
    assert diags == []
    assert value["item"] == {"x": 1, "y": 3}  # explicit keys win over merged ones
    assert value["again"] is value["list"]  # aliases are shared, not copied
    assert loc.child("item").child("x").line == 1  # a merged value points at its definition


def test_duplicate_keys_are_errors_with_both_lines() -> None:
    _, _, diags = load_yaml_text("a:\n  b: 1\n  c: 2\n  b: 3\n", "t.yaml")
    assert [(d.code, d.line, d.column, d.path) for d in diags] == [("duplicate-key", 4, 3, "a.b")]
    assert "first defined on line 2" in diags[0].message


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("a: !!python/object/apply:os.system [ls]\n", "yaml-tag"),
        ("a: !include other.yaml\n", "yaml-tag"),
        ("a: &x [*x]\n", "yaml-alias"),
        ("a: *nothing\n", "yaml-alias"),
        ("a: 1\n---\nb: 2\n", "yaml-documents"),
        ("a:\n\t- 1\n", "yaml-syntax"),
        ("a: [1, 2\n", "yaml-syntax"),
        ("? [1, 2]\n: x\n", "yaml-key"),
        ("a: " + "[" * 70 + "]" * 70 + "\n", "yaml-depth"),
        ("a: " + "7" * 5000 + "\n", "yaml-number"),
    ],
)
def test_refused_input(text: str, code: str) -> None:
    _, _, diags = load_yaml_text(text, "t.yaml")
    assert code in [d.code for d in diags]
    assert all(d.line >= 1 for d in diags)


def test_yaml_bomb_is_bounded() -> None:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    t0 = time.perf_counter()
    _, _, diags = load_yaml_text("\n".join(lines) + "\n", "bomb.yaml")
    assert time.perf_counter() - t0 < 2
    assert [d.code for d in diags] == ["yaml-bomb"]


def test_files_that_are_not_blueprints(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\x00\x01\x02\xff")
    (tmp_path / "latin1.yaml").write_bytes(b"a: caf\xe9\n")
    (tmp_path / "dir.yaml").mkdir()
    for name, code in [
        ("bin.yaml", "encoding"),
        ("latin1.yaml", "encoding"),
        ("dir.yaml", "file"),
        ("missing.yaml", "file"),
    ]:
        value, loc, diags = load_yaml(tmp_path / name)
        assert value is None and loc is None
        assert [d.code for d in diags] == [code], name
    _, _, diags = load_yaml(tmp_path / "latin1.yaml")
    assert (diags[0].line, diags[0].column) == (1, 7)


def test_bom_and_empty(tmp_path: Path) -> None:
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml(p)[0] == {"a": 1}
    p.write_text("# only a comment\n")
    value, _, diags = load_yaml(p)
    assert value is None and diags == []
