"""The generated field references (docs/reference/*.md) match the models, and the
generator renders every kind of field readably."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from pacsinfra.secrets import SecretRef
from pacsinfra.types import Mhz, Size

REPO = Path(__file__).resolve().parents[2]


def _load_gendocs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gendocs", REPO / "tools" / "gendocs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gendocs"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gendocs = _load_gendocs()


@pytest.mark.parametrize("doc", gendocs.DOCS, ids=lambda d: d.path)
def test_reference_is_current(doc: Any) -> None:
    text, _ = gendocs.render(doc)
    path = REPO / doc.path
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    assert current == text, (
        f"{doc.path} does not match the models: run `python tools/gendocs.py` and commit it")


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs" / "reference"
    docs.mkdir(parents=True)
    for doc in gendocs.DOCS:
        (tmp_path / doc.path).write_text(gendocs.render(doc)[0], encoding="utf-8")
    monkeypatch.setattr(gendocs, "REPO", tmp_path)
    assert gendocs.main(["--check"]) == 0
    router = tmp_path / "docs" / "reference" / "router.md"
    router.write_text(router.read_text().replace("| `spool_dir` |", "| `spool` |"))
    assert gendocs.main(["--check"]) == 1
    assert "docs/reference/router.md; run `python tools/gendocs.py`" in capsys.readouterr().err
    assert gendocs.main([]) == 0  # rewrites it
    assert gendocs.main(["--check"]) == 0


# -- rendering, on models made for the test ------------------------------------------------


class Leaf(BaseModel):
    """A nested mapping. It has a second sentence."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(3, ge=1, le=9)  # how deep


class Cat(BaseModel):
    """A cat."""

    kind: Literal["cat"]
    lives: int = 9


class Dog(BaseModel):
    """A dog."""

    kind: Literal["dog"]


class Toy(BaseModel):
    """A model with one field of each shape.

    Attributes:
        mode: Chosen in the docstring.
        size: The size.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mode: Literal["fast", "safe"] = "safe"
    size: Size = 32 * 1024
    clock: Mhz | None = None  # per-core clock
    password: SecretRef | None = None
    # a comment above
    # on two lines
    leaf: Leaf = Field(default_factory=Leaf)
    leaves: dict[str, Leaf] = Field(default_factory=dict)
    pets: dict[str, Annotated[Cat | Dog, Field(discriminator="kind")]] = Field(
        default_factory=dict)
    from_: str = Field("x", alias="from", description="Set with Field.")
    tags: list[str] = Field(default_factory=lambda: ["a", "b"])
    plain: str | None = None


def _render() -> tuple[str, list[str]]:
    text, missing = gendocs.render_model(Toy, "Toy reference", "Intro.")
    return text, missing


def test_fields_types_defaults_and_descriptions() -> None:
    text, missing = _render()
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert rows["| `mode`"] == (
        "| `mode` | one of `fast`, `safe` | `safe` | Chosen in the docstring. |")
    # a size is MiB after validation, written back with its unit
    assert rows["| `size`"] == "| `size` | [size](#sizes) | `32GiB` | The size. |"
    assert rows["| `clock`"] == (
        "| `clock` | [frequency](#frequencies) | unset | Per-core clock. |")
    assert rows["| `password`"].startswith(
        "| `password` | [secret reference](#secret-references) | unset |")
    assert rows["| `leaf`"] == (
        "| `leaf` | [Leaf](#leaf) | its defaults | A comment above on two lines. |")
    # a field without a description says what its model's docstring says first
    assert rows["| `leaves`"] == (
        "| `leaves` | map of string → [Leaf](#leaf) | `{}` | A nested mapping. |")
    assert rows["| `pets`"].startswith(
        "| `pets` | map of string → one of, by `kind`: [Cat](#cat) (`kind: cat`), "
        "[Dog](#dog) (`kind: dog`) | `{}` |")
    assert rows["| `from`"] == "| `from` | string | `x` | Set with Field. |"  # the YAML key
    assert rows["| `tags`"] == "| `tags` | list of string | `[a, b]` |  |"
    assert rows["| `depth`"] == "| `depth` | integer, 1 – 9 | `3` | How deep. |"
    assert missing == ["Toy.pets", "Toy.tags", "Toy.plain", "Cat.kind", "Cat.lives", "Dog.kind"]


def test_sections_paths_and_conventions() -> None:
    text, _ = _render()
    assert text.startswith("<!-- Generated by tools/gendocs.py")
    for heading in ("## Toy", "## Leaf", "## Cat", "## Dog", "### Sizes", "### Frequencies",
                    "### Secret references"):
        assert f"\n{heading}\n" in text
    assert "### Addresses" not in text  # only the conventions the models use
    assert "Where: `leaf`, `leaves.<name>`." in text
    assert "Where: `pets.<name>` (when `kind: cat`)." in text
    assert "| `env` | Name of an environment variable holding the secret. |" in text
    assert text.index("## Leaf") < text.index("## Cat")  # declaration order


def test_output_is_deterministic() -> None:
    assert _render() == _render()


def test_a_docstring_entry_for_a_field_that_is_gone_is_an_error() -> None:
    class Renamed(BaseModel):
        """A model whose field was renamed.

        Attributes:
            old_name: Describes the field by its old name.
        """

        new_name: int = 1

    with pytest.raises(gendocs.DocError, match="old_name"):
        gendocs.render_model(Renamed, "t", "i")
