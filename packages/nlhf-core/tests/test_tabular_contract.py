"""The tabular contract of the last-iterate algorithms (docs/algorithms.md): with
``eta: auto``, on any random game of ≤ 20 responses and τ ≥ 0.05, KL(π*_τ‖π_N) ≤ 1e-6
within N = 20,000 iterations, against the Newton solver's π*_τ (not the dynamics); the
summary keys every tabular algorithm writes; and two identities the benchmark relies on."""

from __future__ import annotations

import numpy as np
import pytest
from nlhf.spec.models import RunSpec
from nlhf.tabular import runner
from nlhf.tabular.dynamics import ALGORITHMS, run
from nlhf.tabular.games import dice, random_game, rps
from nlhf.tabular.metrics import kl_divergence
from nlhf.tabular.solvers import regularized_nash
from nlhf.testing.tolerances import assert_close

LAST_ITERATE = ("egpo", "mpo", "onpo", "inpo")
CONTRACT_STEPS = 20_000
CONTRACT_KL = 1e-6


def contract_games(count: int, seed: int) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """``count`` seeded (game seed, P, μ, τ): every fourth game has the largest size, 20;
    μ is uniform, Dirichlet(1) or Dirichlet(0.3) (entries down to ~1e-4); τ is the
    contract's smallest, 0.05 (the slowest rate of every algorithm: each linear rate
    improves with τ), on every other game, else log-uniform in [0.05, 1]."""
    rng = np.random.default_rng(seed)
    games = []
    for k in range(count):
        n = 20 if k % 4 == 0 else int(rng.integers(2, 21))
        game_seed = int(rng.integers(2**31))
        P = random_game(n, seed=game_seed).matrix
        alpha = (None, 1.0, 0.3)[k % 3]
        mu = np.full(n, 1.0 / n) if alpha is None else rng.dirichlet(np.full(n, alpha))
        mu = np.maximum(mu, 1e-12)
        mu /= mu.sum()
        tau = 0.05 if k % 2 == 0 else float(np.exp(rng.uniform(np.log(0.05), 0.0)))
        games.append((game_seed, P, mu, tau))
    return games


@pytest.mark.slow  # 30 games × 4 algorithms × 20,000 steps: about a CPU-minute
@pytest.mark.parametrize("algorithm", LAST_ITERATE)
def test_tabular_contract_on_many_seeded_random_games(algorithm: str) -> None:
    """KL(π*_τ‖π_N) ≤ 1e-6 at N = 20,000 on 30 seeded random games (sizes 2–20, a
    quarter of them 20; τ ∈ [0.05, 1], half at 0.05; uniform and Dirichlet references)."""
    failures = []
    for game_seed, P, mu, tau in contract_games(30, seed=20_000):
        star = regularized_nash(P, mu, tau, progress=None)
        assert kl_divergence(star, mu) > 1e-4  # μ is not already the solution
        traj = run(P, mu, algorithm=algorithm, tau=tau, steps=CONTRACT_STEPS, record_every=2000)
        kl = kl_divergence(star, traj.final)
        if not kl <= CONTRACT_KL:
            failures.append((game_seed, P.shape[0], round(tau, 4), kl))
    assert not failures, f"{algorithm}: (game seed, n, tau, KL) above {CONTRACT_KL}: {failures}"


def test_contract_games_cover_the_contract() -> None:
    """The sampled games span the contract's range (sizes up to 20, τ down to 0.05)."""
    games = contract_games(30, seed=20_000)
    sizes = [P.shape[0] for _, P, _, _ in games]
    taus = [tau for *_, tau in games]
    assert max(sizes) == 20 and min(sizes) <= 5
    assert min(taus) == 0.05 and sum(t == 0.05 for t in taus) == 15 and max(taus) <= 1.0
    assert min(float(mu.min()) for _, _, mu, _ in games) < 1e-3


def _spec(algorithm: dict) -> RunSpec:
    return RunSpec.model_validate(
        {
            "spec_version": 1,
            "task": "nash",
            "preference": {"name": "tabular", "game": "dice"},
            "reference": {"probs": [0.6, 0.3, 0.1]},
            "algorithm": algorithm,
        }
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_tabular_summary_keeps_the_tabular_keys(algorithm: str, tmp_path) -> None:
    """``summary.json`` of every tabular algorithm has policy, duality_gap,
    exploitability, kl_to_reference and steps, consistent with its policy."""
    params = {"name": algorithm, "steps": 50}
    if algorithm != "sppo":
        params["tau"] = 0.1
    summary = runner.train_spec(_spec(params), tmp_path, progress=False)
    for key in ("policy", "duality_gap", "exploitability", "kl_to_reference", "steps"):
        assert key in summary, key
    policy = np.array(summary["policy"])
    assert_close(policy.sum(), 1.0, "float64", "policy sums to 1")
    assert_close(
        summary["kl_to_reference"],
        kl_divergence(policy, np.array([0.6, 0.3, 0.1])),
        "float64",
        "kl_to_reference",
    )
    assert summary["steps"] == (1 if algorithm == "best_response" else 50)


@pytest.mark.parametrize("game", [dice, rps])
def test_at_tau_zero_self_play_omd_and_sppo_are_one_run(game) -> None:
    """At τ = 0 with ``eta: auto`` all three take the Hedge step √(8 ln n / T) on the same
    update π_{t+1} ∝ π_t exp(η Pπ_t): bit-identical iterates (the benchmark's τ = 0
    panel runs them once)."""
    P, mu = game().matrix, np.array([0.5, 0.3, 0.2])
    runs = [run(P, mu, algorithm=a, tau=0.0, steps=300).log_policies for a in ("omd", "sppo")]
    sp = run(P, mu, algorithm="self_play", tau=0.0, steps=300).log_policies
    np.testing.assert_array_equal(runs[0], sp)
    np.testing.assert_array_equal(runs[1], sp)


def test_inpo_and_mpo_with_auto_steps_are_the_same_map() -> None:
    """INPO's auto step τ/(τ² + L²) makes its update MMD's with η′ = η/(1 − ητ) = τ/L²,
    MPO's auto step, so with the magnet μ the two trajectories coincide (to rounding)."""
    P = random_game(12, seed=3).matrix
    mu = np.random.default_rng(3).dirichlet(np.ones(12))
    for tau in (0.05, 0.3):
        a = run(P, mu, algorithm="inpo", tau=tau, steps=500).policies
        b = run(P, mu, algorithm="mpo", tau=tau, steps=500).policies
        assert np.max(np.abs(a[-1] - mu)) > 1e-2  # the runs moved
        assert_close(a, b, "float64", f"inpo vs mpo iterates, tau={tau}", scope="model")
