"""The algorithm table of ``task: nash`` on language models (paper §7), written once.

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
online_ipo     π̃_β (IPO-MD; β = 0: π_θ)       (s·h − 1/(2τ))², h = log π/μ(y) − log π/μ(y'),
                                              s = sign(P − ½) (+1 at ½), i.e. (h(y_w, y_l) − 1/(2τ))²
============== ============================== ===============================================

rlhf_pg is the RLHF baseline: −(r − r̄)·log π(y) + τ·KL is the Nash-MD-PG loss with
P := r − r̄ + ½, so one kernel serves both. Online IPO is Calandriello et al. (2024),
"Human alignment of large language models through online preference optimisation".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    loss: Literal["nash_md_pg", "online_ipo"]
    centred_reward: bool = False
    """rlhf_pg: P := r − r̄ + ½ with r̄ the mean reward of the whole batch (all ranks)."""

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
