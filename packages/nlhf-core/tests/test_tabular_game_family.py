"""The game-theoretic family on exact games: EGPO, MPO, ONPO, INPO and SPPO against
probability-space second implementations, the regularised equilibrium π*_τ of the Newton
solver, the maximal lottery of the LP (τ = 0), and the published rates."""

from __future__ import annotations

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.spec.models import RunSpec
from nlhf.tabular import runner
from nlhf.tabular.dynamics import auto_constant_eta, game_lipschitz, run, schedules
from nlhf.tabular.games import dice, population, random_game, rps
from nlhf.tabular.metrics import duality_gap, exploitability, kl_divergence
from nlhf.tabular.solvers import maximal_lottery, regularized_nash
from nlhf.testing.tolerances import assert_close, tolerance

CASES = {
    "dice": (dice().matrix, np.array([0.6, 0.3, 0.1])),
    "rps": (rps().matrix, np.array([0.5, 0.3, 0.2])),
    "population": (population().matrix, np.array([0.2, 0.5, 0.3])),
    "random6": (random_game(6, seed=7).matrix, np.random.default_rng(7).dirichlet(np.ones(6))),
}
LAST_ITERATE = ("egpo", "mpo", "onpo", "inpo")
# KL and the duality gap are computed from float64 probabilities: their rounding floor
FLOOR = 1e3 * tolerance("float64").atol


def _normalized(p: np.ndarray) -> np.ndarray:
    return p / p.sum()


def _prob_space(algorithm: str, P, mu, T: int, eta: float, tau: float, magnet_every=None):
    """π_1 … π_T written directly on probabilities (the papers' updates)."""
    pi, hat, magnet, out = mu.copy(), mu.copy(), mu.copy(), []
    for t in range(T):
        if algorithm == "egpo":
            half = _normalized(pi ** (1 - eta * tau) * mu ** (eta * tau) * np.exp(eta * P @ pi))
            pi = _normalized(pi ** (1 - eta * tau) * mu ** (eta * tau) * np.exp(eta * P @ half))
        elif algorithm == "mpo":
            if magnet_every and t > 0 and t % magnet_every == 0:
                magnet = pi
            pi = _normalized(
                (pi * magnet ** (eta * tau) * np.exp(eta * P @ pi)) ** (1 / (1 + eta * tau))
            )
        elif algorithm == "onpo":
            pi = _normalized(hat ** (1 - eta * tau) * mu ** (eta * tau) * np.exp(eta * P @ pi))
            hat = _normalized(hat ** (1 - eta * tau) * mu ** (eta * tau) * np.exp(eta * P @ pi))
        else:  # inpo; sppo with tau = 0
            pi = _normalized(pi ** (1 - eta * tau) * mu ** (eta * tau) * np.exp(eta * P @ pi))
        out.append(pi)
    return np.array(out)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(
    ("algorithm", "kwargs"),
    [
        ("egpo", {"tau": 0.2}),
        ("egpo", {"tau": 0.0}),
        ("mpo", {"tau": 0.2}),
        ("mpo", {"tau": 0.2, "magnet_every": 7}),
        ("onpo", {"tau": 0.2}),
        ("inpo", {"tau": 0.2}),
        ("sppo", {"tau": 0.0}),
    ],
)
def test_steps_match_probability_space_implementation(name, algorithm, kwargs) -> None:
    P, mu = CASES[name]
    T = 40
    traj = run(P, mu, algorithm=algorithm, eta="auto", steps=T, **kwargs)
    eta = auto_constant_eta(algorithm, kwargs["tau"], P, T)
    want = _prob_space(algorithm, P, mu, T, eta, kwargs["tau"], kwargs.get("magnet_every"))
    assert np.max(np.abs(want[-1] - mu)) > 1e-3  # the run moved
    assert_close(traj.policies[1:], want, "float64", f"{algorithm} π_1…π_T")


def test_auto_steps_are_the_published_conditions() -> None:
    P, _ = CASES["rps"]
    L = game_lipschitz(P)
    assert L == 0.5  # rps: P ∈ {0, ½, 1}
    tau, T = 0.1, 100
    assert auto_constant_eta("egpo", tau, P, T) == 1 / (tau + 2 * L)
    assert auto_constant_eta("mpo", tau, P, T) == tau / L**2
    assert auto_constant_eta("onpo", tau, P, T) == min(1 / (2 * tau + 2 * L), 1 / (4 * L))
    assert auto_constant_eta("inpo", tau, P, T) == tau / (tau**2 + L**2)
    assert auto_constant_eta("sppo", 0.0, P, T) == np.sqrt(8 * np.log(3) / T)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("tau", [0.05, 0.2])
