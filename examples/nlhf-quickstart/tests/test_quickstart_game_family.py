"""``nlhf run specs/quickstart-{sppo,inpo,onpo,mpo,egpo}.yaml`` on torch and jax: each LLM form
of the game family trains the quickstart task through the CLI (2 steps, 8 prompts) and
writes a summary whose oracle section compares the policy with the population game's
equilibrium (docs/algorithms.md, "LLM forms")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from nlhf import cli
from typer.testing import CliRunner

SPECS = Path(__file__).resolve().parents[3] / "specs"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("name", ["sppo", "inpo", "onpo", "mpo", "egpo"])
def test_quickstart_runs_each_game_family_algorithm(
    quickstart_overrides: list[str], tmp_path: Path, name: str, backend: str
) -> None:
    out = tmp_path / f"{name}-{backend}"
    sets = [*quickstart_overrides, "training.steps=2", "training.batch_size=8"]
    args = ["run", str(SPECS / f"quickstart-{name}.yaml"), "--backend", backend]
    args += [arg for item in [*sets, f"output.dir={out}"] for arg in ("--set", item)]
    result = CliRunner().invoke(cli.get_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == name and summary["backend"] == backend
    assert summary["steps"] == 2 and math.isfinite(summary["final"]["loss"])
    assert 0.0 <= summary["tv_policy_to_nash"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
