"""``deploy.parallelism`` decides how many steps apply runs at once; --parallelism wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pacsinfra.cli import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("given", "flag", "shown"), [(None, None, 10), (3, None, 3), (3, "7", 7)])
def test_apply_runs_the_parallelism_the_blueprint_or_the_flag_says(
        tmp_path: Path, given: int | None, flag: str | None, shown: int) -> None:
    pytest.importorskip("libvirt")
    data = yaml.safe_load((REPO / "examples" / "kvm-quickstart.yaml").read_text())
    if given is not None:
        data["deploy"] = {"parallelism": given}
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(data))
    args = ["apply", str(bp), "--auto-approve", "--state", str(tmp_path / "s.json")]
    if flag:
        args += ["--parallelism", flag]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"parallelism {shown}." in result.output, result.output
