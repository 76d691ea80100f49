"""Exact equilibria and the duality gap, against hand computations, closed forms, a
second solver (scipy root finding) and direct numerical maximisation."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from nlhf.tabular.games import bradley_terry, bt3, dice, population, random_game, rps
from nlhf.tabular.metrics import duality_gap, exploitability, kl_divergence
from nlhf.tabular.solvers import maximal_lottery, regularized_nash
from nlhf.testing.tolerances import assert_close, tolerance
from scipy.optimize import minimize, root
from scipy.special import logsumexp, softmax

F64 = tolerance("float64")
GAMES = {
    "dice": dice().matrix,
    "rps": rps().matrix,
    "bt3": bt3().matrix,
    "population": population().matrix,
    "random8": random_game(8, seed=1).matrix,
}


def test_tabular_maximal_lottery_rps_and_dice_are_uniform() -> None:
    for P in (rps().matrix, dice().matrix):
        assert_close(maximal_lottery(P), [1 / 3] * 3, "float64")
    # by hand: every row of the dice matrix sums to ½ + 5/9 + 4/9, so (P·uniform)_y = ½
    row = Fraction(1, 2) + Fraction(5, 9) + Fraction(4, 9)
    assert row / 3 == Fraction(1, 2)
    assert_close(np.max(dice().matrix @ np.full(3, 1 / 3)), 0.5, "float64")


def test_tabular_maximal_lottery_of_transitive_bt_is_the_top_response() -> None:
    P = bradley_terry(np.array([0.3, 2.0, -1.0, 1.2]))
    assert_close(maximal_lottery(P), [0, 1, 0, 0], "float64")
    assert_close(maximal_lottery(bt3().matrix), [0, 1, 0], "float64")


def test_tabular_maximal_lottery_of_a_three_cycle_closed_form() -> None:
    """For margins a = P12−½, b = P23−½, c = P31−½ > 0 the maximal lottery is ∝ (b, c, a)."""
    P = population().matrix
    a, b, c = P[0, 1] - 0.5, P[1, 2] - 0.5, P[2, 0] - 0.5
    expected = np.array([b, c, a]) / (a + b + c)
    assert_close(expected, [0.5, 0.1, 0.4], "float64")
    assert_close(maximal_lottery(P), expected, "float64")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tabular_maximal_lottery_of_random_games_is_unexploitable(seed: int) -> None:
    P = random_game(25, seed=seed).matrix
    pi = maximal_lottery(P)
    assert pi.min() >= 0
    assert_close(pi.sum(), 1.0, "float64", "Σπ")
    assert np.max(P @ pi) <= 0.5 + F64.atol  # P(y ≻ π) ≤ ½ for every y


@pytest.mark.parametrize(
    ("tau", "expected"),
    [
        (1.0, (0.606466, 0.291753, 0.101781)),
        (0.1, (0.643730, 0.228498, 0.127772)),
        (0.01, (0.420688, 0.238453, 0.340859)),
    ],
)
def test_tabular_regularized_nash_dice_issue_numbers(tau: float, expected) -> None:
    pi = regularized_nash(dice().matrix, np.array([0.6, 0.3, 0.1]), tau)
    # not a dtype tolerance: the expected values are printed to 6 decimals (± half a unit)
    np.testing.assert_allclose(pi, expected, rtol=0, atol=0.5e-6)


@pytest.mark.parametrize("tau", [10.0, 1.0, 0.1, 0.01, 0.001])
def test_tabular_regularized_nash_two_responses_closed_form(tau: float) -> None:
    P = np.array([[0.5, 0.7], [0.3, 0.5]])
    pi = regularized_nash(P, np.array([0.5, 0.5]), tau)
    assert_close(pi[0], 1 / (1 + np.exp(-0.2 / tau)), "float64")


@pytest.mark.parametrize("name", sorted(GAMES))
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01, 1e-4])
def test_tabular_regularized_nash_is_the_fixed_point(name: str, tau: float) -> None:
    P = GAMES[name]
    n = P.shape[0]
    mu = np.random.default_rng(n).dirichlet(np.ones(n))
    pi = regularized_nash(P, mu, tau)
    # fixed point π = softmax(log μ + Pπ/τ), checked in log space
    target = np.log(mu) + P @ pi / tau
    target -= logsumexp(target)
    alive = pi > 1e-300  # at τ = 1e-4 some probabilities underflow to 0 (target < −745)
    assert np.all(target[~alive] < -700)
    assert_close(tau * np.log(pi[alive]), tau * target[alive], "float64", "τ·log π")
    assert_close(pi, softmax(np.log(mu) + P @ pi / tau), "float64", "π")
    assert_close(duality_gap(P, mu, pi, tau), 0.0, "float64", "duality gap")
    # the gap is positive away from π*_τ
    for other in np.random.default_rng(0).dirichlet(np.ones(n), size=20):
        assert duality_gap(P, mu, other, tau) > 1e-6


def test_tabular_regularized_nash_matches_scipy_root() -> None:
    """A second implementation: scipy's hybrid Powell root of the log-space fixed point."""
    P = random_game(6, seed=5).matrix
    mu = np.random.default_rng(1).dirichlet(np.ones(6))
    tau = 0.2

    def f(z: np.ndarray) -> np.ndarray:
        pi = softmax(z)
        target = np.log(mu) + P @ pi / tau
        return z - (target - logsumexp(target))

    sol = root(f, np.log(mu), method="hybr", tol=1e-13)
    assert_close(f(sol.x), 0.0, "float64", "scipy's residual")
    assert_close(regularized_nash(P, mu, tau), softmax(sol.x), "float64")