@pytest.mark.parametrize("algorithm", LAST_ITERATE)
def test_last_iterate_reaches_the_regularised_equilibrium(name, tau, algorithm) -> None:
    """KL(π*_τ‖π_N) and the duality gap ≤ 1e-6 after N = 1500 steps with ``eta: auto``,
    π*_τ from the Newton solver (not the dynamics)."""
    P, mu = CASES[name]
    star = regularized_nash(P, mu, tau, progress=None)
    traj = run(P, mu, algorithm=algorithm, tau=tau, steps=1500, record_every=1500)
    assert kl_divergence(star, traj.final) <= 1e-6
    assert duality_gap(P, mu, traj.final, tau) <= 1e-6
    assert kl_divergence(star, mu) > 1e-3  # μ itself is far from π*_τ


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("algorithm", ["egpo", "mpo", "inpo"])
def test_published_linear_rates(name: str, algorithm: str) -> None:
    """EGPO (Cen et al.'s extragradient rate): KL(π*_τ‖π_t) ≤ (1−ητ)^t KL(π*_τ‖μ);
    MPO (MMD, η ≤ τ/L²) and INPO (= MMD with η' = η/(1−ητ)):
    KL(π*_τ‖π_t) ≤ (1+η'τ)^(−t) KL(π*_τ‖μ) — checked at every t above the float64 floor."""
    P, mu = CASES[name]
    tau, T = 0.1, 400
    star = regularized_nash(P, mu, tau, progress=None)
    eta = auto_constant_eta(algorithm, tau, P, T)
    traj = run(P, mu, algorithm=algorithm, tau=tau, steps=T)
    kl = np.array([kl_divergence(star, p) for p in traj.policies])
    t = np.arange(T + 1)
    if algorithm == "egpo":
        bound = (1 - eta * tau) ** t * kl[0]
    else:
        mmd_eta = eta if algorithm == "mpo" else eta / (1 - eta * tau)
        bound = (1 + mmd_eta * tau) ** (-t.astype(float)) * kl[0]
    checked = bound > FLOOR
    assert checked.sum() > 3  # dice (L small, η large) is at the floor within ~10 steps
    assert np.all(kl[checked] <= bound[checked] * (1 + 1e-9)), np.max(kl / bound)


@pytest.mark.parametrize("name", ["rps", "dice", "population"])
@pytest.mark.parametrize(
    ("algorithm", "kwargs"),
    [("egpo", {"tau": 0.0}), ("onpo", {"tau": 0.0}), ("mpo", {"tau": 0.1, "magnet_every": 20})],
)
def test_unregularised_last_iterate_reaches_the_maximal_lottery(name, algorithm, kwargs) -> None:
    """τ = 0 extragradient / optimistic steps, and MPO's refreshed magnet, converge in the
    last iterate to the LP's maximal lottery (the unique NE of these games)."""
    P, mu = CASES[name]
    traj = run(P, mu, algorithm=algorithm, steps=5000, record_every=5000, **kwargs)
    assert exploitability(P, traj.final) <= 1e-6
    assert np.max(np.abs(traj.final - maximal_lottery(P))) <= 1e-5
    assert exploitability(P, mu) > 1e-2


@pytest.mark.parametrize("name", ["rps", "dice", "population"])
def test_sppo_average_iterate_converges_while_its_last_iterate_cycles(name: str) -> None:
    """Plain multiplicative weights (SPPO's update) in self-play: regret/T =
    exploitability(π̄_T) ≤ √(ln n / (2T)) (Hedge with η = √(8 ln n / T)), while the last
    iterate stays exploitable; EGPO at τ = 0 does converge in the last iterate."""
    P, mu = CASES[name]
    T = 4000
    traj = run(P, mu, algorithm="sppo", tau=0.0, steps=T)
    average = traj.policies[:-1].mean(axis=0)
    assert exploitability(P, average) <= np.sqrt(np.log(len(mu)) / (2 * T))
    assert exploitability(P, traj.final) > 1e-2
    eg = run(P, mu, algorithm="egpo", tau=0.0, steps=T, record_every=T)
    assert exploitability(P, eg.final) < 1e-6


