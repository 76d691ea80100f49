"""The tabular Nash engine (NumPy reference; paper §3–§5).

Preference matrices ``P[i, j] = P(y_i ≻ y_j)`` (:mod:`~nlhf.tabular.matrix`), built-in
games (:mod:`~nlhf.tabular.games`), the dynamics Nash-MD / OMD / self-play /
best response / EGPO / MPO / ONPO / INPO / SPPO (:mod:`~nlhf.tabular.dynamics`), exact solvers for the regularised NE and
the maximal lottery (:mod:`~nlhf.tabular.solvers`), metrics
(:mod:`~nlhf.tabular.metrics`) and spec-level entry points (:func:`build_game`,
:func:`solve_spec`, :func:`train_spec`).
"""

from nlhf.tabular.dynamics import Trajectory, best_response, iterate, run
from nlhf.tabular.games import GAMES, Game, build_game, random_game
from nlhf.tabular.matrix import validate_matrix, validate_reference
from nlhf.tabular.metrics import duality_gap, exploitability, kl_divergence
from nlhf.tabular.runner import solve_spec, train_spec
from nlhf.tabular.solvers import maximal_lottery, regularized_nash

__all__ = [
    "GAMES",
    "Game",
    "Trajectory",
    "best_response",
    "build_game",
    "duality_gap",
    "exploitability",
    "iterate",
    "kl_divergence",
    "maximal_lottery",
    "random_game",
    "regularized_nash",
    "run",
    "solve_spec",
    "train_spec",
    "validate_matrix",
    "validate_reference",
]
