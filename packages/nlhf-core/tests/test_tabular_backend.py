"""The ``numpy`` backend, ``solve_spec``/``build_game`` and the example tabular specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from nlhf.backends import numpy_plugin
from nlhf.backends.numpy_backend import NumpyBackend
from nlhf.errors import NLHFError, SpecError
from nlhf.spec import RunSpec
from nlhf.tabular import build_game, solve_spec
from nlhf.testing.tolerances import assert_close
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[3]
SPECS = sorted((ROOT / "specs").glob("tabular-*.yaml"))
DICE_SOLUTION = [0.643730, 0.228498, 0.127772]
SUMMARY_KEYS = {
    "policy",
    "duality_gap",
    "exploitability",
    "kl_to_reference",
    "steps",
    "algorithm",
    "tau",
    "eta",
    "solution",
    "kl_to_solution",
    "responses",
}
METRIC_KEYS = {"step", "duality_gap", "exploitability", "kl_to_reference", "kl_to_solution"}


def _spec(**over) -> RunSpec:
    data = {
        "spec_version": 1,
        "task": "nash",
        "preference": {"name": "tabular", "game": "dice"},
        "reference": {"probs": [0.6, 0.3, 0.1]},
        "algorithm": {"name": "nash_md", "tau": 0.1, "steps": 2000},
    }
    data.update(over)
    return RunSpec.model_validate(data)


def test_tabular_backend_train_writes_the_contract_files(tmp_path: Path) -> None:
    summary = NumpyBackend().train(_spec(), tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk.keys() >= SUMMARY_KEYS and on_disk["policy"] == summary["policy"]
    assert on_disk["steps"] == 2000 and on_disk["responses"][0].startswith("A")
    # the oracle π*_0.1 for the dice with μ = (.6, .3, .1), printed to 6 decimals (± ½ unit)
    np.testing.assert_allclose(on_disk["solution"], DICE_SOLUTION, rtol=0, atol=0.5e-6)
    # a convergence claim of the 2000-step run, not a rounding tolerance
    np.testing.assert_allclose(on_disk["policy"], on_disk["solution"], rtol=0, atol=1e-4)
    assert 0 <= on_disk["duality_gap"] < 1e-8 and on_disk["kl_to_solution"] < 8 / (0.01 * 2001)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r.keys() >= METRIC_KEYS for r in records)
    steps = [r["step"] for r in records]
    assert steps[0] == 0 and steps[-1] == 2000 and steps == sorted(steps) and len(steps) == 101
    assert_close(records[0]["kl_to_reference"], 0.0, "float64", "KL(π_0‖μ)")  # π_0 = μ
    resolved = yaml.safe_load((tmp_path / "spec.resolved.yaml").read_text())
    assert resolved["algorithm"]["name"] == "nash_md" and resolved["seed"] == 0


def test_tabular_backend_rejects_llm_specs(tmp_path: Path) -> None:
    spec = RunSpec.model_validate(
        {
            "task": "nash",
            "policy": {"model": "tiny"},
            "data": {"path": "prompts.jsonl"},
            "preference": {"name": "pairwise_model", "path": "pm"},
            "algorithm": {"name": "nash_md_pg"},
        }
    )
    refused = r"task: 'nash' with an LLM policy is not supported by backend 'numpy' \(LLM tasks"
    with pytest.raises(SpecError, match=refused):
        NumpyBackend().train(spec, tmp_path)
    with pytest.raises(NLHFError, match="not tabular"):
        solve_spec(spec)


def test_tabular_plugin_registers_numpy() -> None:
    calls = []
    numpy_plugin.nlhf_register_backends(
        lambda name, factory, **kw: calls.append((name, factory, kw))
    )
    ((name, factory, kw),) = calls
    assert name == "numpy" and kw["requires"] == () and kw["description"]
    backend = factory()
    assert isinstance(backend, NumpyBackend) and backend.name == "numpy"


def test_tabular_solve_spec_reports_both_equilibria() -> None:
    out = solve_spec(_spec())
    np.testing.assert_allclose(
        out["regularized_nash"]["policy"], DICE_SOLUTION, rtol=0, atol=0.5e-6
    )
    assert_close(out["regularized_nash"]["duality_gap"], 0.0, "float64", "duality gap")
    assert_close(out["maximal_lottery"]["policy"], [1 / 3] * 3, "float64")
    assert_close(out["maximal_lottery"]["exploitability"], 0.0, "float64", "exploitability")
    assert out["tau"] == 0.1 and len(out["responses"]) == 3
    # τ = 0: the regularised NE is the maximal lottery, (0.5, 0.1, 0.4) for the population
    zero = solve_spec(
        _spec(
            preference={"name": "tabular", "game": "population"},
            reference={},
            algorithm={"name": "self_play", "tau": 0.0},
        )
    )
    assert zero["tau"] == 0.0
    assert_close(zero["regularized_nash"]["policy"], [0.5, 0.1, 0.4], "float64")
    assert zero["regularized_nash"]["policy"] == zero["maximal_lottery"]["policy"]


def test_tabular_build_game() -> None:
    P, mu, labels = build_game(
        _spec(preference={"name": "tabular", "matrix": [[0.5, 0.7], [0.3, 0.5]]}, reference={})
    )
    np.testing.assert_array_equal(P, [[0.5, 0.7], [0.3, 0.5]])
    np.testing.assert_array_equal(mu, [0.5, 0.5])
    assert labels == ("y1", "y2")
    # random games default to the run's seed
    a, _, _ = build_game(
        _spec(seed=5, preference={"name": "tabular", "game": "random", "size": 4}, reference={})
    )
    b, _, _ = build_game(
        _spec(preference={"name": "tabular", "game": "random", "size": 4, "seed": 5}, reference={})
    )
    np.testing.assert_array_equal(a, b)
    # the schema refuses what build_game would (validate catches it before a run)
    with pytest.raises(ValidationError, match=r"reference.probs: has 3 entries .* 2 responses"):
        _spec(preference={"name": "tabular", "matrix": [[0.5, 0.7], [0.3, 0.5]]})
    with pytest.raises(
        ValidationError, match=r"matrix.0.1: matrix\[0\]\[1\] \+ matrix\[1\]\[0\] = 1.2"
    ):
        _spec(preference={"name": "tabular", "matrix": [[0.5, 0.9], [0.3, 0.5]]}, reference={})


def test_tabular_example_specs_exist() -> None:
    names = {p.stem for p in SPECS}
    assert {
        "tabular-dice",
        "tabular-rps",
        "tabular-bt3",
        "tabular-matrix",
        "tabular-population",
    } <= names


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if "random" in p.stem else p for p in SPECS],
    ids=[p.stem for p in SPECS],
)
def test_tabular_example_spec_validates_and_runs(path: Path, tmp_path: Path) -> None:
    spec = RunSpec.model_validate(yaml.safe_load(path.read_text()))
    assert spec.is_tabular
    summary = NumpyBackend().train(spec, tmp_path)
    assert summary.keys() >= SUMMARY_KEYS
    assert np.isclose(sum(summary["policy"]), 1.0) and summary["duality_gap"] >= -1e-12
    if spec.algorithm.name in ("nash_md", "omd"):  # these converge to π*_τ
        assert summary["duality_gap"] < 1e-8


def test_tabular_train_with_progress_bar_and_tau_zero(tmp_path: Path) -> None:
    from nlhf.tabular import train_spec

    spec = _spec(
        preference={"name": "tabular", "game": "rps"},
        reference={"probs": [0.5, 0.3, 0.2]},
        algorithm={"name": "self_play", "tau": 0.0, "eta": 1.0, "steps": 1500, "log_every": 500},
    )
    summary = train_spec(spec, tmp_path, progress=True)
    assert summary["solution_kind"] == "maximal_lottery"
    assert_close(summary["solution"], [1 / 3] * 3, "float64")
    # τ = 0: the gap is twice the exploitability, and self-play stays far from the NE
    assert_close(summary["duality_gap"], 2 * summary["exploitability"], "float64")
    assert summary["exploitability"] > 0.1
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [0, 500, 1000, 1500]
