"""Tabular dynamics against the paper's bound, a probability-space second implementation,
direct numerical maximisation and the known cycling of unregularised self-play."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from nlhf.algorithms.schedules import Schedule
from nlhf.errors import InputError
from nlhf.tabular.dynamics import best_response, iterate, run
from nlhf.tabular.games import bt3, dice, population, random_game, rps
from nlhf.tabular.metrics import duality_gap, kl_divergence
from nlhf.tabular.solvers import regularized_nash
from nlhf.testing.tolerances import assert_close, tolerance
from scipy.optimize import minimize
from scipy.special import softmax

CASES = {
    "dice": (dice().matrix, np.array([0.6, 0.3, 0.1])),
    "rps": (rps().matrix, np.array([0.5, 0.3, 0.2])),
    "bt3": (bt3().matrix, np.full(3, 1 / 3)),
    "population": (population().matrix, np.array([0.2, 0.5, 0.3])),
    "random6": (random_game(6, seed=7).matrix, np.random.default_rng(7).dirichlet(np.ones(6))),
}


def _prob_space_nash_md(P, mu, pi, eta, tau):
    """Nash-MD step written directly on probabilities (paper §5)."""
    mix = pi ** (1 - eta * tau) * mu ** (eta * tau)
    mix /= mix.sum()
    nxt = mix * np.exp(eta * (P @ mix))
    return nxt / nxt.sum()


def _prob_space_omd(P, mu, pi, eta, tau):
    nxt = pi ** (1 - eta * tau) * mu ** (eta * tau) * np.exp(eta * (P @ pi))
    return nxt / nxt.sum()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(
    ("algorithm", "reference"), [("nash_md", _prob_space_nash_md), ("omd", _prob_space_omd)]
)
def test_tabular_steps_match_probability_space_implementation(name, algorithm, reference) -> None:
    P, mu = CASES[name]
    tau = 0.2
    traj = run(P, mu, algorithm=algorithm, tau=tau, eta="auto", steps=50)
    pi = mu.copy()
    for t in range(50):
        pi = reference(P, mu, pi, 2.0 / (tau * (t + 2)), tau)
        assert_close(traj.policies[t + 1], pi, "float64")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("tau", [1.0, 0.3, 0.1])
def test_tabular_nash_md_last_iterate_bound(name: str, tau: float) -> None:
    """Paper §5: with η_t = 2/(τ(t+2)), KL(π*_τ‖π_T) ≤ 8/(τ²(T+1)) for every T."""
    P, mu = CASES[name]
    star = regularized_nash(P, mu, tau)
    T = 1500
    traj = run(P, mu, algorithm="nash_md", tau=tau, eta="auto", steps=T)
    for t, log_pi in zip(traj.steps, traj.log_policies, strict=True):
        kl = kl_divergence(star, None, log_q=log_pi)
        assert kl <= 8.0 / (tau**2 * (t + 1)), (t, kl)
    assert kl_divergence(star, None, log_q=traj.log_policies[-1]) < 1e-3 * tau


@pytest.mark.parametrize("game", ["rps", "dice"])
def test_tabular_unregularised_self_play_does_not_converge_last_iterate(game: str) -> None:
    """Multiplicative weights with τ = 0 on a non-transitive game: KL(uniform‖π_t) grows
    (the last iterate spirals away from the maximal lottery, which is uniform)."""
    P, mu = CASES[game]
    uniform = np.full(3, 1 / 3)
    traj = run(P, mu, algorithm="self_play", tau=0.0, eta=1.0, steps=2000, record_every=100)
    kls = [kl_divergence(uniform, p) for p in traj.policies]
    assert all(b >= a - tolerance("float64").atol for a, b in itertools.pairwise(kls))
    assert kls[-1] > 2 * kls[0]
    assert min(kls) == kls[0] > 0.01  # never approaches the NE


def test_tabular_regularised_omd_with_constant_eta_converges_to_the_exact_solution() -> None:
    P, mu = CASES["dice"]
    tau = 0.1
    traj = run(P, mu, algorithm="omd", tau=tau, eta=1.0, steps=800)
    assert_close(traj.final, regularized_nash(P, mu, tau), "float64")
    assert_close(duality_gap(P, mu, traj.final, tau), 0.0, "float64", "duality gap")


@pytest.mark.parametrize("name", ["bt3", "dice", "random6"])
@pytest.mark.parametrize("tau", [1.0, 0.3, 0.05])
def test_tabular_best_response_matches_numerical_maximisation(name: str, tau: float) -> None:
    P, mu = CASES[name]
    n = len(mu)

    def negative(z: np.ndarray) -> float:
        pi = softmax(z)
        return -(pi @ P @ mu - tau * kl_divergence(pi, mu))

    best = min(
        (
            minimize(negative, start, method="BFGS", options={"gtol": 1e-10})
            for start in np.random.default_rng(0).normal(size=(4, n))
        ),
        key=lambda r: r.fun,
    )
    # not a dtype tolerance: the oracle's own accuracy. A numerical argmax is known only to
    # ~√ε_float64 ≈ 1.5e-8 (the objective is flat to second order there); 1.4e-7 seen.
    np.testing.assert_allclose(best_response(P, mu, tau), softmax(best.x), rtol=0, atol=1e-5)
    traj = run(P, mu, algorithm="best_response", tau=tau)
    assert list(traj.steps) == [0, 1]
    np.testing.assert_array_equal(traj.final, best_response(P, mu, tau))


def test_tabular_best_response_tau_zero_is_the_argmax() -> None:
    P, mu = CASES["bt3"]  # P μ = (0.311, 0.739, 0.449): y2 wins
    np.testing.assert_array_equal(best_response(P, mu, 0.0), [0.0, 1.0, 0.0])


def test_tabular_eta_tau_above_one_is_an_input_error() -> None:
    P, mu = CASES["dice"]
    with pytest.raises(InputError, match=r"eta·tau .* > 1"):
        run(P, mu, algorithm="nash_md", tau=0.5, eta=3.0, steps=5)
    with pytest.raises(InputError, match="not a tabular algorithm"):
        run(P, mu, algorithm="nash_md_pg", tau=0.5, steps=5)


def test_tabular_trajectory_recording_and_schedules() -> None:
    P, mu = CASES["population"]
    traj = run(P, mu, algorithm="nash_md", tau=0.5, steps=25, record_every=10)
    assert list(traj.steps) == [0, 10, 20, 25]
    assert_close(traj.policies[0], mu, "float64", "π_0 = μ")
    assert_close(traj.policies.sum(axis=1), 1.0, "float64")
    # self-play with a τ schedule: the recorded final equals a manual run of the same rule
    sched = Schedule(kind="linear", start=0.5, end=0.1)
    steps = list(iterate(P, mu, algorithm="self_play", tau=sched, eta=0.5, steps=20))
    pi = mu.copy()
    for t in range(20):
        tau_t = 0.5 + (0.1 - 0.5) * t / 20
        pi = _prob_space_omd(P, mu, pi, 0.5, tau_t)
    assert_close(np.exp(steps[-1][1]), pi, "float64")
