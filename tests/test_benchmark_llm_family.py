"""The LLM-family benchmark (benchmarks/llm_family.py, docs/algorithms.md "LLM forms on the
quickstart population"): ``benchmarks/run.py --workload llm-family --smoke`` writes
well-formed results whose distances match the run's own outputs, recomputed independently
(nothing about time is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nlhf.testing.tolerances import assert_close

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("nash_md_pg", "inpo")
POPULATION = [[0.5, 0.7, 0.45], [0.3, 0.5, 0.75], [0.55, 0.25, 0.5]]
"""P(y_i ≻ y_j) of the quickstart's annotators (45% a>b>c, 30% b>c>a, 25% c>a>b),
counted by hand: e.g. P(apple ≻ banana) = 0.45 + 0.25 = 0.7."""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("llm-family")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--workload", "llm-family"]
    cmd += ["--smoke", "--out-dir", str(tmp / "results"), "--assets-dir", str(tmp / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / "results" / "llm-family-smoke.json").read_text())


@pytest.mark.slow
def test_smoke_results_shape(smoke: dict) -> None:
    assert smoke["workload"] == "llm-family-smoke"
    assert smoke["failures"] == []
    assert list(smoke["results"]) == list(SMOKE)
    assert smoke["budget"]["steps"] == 2
    assert smoke["budget"]["tau"] == 0.05
    assert smoke["answers"] == ["apple", "banana", "cherry"]
    np.testing.assert_array_equal(smoke["preference_matrix"], POPULATION)
    for name, row in smoke["results"].items():
        assert row["algorithm"]["name"] == name
        for key in ("wall_seconds", "cpu_seconds", "train_wall_seconds"):
            assert row[key] > 0, (name, key)
        assert set(row["policy"]) == {"apple", "banana", "cherry"}
        assert sum(row["policy"].values()) == pytest.approx(1.0, abs=2e-4)  # 4-digit rounding
        for key in ("tv_policy_to_nash", "summary_tv_policy_to_target"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert row["kl_answers_to_reference"] >= 0.0
        run = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert run["steps"] == 2 and run["algorithm"] == name
        assert row["summary_tv_policy_to_target"] == run["oracle"]["tv_policy_to_nash"]
    assert 0.0 <= smoke["reference"]["tv_to_nash"] <= 1.0


@pytest.mark.slow
def test_smoke_distances_match_the_run(smoke: dict) -> None:
    """The benchmark's TVs (the checkpoint through transformers in float64) equal the
    quickstart oracle's ``summary`` hook (the jax backend's float32 probe) of each run, and
    its π*_τ solves π = softmax(log μ + Pπ/τ) with the hand-counted P."""
    for name, row in smoke["results"].items():
        run = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        oracle = run["oracle"]
        assert oracle["tau"] == smoke["budget"]["tau"]
        assert_close(
            row["tv_policy_to_nash"], oracle["tv_policy_to_nash"], "float32", name, scope="model"
        )
        assert_close(
            smoke["reference"]["tv_to_nash"],
            oracle["tv_reference_to_nash"],
            "float32",
            f"{name}: reference",
            scope="model",
        )
        # the JSON keeps 4 digits per probability
        np.testing.assert_allclose(
            list(row["policy"].values()), list(oracle["policy"].values()), atol=2e-4
        )
    mu = np.array(list(smoke["reference"]["policy"].values()))
    ne = np.array(list(smoke["regularized_nash"].values()))
    tau = smoke["budget"]["tau"]
    logits = np.log(mu) + np.array(POPULATION) @ ne / tau
    fixed = np.exp(logits - logits.max())
    # the prompts' μ differ by < 1e-3 and the table keeps 4 digits: a loose residual
    np.testing.assert_allclose(fixed / fixed.sum(), ne, atol=5e-3)