def _spec(algorithm: dict, game: str = "rps") -> RunSpec:
    return RunSpec.model_validate(
        {
            "spec_version": 1,
            "task": "nash",
            "preference": {"name": "tabular", "game": game},
            "reference": {"probs": [0.5, 0.3, 0.2]},
            "algorithm": algorithm,
        }
    )


def test_sppo_summary_reports_the_average_iterate(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "CHUNK_STEPS", 97)  # the running sum crosses chunks
    summary = runner.train_spec(
        _spec({"name": "sppo", "steps": 1000, "log_every": 10}), tmp_path, progress=False
    )
    P, mu = CASES["rps"]
    traj = run(P, mu, algorithm="sppo", tau=0.0, steps=1000)
    average = traj.policies[:-1].mean(axis=0)
    assert_close(summary["average_policy"], average, "float64", "π̄_T")
    assert_close(summary["policy"], traj.final, "float64", "π_T")
    assert summary["solution_kind"] == "maximal_lottery"
    assert_close(summary["average_exploitability"], exploitability(P, average), "float64")
    assert summary["average_exploitability"] < 0.2 * summary["exploitability"]
    for key in ("policy", "duality_gap", "exploitability", "kl_to_reference", "steps"):
        assert key in summary


def test_mpo_with_a_refreshed_magnet_is_measured_against_the_maximal_lottery(tmp_path) -> None:
    summary = runner.train_spec(
        _spec({"name": "mpo", "tau": 0.1, "magnet_every": 20, "steps": 3000}),
        tmp_path,
        progress=False,
    )
    assert summary["solution_kind"] == "maximal_lottery" and summary["tau_final"] == 0.0
    assert summary["magnet_every"] == 20
    assert summary["exploitability"] <= 1e-6


def test_report_trajectory_recomputes_a_refreshed_magnet_run(tmp_path) -> None:
    """``nlhf report`` recomputes tabular iterates from the resolved spec: with the magnet
    refreshes, it must end at the run's own π_T."""
    from nlhf.evaluation.tabular import run_trajectory

    spec = _spec({"name": "mpo", "tau": 0.2, "magnet_every": 7, "steps": 60})
    summary = runner.train_spec(spec, tmp_path, progress=False)
    traj = run_trajectory(tmp_path)
    assert traj is not None and traj["steps"][-1] == 60
    np.testing.assert_array_equal(traj["policies"][-1], summary["policy"])
    no_refresh = run(*CASES["rps"], algorithm="mpo", tau=0.2, steps=60)
    assert np.max(np.abs(no_refresh.final - traj["policies"][-1])) > 1e-3


def test_bad_parameters_are_input_errors() -> None:
    P, mu = CASES["rps"]
    with pytest.raises(InputError, match="magnet_every: applies to mpo only"):
        schedules(P, mu, algorithm="egpo", tau=0.1, steps=5, magnet_every=3)
    with pytest.raises(InputError, match=r"eta·tau .* > 1"):
        run(P, mu, algorithm="inpo", tau=0.5, eta=3.0, steps=5)
    with pytest.raises(InputError, match="mpo needs tau > 0"):
        run(P, mu, algorithm="mpo", tau=0.0, steps=5)
    with pytest.raises(ValueError, match="magnet_every"):
        _spec({"name": "egpo", "magnet_every": 3})  # not a field of egpo
    with pytest.raises(ValueError, match="tau"):
        _spec({"name": "inpo", "tau": 0.0})


@pytest.mark.slow
def test_tabular_contract_on_seeded_random_games() -> None:
    """The tabular contract: on random games of ≤ 20 responses with τ ≥ 0.05,
    KL(π*_τ‖π_N) ≤ 1e-6 within N = 20,000 steps of ``eta: auto``, for every last-iterate
    algorithm, against the Newton solver."""
    rng = np.random.default_rng(2026)
    for seed in range(12):
        n = int(rng.integers(2, 21))
        P = random_game(n, seed=seed).matrix
        mu = rng.dirichlet(np.ones(n))
        for tau in (0.05, 0.3):
            star = regularized_nash(P, mu, tau, progress=None)
            for algorithm in LAST_ITERATE:
                traj = run(P, mu, algorithm=algorithm, tau=tau, steps=20_000, record_every=20_000)
                assert kl_divergence(star, traj.final) <= 1e-6, (seed, n, tau, algorithm)
