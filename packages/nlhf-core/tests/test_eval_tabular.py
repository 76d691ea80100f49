"""Exact tabular win-rate matrices, per-policy metrics and `nlhf eval` (docs/evaluation.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.evaluation.tabular import (
    TabularPolicy,
    exact_winrates,
    load_policy,
    sampled_tabular_matrix,
    tabular_winrate_matrix,
)
from nlhf.spec.load import load_spec_text
from nlhf.tabular.games import random_game, rps
from nlhf.testing.tolerances import assert_close

RPS = rps().matrix


def _double_loop(P: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """P(b ≻ a) = Σ_{y,y'} b(y') a(y) P[y', y], summed term by term."""
    return sum(b[j] * a[i] * P[j, i] for i in range(len(a)) for j in range(len(b)))


def test_pure_strategies_in_rock_paper_scissors() -> None:
    rock, paper, scissors = np.eye(3)
    m = exact_winrates(RPS, [rock, paper, scissors])
    # column beats row: paper beats rock, scissors beats paper, rock beats scissors
    assert m[0, 1] == 1.0 and m[1, 2] == 1.0 and m[2, 0] == 1.0
    assert m[1, 0] == 0.0 and np.all(np.diag(m) == 0.5)


def test_exact_matrix_matches_double_loop_and_is_exactly_antisymmetric() -> None:
    rng = np.random.default_rng(0)
    P = random_game(6, seed=4).matrix
    pols = [rng.dirichlet(np.ones(6)) for _ in range(5)]
    m = exact_winrates(P, pols)
    for i in range(5):
        for j in range(5):
            assert_close(m[i, j], _double_loop(P, pols[i], pols[j]), "float64")
    assert_close(m + m.T, np.ones_like(m), "float64", "M + Mᵀ")


def test_per_policy_exploitability_and_gap() -> None:
    mu = np.array([0.5, 0.3, 0.2])
    pi = np.array([0.6, 0.3, 0.1])
    result = tabular_winrate_matrix(
        RPS, mu, [TabularPolicy("p", pi, tau=0.1), TabularPolicy("u", np.ones(3) / 3)]
    )
    # (Pπ)_y = P(y ≻ π): exploitability = max_y (Pπ)_y − ½, gap from its formula
    # (docs/architecture.md §5)
    u = RPS @ pi
    assert result.per_policy["p"]["exploitability"] == pytest.approx(u.max() - 0.5)
    gap = (
        2 * 0.1 * np.log(np.sum(mu * np.exp(u / 0.1))) + 2 * 0.1 * np.sum(pi * np.log(pi / mu)) - 1
    )
    assert_close(result.per_policy["p"]["duality_gap"], gap, "float64")
    assert_close(result.per_policy["u"]["exploitability"], 0.0, "float64")
    assert result.method[0][1] == "exact" and result.n[0, 1] == 0


def test_sampled_estimate_is_antisymmetric_up_to_sampling_error() -> None:
    rng = np.random.default_rng(1)
    P = random_game(5, seed=2).matrix
    pols = [rng.dirichlet(np.ones(5)) for _ in range(4)]
    n = 4000
    est = sampled_tabular_matrix(P, pols, list("abcd"), comparisons=n, seed=5, symmetric=False)
    exact = exact_winrates(P, pols)
    assert est.method[0][1] == "clopper_pearson" and est.n[0, 1] == n
    # each cell is a mean of n Bernoullis: |M_ij + M_ji − 1| has sd ≤ sqrt(2·0.25/n)
    assert est.antisymmetry_error() < 4 * np.sqrt(0.5 / n)
    assert est.antisymmetry_error() > 0  # independent samples: not exact
    covered = (est.low <= exact + 1e-12) & (exact - 1e-12 <= est.high)
    assert covered.mean() >= 0.8
    assert np.max(np.abs(est.mean - exact)) < 5 * np.sqrt(0.25 / n)


def _train(tmp_path: Path, name: str, algo: str) -> Path:
    from nlhf.tabular.runner import train_spec

    spec = load_spec_text(
        f"""
spec_version: 1
task: nash
preference: {{name: tabular, game: rps}}
reference: {{probs: [0.5, 0.3, 0.2]}}
algorithm: {algo}
output: {{dir: {tmp_path / name}}}
"""
    )
    train_spec(spec, tmp_path / name, progress=False)
    return tmp_path / name


def test_nlhf_eval_tabular_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from nlhf.cli import get_app
    from typer.testing import CliRunner

    md = _train(tmp_path, "md", "{name: nash_md, tau: 0.1, steps: 200}")
    sp = _train(tmp_path, "sp", "{name: self_play, tau: 0.0, eta: 0.1, steps: 300}")
    spec_path = tmp_path / "eval.yaml"
    spec_path.write_text(
        f"""
spec_version: 1
task: evaluate
preference: {{name: tabular, game: rps}}
reference: {{probs: [0.5, 0.3, 0.2]}}
eval: {{policies: [{md}, {sp}, reference, "ML=maximal_lottery"]}}
output: {{dir: {tmp_path / "ev"}}}
"""
    )
    result = CliRunner().invoke(get_app(plugins=False), ["eval", str(spec_path)])
    assert result.exit_code == 0, result.output
    assert "ML" in result.output and "md" in result.output
    data = json.loads((tmp_path / "ev" / "winrate.json").read_text())
    assert data["policies"] == ["md", "sp", "reference", "ML"]
    pis = [np.array(json.loads((d / "summary.json").read_text())["policy"]) for d in (md, sp)]
    pis += [np.array([0.5, 0.3, 0.2]), np.ones(3) / 3]
    M = np.array(data["matrix"])
    for i in range(4):
        for j in range(4):
            assert_close(M[i, j], _double_loop(RPS, pis[i], pis[j]), "float64")
    assert_close(M + M.T, np.ones_like(M), "float64", "M + Mᵀ")
    summ = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summ["per_policy"]["md"]["exploitability"] == pytest.approx((RPS @ pis[0]).max() - 0.5)
    assert summ["per_policy"]["md"]["tau"] == 0.1
    assert (tmp_path / "ev" / "plots" / "winrate.png").stat().st_size > 5000
    assert (tmp_path / "ev" / "plots" / "simplex.svg").is_file()


def test_bad_policies_are_clear_errors(tmp_path: Path) -> None:
    mu = np.ones(3) / 3
    with pytest.raises(InputError, match="built-in"):
        load_policy("no/such/run", RPS, mu)
    with pytest.raises(InputError, match="TAU > 0"):
        load_policy("regularized_nash:-1", RPS, mu)
    (tmp_path / "r").mkdir()
    with pytest.raises(InputError, match=r"no summary\.json"):
        load_policy(str(tmp_path / "r"), RPS, mu)
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"game": "dice", "policy": [1, 0, 0]}))
    with pytest.raises(InputError, match="game 'dice'"):
        load_policy(str(tmp_path / "r"), RPS, mu, game="rps")
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"policy": [0.5, 0.5]}))
    with pytest.raises(InputError, match="2 entries"):
        load_policy(str(tmp_path / "r"), RPS, mu)
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"task": "nash", "final": {}}))
    with pytest.raises(InputError, match="no tabular `policy`"):
        load_policy(str(tmp_path / "r"), RPS, mu)


LAZY = """
import sys
from typer.testing import CliRunner
from nlhf.cli import get_app
result = CliRunner().invoke(get_app(plugins=False), {args!r})
assert result.exit_code == 0, result.output
print(sorted(m for m in {mods!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    ("args", "mods"),
    [
        (["--help"], ("matplotlib", "torch", "jax")),
        (["eval", "--help"], ("matplotlib", "torch", "jax")),
        (["eval", "SPEC"], ("torch", "jax", "transformers")),
    ],
)
def test_eval_commands_import_lazily(
    args: list[str], mods: tuple[str, ...], tmp_path: Path
) -> None:
    import subprocess
    import sys

    spec = tmp_path / "e.yaml"
    spec.write_text(
        "task: evaluate\npreference: {name: tabular, game: bt3}\n"
        f"eval: {{policies: [reference, maximal_lottery]}}\noutput: {{dir: {tmp_path / 'o'}}}\n"
    )
    args = [str(spec) if a == "SPEC" else a for a in args]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-c", LAZY.format(args=args, mods=mods)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
