"""Built-in games against independent constructions (enumeration, closed forms)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from nlhf.tabular.games import bt3, dice, population, random_game, rps
from nlhf.tabular.matrix import validate_matrix
from nlhf.testing.tolerances import assert_close
from scipy.optimize import minimize


def test_tabular_dice_matches_brute_force_enumeration() -> None:
    faces = [(2, 4, 9), (1, 6, 8), (3, 5, 7)]
    expected = np.empty((3, 3))
    for i, j in itertools.product(range(3), range(3)):
        wins = ties = 0
        for a, b in itertools.product(faces[i], faces[j]):
            wins += a > b
            ties += a == b
        expected[i, j] = float(Fraction(wins, 9) + Fraction(ties, 18))
    P = dice().matrix
    assert_close(P, expected, "float64")
    # the talk's numbers: A ≻ B, B ≻ C, C ≻ A each with probability 5/9
    assert P[0, 1] == pytest.approx(5 / 9) and P[1, 2] == pytest.approx(5 / 9)
    assert P[2, 0] == pytest.approx(5 / 9)


def test_tabular_bt3_is_bradley_terry_with_talk_rewards() -> None:
    rewards = [0.0, math.log(9), math.log(2)]
    P = bt3().matrix
    for i, j in itertools.product(range(3), range(3)):
        ri, rj = math.exp(rewards[i]), math.exp(rewards[j])
        assert_close(P[i, j], ri / (ri + rj), "float64")
    # the talk's table entries (column y, row y'): P(y2≻y1)=9/10, P(y3≻y2)=2/11, P(y3≻y1)=2/3
    assert P[1, 0] == pytest.approx(0.9) and P[2, 1] == pytest.approx(2 / 11)
    assert P[2, 0] == pytest.approx(2 / 3)


def test_tabular_bt3_fifty_over_ninety_nine() -> None:
    """The talk: P(π*_P ≻ π*_R) with π*_P = (0,0,1), π*_R = (2/3,1/3,0) is 50/99 > ½."""
    P = bt3().matrix
    pi_p, pi_r = np.array([0.0, 0.0, 1.0]), np.array([2 / 3, 1 / 3, 0.0])
    assert_close(pi_p @ P @ pi_r, 50 / 99, "float64")
    # and π*_R maximises the expected BT reward under π(y1) = 2π(y2): log 9 / 3 > log 2
    assert math.log(9) / 3 > math.log(2)


def test_tabular_rps() -> None:
    P = rps().matrix
    assert rps().labels == ("rock", "paper", "scissors")
    assert P[1, 0] == 1 and P[0, 2] == 1 and P[2, 1] == 1  # paper≻rock≻scissors≻paper
    assert set(np.unique(P)) == {0.0, 0.5, 1.0}


def test_tabular_population_is_a_condorcet_cycle_that_bt_ranks_y1_first() -> None:
    P = population().matrix
    # independent vote counting: 45% y1>y2>y3, 30% y2>y3>y1, 25% y3>y1>y2
    votes = {(0, 1, 2): 0.45, (1, 2, 0): 0.30, (2, 0, 1): 0.25}
    for i, j in itertools.permutations(range(3), 2):
        share = sum(w for r, w in votes.items() if r.index(i) < r.index(j))
        assert_close(P[i, j], share, "float64")
    assert P[0, 1] > 0.5 and P[1, 2] > 0.5 and P[2, 0] > 0.5  # majority cycle

    # a Bradley–Terry fit (max likelihood on all pairs) ranks y1 first
    def nll(r: np.ndarray) -> float:
        r = np.concatenate([[0.0], r])
        d = r[:, None] - r[None, :]
        return float(-np.sum(P * -np.logaddexp(0.0, -d)))

    fit = minimize(nll, np.zeros(2), method="BFGS")
    rewards = np.concatenate([[0.0], fit.x])
    assert int(np.argmax(rewards)) == 0


def test_tabular_random_game_is_valid_seeded_and_antisymmetric() -> None:
    a, b, c = random_game(7, seed=3), random_game(7, seed=3), random_game(7, seed=4)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert not np.allclose(a.matrix, c.matrix)
    validate_matrix(a.matrix)
    assert_close(a.matrix + a.matrix.T, np.ones((7, 7)), "float64")
    assert a.labels[0] == "y1" and len(a.labels) == 7


@pytest.mark.parametrize("make", [bt3, dice, rps, population])
def test_tabular_builtin_games_validate(make) -> None:
    game = make()
    validate_matrix(game.matrix)
    assert len(game.labels) == game.size
