"""The tabular-family benchmark (benchmarks/tabular_family.py, docs/algorithms.md
"Benchmark"): its smoke mode writes well-formed results whose numbers match the library
recomputed independently (nothing about time is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nlhf.tabular.dynamics import ALGORITHMS, run
from nlhf.tabular.games import dice, population
from nlhf.tabular.metrics import duality_gap, exploitability
from nlhf.testing.tolerances import assert_close, tolerance

ROOT = Path(__file__).resolve().parents[1]
CURVE_DIGITS = 5
"""The curves in the JSON keep 5 significant digits: a relative half-unit of 5e-5."""


def assert_curve(recorded, expected, what: str) -> None:
    """Recorded curve values equal ``expected`` up to the JSON's rounding (plus float64)."""
    f64 = tolerance("float64", "model")
    rtol = 0.5 * 10.0 ** (1 - CURVE_DIGITS) + f64.rtol
    np.testing.assert_allclose(recorded, expected, rtol=rtol, atol=f64.atol, err_msg=what)


def _module():
    """benchmarks/tabular_family.py as a module (benchmarks/ is not a package)."""
    if "tabular_family" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "tabular_family", ROOT / "benchmarks" / "tabular_family.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["tabular_family"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["tabular_family"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tf") / "smoke.json"
    _module().main(["--smoke", "--no-figures", "--out", str(out)])
    return json.loads(out.read_text())


def test_first_stable_below() -> None:
    f = _module().first_stable_below
    assert f(np.array([1.0, 1e-9, 1.0, 1e-9, 1e-10]), 1e-8) == 3  # the dip at 1 does not count
    assert f(np.array([1e-9, 1e-9]), 1e-8) == 0
    assert f(np.array([1.0, 1e-9, 1.0]), 1e-8) is None
    assert f(np.array([1.0, np.nan]), 1e-8) is None


def test_smoke_results_are_well_formed(smoke: dict) -> None:
    assert smoke["smoke"] is True and smoke["target_gap"] == 1e-8
    assert set(smoke["games"]) == {"dice", "rps", "population", "random-10"}
    for name, g in smoke["games"].items():
        assert g["oracles"]["maximal_lottery"]["exploitability"] <= 1e-12, name
        for tau in (t for t in g["taus"] if t > 0):
            oracle = g["oracles"]["regularized_nash"][f"{tau:g}"]
            assert oracle["duality_gap"] <= 1e-12
            assert oracle["l1_to_lottery"] > 0  # τ > 0 moves π*_τ off the lottery
            for algorithm in ALGORITHMS:
                r = g["runs"][f"{algorithm}@{tau:g}"]
                c = r["curve"]
                assert c["step"][0] == 0 and c["step"][-1] == r["steps"]
                assert len(c["duality_gap"]) == len(c["step"]) == len(c["wall_seconds"])
                assert np.all(np.diff(c["wall_seconds"]) >= 0)
                hit = r["iterations_to_gap"]
                if hit is not None:  # stays below the target from there on
                    after = np.array(c["duality_gap"])[np.array(c["step"]) >= hit]
                    assert np.all(after <= 1e-8), (name, algorithm, tau)


def test_smoke_numbers_match_an_independent_recomputation(smoke: dict) -> None:
    """Recorded gaps and exploitabilities equal :mod:`nlhf.tabular.metrics` on iterates
    recomputed with :func:`nlhf.tabular.dynamics.run`."""
    P, mu = population().matrix, np.array([0.2, 0.5, 0.3])
    for algorithm in ("egpo", "nash_md", "sppo"):
        r = smoke["games"]["population"]["runs"][f"{algorithm}@0.1"]
        tau_run = 0.0 if algorithm == "sppo" else 0.1
        traj = run(P, mu, algorithm=algorithm, tau=tau_run, steps=r["steps"])
        steps = np.array(r["curve"]["step"])
        gaps = [duality_gap(P, mu, traj.policies[t], 0.1) for t in steps]
        expl = [exploitability(P, traj.policies[t]) for t in steps]
        assert_curve(r["curve"]["duality_gap"], gaps, algorithm)
        assert_curve(r["curve"]["exploitability"], expl, algorithm)
        final = traj.policies[-1]
        assert_close(r["final"]["duality_gap"], duality_gap(P, mu, final, 0.1), "float64")
        if algorithm == "sppo":  # the average iterate (1/t) Σ_{s<t} π_s
            t = int(steps[-1])
            avg = traj.policies[:t].mean(axis=0)
            assert_close(r["final"]["average_duality_gap"], duality_gap(P, mu, avg, 0.1), "float64")


def test_smoke_tau_zero_panel(smoke: dict) -> None:
    """τ = 0 on dice: plain self-play moves away from the maximal lottery at every step
    (KL(π*‖π_t) is non-decreasing for multiplicative weights in self-play when π* has full
    support: its increment is log E_π exp(η Pπ) − η/2 ≥ 0 by Jensen, since ⟨π, Pπ⟩ = ½ and
    Pπ* = ½), while extragradient converges in the last iterate."""
    runs = smoke["games"]["dice"]["runs"]
    sp = runs["self_play@0"]
    first, last, _ = sp["kl_to_lottery_first_last_max"]
    assert sp["kl_to_lottery_nondecreasing"] and last > first
    assert sp["final"]["exploitability"] > 1e-2
    assert runs["egpo@0"]["final"]["exploitability"] <= 1e-8
    # the recorded curve is the library's self-play run (independent recomputation)
    P, mu = dice().matrix, np.array([0.6, 0.3, 0.1])
    traj = run(P, mu, algorithm="self_play", tau=0.0, steps=sp["steps"], record_every=sp["steps"])
    assert_close(sp["final"]["exploitability"], exploitability(P, traj.final), "float64")


@pytest.mark.slow  # the runner's child process and the figures (~15 s)
def test_runner_workload_tabular_family_smoke(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--workload", "tabular-family"]
    cmd += ["--smoke", "--out-dir", str(tmp_path), "--assets-dir", str(tmp_path / "assets")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "tabular-family-smoke.json").read_text())
    assert set(result["games"]) == {"dice", "rps", "population", "random-10"}
    figures = tmp_path / "figures"
    tool = [sys.executable, str(ROOT / "benchmarks" / "tabular_family.py"), "--replot"]
    tool += ["--out", str(tmp_path / "tabular-family-smoke.json"), "--figures-dir", str(figures)]
    subprocess.run(tool, check=True, capture_output=True, cwd=ROOT, timeout=600)
    names = sorted(p.name for p in figures.glob("*.png"))
    assert names == [f"tabular-{g}.png" for g in ("dice", "population", "random-10", "rps", "tau0")]
    assert all((figures / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
