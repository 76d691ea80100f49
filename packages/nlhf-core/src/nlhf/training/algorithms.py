"""The algorithm table of ``task: nash`` on language models (Munos et al., arXiv:2312.00886
v4, §7), written once.

Every backend runs the same table; a row says where the opponent y' comes from, which β
the mixture uses, whether y' is sampled at all, and which loss kernel trains θ
(P = P(y≻y'|x) carries no gradient; KL is the estimator ``algorithm.kl_estimator``):

============== ============================== ===============================================
algorithm      opponent y'                    loss per row
============== ============================== ===============================================
nash_md_pg     π̃_β ∝ π_θ^(1−β)·μ^β (tokens)   −(P − ½)·log π_θ(y|x) + τ·KL
self_play      π_θ (β = 0)                    same
best_response  μ (β = 1)                      same
nash_ema_pg    EMA θ̄ ← d·θ̄ + (1−d)·θ          same
rlhf_pg        — (no y')                      same with P := r(x,y) − r̄ + ½ (r̄: batch mean)
online_ipo     π̃_β (IPO-MD; β = 0: π_θ)       (h − (P − ½)/τ)², h = log π/μ(y) − log π/μ(y'):
                                              (h(y_w, y_l) − 1/(2τ))² over y_w ~ Bernoulli(P)
mpo            π_θ (β = 0)                    −(P − ½)·log π_θ(y|x) + τ·KL(π_θ‖m), m the magnet
egpo           π_θ (β = 0)                    (h − (P − ½)/τ)², extragradient half/full steps
inpo           π_θ (β = 0)                    (h_t − η(P − ½))², h_t = log π_θ(y)/π_θ(y')
                                              − ητ·log μ(y)/μ(y') − (1 − ητ)·log π_t(y)/π_t(y')
onpo           π_θ (β = 0)                    inpo's, optimistic gradient 2·g_t − g_{t−1}
sppo           K samples of π_θ per prompt    (log π_θ(y)/π_t(y) − η(P̂(y≻π_t) − ½))² per sample
============== ============================== ===============================================

rlhf_pg is the RLHF baseline: −(r − r̄)·log π(y) + τ·KL is the Nash-MD-PG loss with
P := r − r̄ + ½, so one kernel serves both. Online IPO is Calandriello et al. (2024),
"Human alignment of large language models through online preference optimisation".

Sources of the rows (docs/algorithms.md, "Sources", gives the evidence): nash_md_pg and
its β endpoints arXiv:2312.00886 v4 §7 (gradient App. F.2 eq. 13, mixture App. F.3
eq. 15); online_ipo arXiv:2403.08635 §4 eq. 11 (IPO-MD §5) with the IPO loss of
arXiv:2310.12036 v2 eq. 17; sppo arXiv:2405.00675 v5 eq. 4.6; inpo arXiv:2407.00617
(ICLR 2025 version) eq. 7–8, whose η is 1/η here; onpo arXiv:2502.16852, Algorithm 1;
mpo arXiv:2410.16714 and egpo arXiv:2503.08942 v3 (equation numbers not confirmed).

The game-theoretic family (docs/algorithms.md, "LLM forms"): π_t is the policy at the
start of the optimiser step (its detached log-probs). ``mechanics`` names what a stepper
does beyond one loss and one optimizer step: ``magnet`` (mpo: m ← a frozen copy of θ
every ``magnet_every`` steps, μ before), ``optimistic`` (onpo: the optimizer receives
2·g_t − g_{t−1}), ``extragradient`` (egpo: odd steps are half steps θ_t → θ_{t+½}; even
steps restore θ_t and its optimizer state and apply the gradient at θ_t of pairs sampled
from θ_{t+½}). Each piece of that state is in the checkpoint, so ``--resume`` is exact.
sppo samples ``num_samples`` = K responses per prompt (:func:`sample_layout`); the loop
scores every pair of them (:func:`sppo_pairs`) and the stepper turns the scores into
P̂(y_a ≻ π_t) = (1/K)·Σ_b P(y_a ≻ y_b), P(y_a ≻ y_a) = ½ (:func:`sppo_win_rates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np

from nlhf.algorithms.schedules import schedule_value
from nlhf.errors import InputError

Opponent = Literal["mixture", "policy", "reference", "model"]
"""Where y' is sampled from: the geometric mixture π̃_β, π_θ itself, μ, or a second model
(the EMA of θ)."""


@dataclass(frozen=True)
class AlgorithmRule:
    """One row of the table (see the module docstring)."""

    name: str
    opponent: Opponent
    fixed_beta: float | None
    """β of the mixture when the algorithm fixes it (self_play 0, best_response 1);
    None: ``algorithm.beta`` (a float or a schedule), 0 when the algorithm has none."""
    needs_y_prime: bool
    """False for rlhf_pg: only y is sampled and scored by a reward."""
    loss: Literal["nash_md_pg", "online_ipo", "egpo", "inpo", "sppo"]
    centred_reward: bool = False
    """rlhf_pg: P := r − r̄ + ½ with r̄ the mean reward of the whole batch (all ranks)."""
    mechanics: Literal["magnet", "optimistic", "extragradient"] | None = None
    """What the stepper does beyond one loss and one optimizer step (module docstring)."""

    def num_samples(self, algorithm: object) -> int:
        """Responses sampled per prompt: K = ``num_samples`` for sppo, else 2 (y, y')."""
        return int(getattr(algorithm, "num_samples", 2)) if self.loss == "sppo" else 2

    def beta(self, algorithm: object, step0: int, total: int) -> float:
        """β at 0-based optimiser step ``step0`` of ``total``."""
        if self.fixed_beta is not None:
            return self.fixed_beta
        return schedule_value(getattr(algorithm, "beta", 0.0), step0, total)


RULES: dict[str, AlgorithmRule] = {
    rule.name: rule
    for rule in (
        AlgorithmRule("nash_md_pg", "mixture", None, True, "nash_md_pg"),
        AlgorithmRule("self_play", "policy", 0.0, True, "nash_md_pg"),
        AlgorithmRule("best_response", "reference", 1.0, True, "nash_md_pg"),
        AlgorithmRule("nash_ema_pg", "model", None, True, "nash_md_pg"),
        AlgorithmRule("rlhf_pg", "policy", None, False, "nash_md_pg", centred_reward=True),
        AlgorithmRule("online_ipo", "mixture", None, True, "online_ipo"),
        AlgorithmRule("mpo", "policy", 0.0, True, "nash_md_pg", mechanics="magnet"),
        AlgorithmRule("egpo", "policy", 0.0, True, "egpo", mechanics="extragradient"),
        AlgorithmRule("inpo", "policy", 0.0, True, "inpo"),
        AlgorithmRule("onpo", "policy", 0.0, True, "inpo", mechanics="optimistic"),
        AlgorithmRule("sppo", "policy", 0.0, True, "sppo"),
    )
}
"""The LLM algorithms of ``task: nash``, by ``algorithm.name``."""


def rule_for(name: str | None) -> AlgorithmRule:
    """The table row of ``algorithm.name``; an :class:`InputError` naming the choices."""
    try:
        return RULES[str(name)]
    except KeyError:
        raise InputError(
            f"algorithm.name: {name!r} is not an LLM algorithm of task nash; use one of "
            f"{', '.join(RULES)} (tabular algorithms need a `preference: {{name: tabular}}`)"
        ) from None


def has_reward(preference: object) -> bool:
    """Whether ``preference`` gives a scalar reward r(x, y) (needed by rlhf_pg): its
    ``has_reward()`` when it defines one (oracle wrappers), else a callable ``reward``."""
    probe = getattr(preference, "has_reward", None)
    if callable(probe):
        return bool(probe())
    return callable(getattr(preference, "reward", None))


# ----------------------------------------------------------------------------- sppo


def sample_layout(prompts: int, k: int) -> tuple[int, list[tuple[int, int]]]:
    """How K responses per prompt come out of one pair sampler call: the prompts are
    repeated m = ⌈K/2⌉ times (copy j of prompt i is row j·prompts + i), each row draws
    y and y' from π_θ, and response k of prompt i is (y if k is even else y') of row
    (k // 2)·prompts + i. Returns (m, [(row, 0 for y | 1 for y') per response]) with the
    responses prompt-major (index i·K + k)."""
    m = -(-k // 2)
    return m, [((kk // 2) * prompts + i, kk % 2) for i in range(prompts) for kk in range(k)]


def sppo_pairs(k: int) -> list[tuple[int, int]]:
    """The K(K−1)/2 pairs (a, b), a < b, of a prompt's responses that the loop scores."""
    return list(combinations(range(k), 2))


def sppo_win_rates(preference: np.ndarray, k: int) -> np.ndarray:
    """P̂(y_a ≻ π_t) = (1/K)·Σ_b P(y_a ≻ y_b) with P(y_a ≻ y_a) = ½ and
    P(y_b ≻ y_a) = 1 − P(y_a ≻ y_b) (SPPO, Wu et al. 2024, arXiv 2405.00675: the win rate
    against π_t estimated from K samples, as ``chosen_probs_win`` in the authors' code).
    ``preference``: P(y_a ≻ y_b) per prompt and pair of :func:`sppo_pairs`, prompt-major,
    shape (prompts·K(K−1)/2,); returns (prompts·K,), prompt-major."""
    pairs = sppo_pairs(k)
    p = np.asarray(preference, dtype=np.float64).reshape(-1, len(pairs))
    wins = np.full((p.shape[0], k, k), 0.5)
    for j, (a, b) in enumerate(pairs):
        wins[:, a, b] = p[:, j]
        wins[:, b, a] = 1.0 - p[:, j]
    return wins.mean(axis=2).reshape(-1)
