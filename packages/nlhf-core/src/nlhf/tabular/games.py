"""Built-in preference games (``preference: {name: tabular, game: ...}``).

Every game is a matrix ``P[i, j] = P(y_i ≻ y_j)`` with labelled responses:

- ``bt3``: the Bradley–Terry example of the NashLLM talk (seeds, "Best response vs.
  probability of winning"): rewards R(y1) = 0, R(y2) = log 9, R(y3) = log 2, so
  P(y_i ≻ y_j) = e^{R_i}/(e^{R_i} + e^{R_j}), e.g. P(y2 ≻ y1) = 9/10, P(y3 ≻ y2) = 2/11.
  With π(y1) = 2π(y2) imposed, reward maximisation picks (2/3, 1/3, 0) and preference
  maximisation picks (0, 0, 1), and P((0,0,1) ≻ (2/3,1/3,0)) = 50/99 > ½.
- ``dice``: Gardner's non-transitive dice A = U{2,4,9}, B = U{1,6,8}, C = U{3,5,7};
  P(i ≻ j) = P(die_i > die_j) + ½ P(tie) (no ties here): A ≻ B ≻ C ≻ A, each with 5/9.
- ``rps``: rock, paper, scissors; P ∈ {0, ½, 1}.
- ``population``: the talk's "diverse human preferences" example (seeds: "3 types of
  humans with respective preferences P1, P2, P3 … BT will select one action y1
  deterministically, Nash will select a mixture"). The talk gives no numbers; we take
  a Condorcet population: 45% of annotators rank y1 > y2 > y3, 30% rank y2 > y3 > y1,
  25% rank y3 > y1 > y2. Then P(y1≻y2) = 0.70, P(y2≻y3) = 0.75, P(y3≻y1) = 0.55: every
  type is a minority, the majority preference is a cycle, a Bradley–Terry fit ranks y1
  first (Borda scores 1.15 > 1.05 > 0.80), and the maximal lottery is (0.5, 0.1, 0.4).
- ``random``: P_ij ~ U[0, 1] i.i.d. above the diagonal, P_ji = 1 − P_ij, P_ii = ½
  (``numpy.random.default_rng(seed)``; default size 10).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nlhf.errors import InputError
from nlhf.tabular.matrix import validate_matrix, validate_reference

if TYPE_CHECKING:
    from nlhf.spec.models import RunSpec

DEFAULT_RANDOM_SIZE = 10

DICE: dict[str, tuple[int, ...]] = {"A": (2, 4, 9), "B": (1, 6, 8), "C": (3, 5, 7)}
POPULATION_TYPES: tuple[tuple[float, tuple[int, ...]], ...] = (
    (0.45, (0, 1, 2)),
    (0.30, (1, 2, 0)),
    (0.25, (2, 0, 1)),
)
"""(weight, ranking best-first) of each annotator type of the ``population`` game."""


@dataclass(frozen=True)
class Game:
    """A preference matrix with response labels."""

    name: str
    matrix: np.ndarray
    labels: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.matrix.shape[0]


def bradley_terry(rewards: np.ndarray) -> np.ndarray:
    """P_ij = σ(r_i − r_j) (Bradley–Terry)."""
    r = np.asarray(rewards, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))


def bt3() -> Game:
    """The talk's 3-response Bradley–Terry game (R = 0, log 9, log 2), exact fractions."""
    P = np.array(
        [
            [1 / 2, 1 / 10, 1 / 3],
            [9 / 10, 1 / 2, 9 / 11],
            [2 / 3, 2 / 11, 1 / 2],
        ]
    )
    return Game("bt3", P, ("y1", "y2", "y3"))


def dice_matrix(dice: dict[str, tuple[int, ...]]) -> np.ndarray:
    """P(die_i > die_j) + ½ P(die_i = die_j) for fair dice with the given faces."""
    faces = list(dice.values())
    n = len(faces)
    P = np.empty((n, n))
    for i, j in itertools.product(range(n), range(n)):
        pairs = [(a > b) + 0.5 * (a == b) for a in faces[i] for b in faces[j]]
        P[i, j] = sum(pairs) / len(pairs)
    return P


def dice() -> Game:
    """Gardner's non-transitive dice A = U{2,4,9}, B = U{1,6,8}, C = U{3,5,7}."""
    labels = tuple(f"{k}{{{','.join(map(str, v))}}}" for k, v in DICE.items())
    return Game("dice", dice_matrix(DICE), labels)


def rps() -> Game:
    """Rock-paper-scissors: paper ≻ rock ≻ scissors ≻ paper with probability 1."""
    P = np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])
    return Game("rps", P, ("rock", "paper", "scissors"))


def population_matrix(types: tuple[tuple[float, tuple[int, ...]], ...], n: int) -> np.ndarray:
    """P(y_i ≻ y_j) = Σ_k w_k 1[type k ranks y_i above y_j] (+ ½ on the diagonal)."""
    P = np.full((n, n), 0.0)
    for weight, ranking in types:
        position = {y: r for r, y in enumerate(ranking)}
        for i, j in itertools.product(range(n), range(n)):
            if i == j:
                P[i, j] += 0.5 * weight
            elif position[i] < position[j]:
                P[i, j] += weight
    return P


def population() -> Game:
    """Three annotator types with Condorcet-cycle rankings (see the module docstring)."""
    return Game("population", population_matrix(POPULATION_TYPES, 3), ("y1", "y2", "y3"))


def random_game(size: int = DEFAULT_RANDOM_SIZE, seed: int = 0) -> Game:
    """A seeded random preference matrix: P_ij ~ U[0,1] for i < j, P_ji = 1 − P_ij."""
    if size < 2:
        raise InputError(f"preference.size: a random game needs at least 2 responses; got {size}")
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.uniform(size=(size, size)), k=1)
    P = upper + np.tril(1.0 - upper.T, k=-1) + 0.5 * np.eye(size)
    return Game("random", P, tuple(f"y{k + 1}" for k in range(size)))


GAMES = {"bt3": bt3, "dice": dice, "rps": rps, "population": population}


def game_from_spec(spec: RunSpec) -> Game:
    """The :class:`Game` of a tabular run spec (validated matrix or built-in game)."""
    from nlhf.spec.models import TabularPreference

    pref = spec.preference
    if not isinstance(pref, TabularPreference):
        raise InputError(
            "preference: the tabular engine needs `preference: {name: tabular, ...}`; "
            f"got {getattr(pref, 'name', None)!r}"
        )
    if pref.matrix is not None:
        P = validate_matrix(pref.matrix, where="preference.matrix")
        return Game("matrix", P, tuple(f"y{k + 1}" for k in range(P.shape[0])))
    if pref.game == "random":
        seed = spec.seed if pref.seed is None else pref.seed
        return random_game(pref.size or DEFAULT_RANDOM_SIZE, seed)
    if pref.seed is not None:
        raise InputError(f"preference.seed: applies only to `game: random` (game is {pref.game})")
    if pref.game is None:
        raise InputError("preference: give `game` (bt3, dice, rps, population, random) or `matrix`")
    return GAMES[pref.game]()


def build_game(spec: RunSpec) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(P, μ, labels)`` of a tabular run spec; μ from ``reference.probs`` (default uniform)."""
    game = game_from_spec(spec)
    mu = validate_reference(spec.reference.probs, game.size, where="reference.probs")
    return game.matrix, mu, game.labels