def _maximise_on_simplex(objective, n: int, seed: int = 0) -> float:
    """max over π' ∈ Δ of objective(π'), by BFGS on softmax logits from several starts."""
    rng = np.random.default_rng(seed)
    best = -np.inf
    for _ in range(5):
        res = minimize(lambda z: -objective(softmax(z)), rng.normal(size=n), method="BFGS")
        best = max(best, -res.fun)
    return best


def test_tabular_duality_gap_equals_best_deviations_found_numerically() -> None:
    """gap(π) = max_π' [P(π'≻π) − τKL(π'‖μ)] − min_π' [P(π≻π') + τKL(π'‖μ)] + 2τKL(π‖μ)
    (both players' best deviations in the regularised game), found by direct optimisation."""
    P = random_game(4, seed=2).matrix
    mu = np.array([0.4, 0.3, 0.2, 0.1])
    tau = 0.3
    pi = np.array([0.1, 0.2, 0.3, 0.4])
    up = _maximise_on_simplex(lambda q: q @ P @ pi - tau * kl_divergence(q, mu), 4)
    down = -_maximise_on_simplex(lambda q: -(pi @ P @ q + tau * kl_divergence(q, mu)), 4)
    kl = kl_divergence(pi, mu)
    oracle = (up + tau * kl) - (down - tau * kl)
    assert oracle > 0
    # not a dtype tolerance: the oracle's own accuracy. BFGS stops at ‖∇‖ < gtol = 1e-5
    # (scipy's default), leaving each maximum short by O(gtol²/curvature); 1e-7 allows for
    # a curvature down to ~1e-3 in the softmax parametrisation.
    assert duality_gap(P, mu, pi, tau) == pytest.approx(oracle, abs=1e-7)


def test_tabular_gap_at_tau_zero_is_twice_exploitability() -> None:
    P, pi = dice().matrix, np.array([0.5, 0.3, 0.2])
    by_hand = max(P[y] @ pi for y in range(3)) - 0.5
    assert_close(exploitability(P, pi), by_hand, "float64")
    assert_close(duality_gap(P, np.full(3, 1 / 3), pi, 0.0), 2 * by_hand, "float64")


def test_tabular_regularized_nash_large_random_game() -> None:
    P = random_game(300, seed=0).matrix
    mu = np.full(300, 1 / 300)
    pi = regularized_nash(P, mu, 0.01)
    assert_close(duality_gap(P, mu, pi, 0.01), 0.0, "float64", "duality gap")
