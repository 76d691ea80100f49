"""Parameter models of the algorithms (the ``algorithm:`` section of a run spec).

Tabular algorithms (run by every backend on a preference matrix):
``nash_md``, ``omd``, ``self_play``, ``best_response``, and the game-theoretic family
``egpo``, ``mpo``, ``onpo``, ``inpo``, ``sppo`` (:mod:`nlhf.tabular.dynamics` has each
update, its ``eta: auto`` and the convergence it comes with).
LLM algorithms (torch/jax backends, paper §7): ``nash_md_pg``, ``nash_ema_pg``,
``self_play``, ``best_response``, ``rlhf_pg``, ``online_ipo``, and the LLM forms of
``egpo``, ``mpo``, ``onpo``, ``inpo``, ``sppo`` (:mod:`nlhf.training.algorithms`).
Offline algorithms (``task: offline``, trained on fixed preference pairs): ``dpo``, ``ipo``.
``self_play``, ``best_response`` and the game family exist in both families; fields marked
*tabular* or *LLM* apply to one family only (the spec validator says so).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nlhf.algorithms.schedules import ScheduleOrFloat, schedule_bounds
from nlhf.fields import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt

KLEstimator = Literal["sampled", "k3", "exact"]
TABULAR_ALGORITHMS = (
    "nash_md",
    "omd",
    "self_play",
    "best_response",
    "egpo",
    "mpo",
    "onpo",
    "inpo",
    "sppo",
)
LLM_ALGORITHMS = (
    "nash_md_pg",
    "nash_ema_pg",
    "self_play",
    "best_response",
    "rlhf_pg",
    "online_ipo",
    "egpo",
    "mpo",
    "onpo",
    "inpo",
    "sppo",
)
OFFLINE_ALGORITHMS = ("dpo", "ipo")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_range(value: ScheduleOrFloat, low: float, high: float | None, what: str):
    lo, hi = schedule_bounds(value)
    if lo < low or (high is not None and hi > high):
        upper = f", {high}]" if high is not None else ", ∞)"
        raise ValueError(f"{what} must lie in [{low}{upper}; got {lo if lo < low else hi}")
    return value


class _TabularFields(_Params):
    steps: PositiveInt | None = None
    """*tabular*: number of iterations (LLM runs use ``training.steps``)."""
    eta: Literal["auto"] | PositiveFloat = "auto"
    """*tabular*: step size; ``auto`` = each algorithm's convergent step (Nash-MD's
    η_t = 2/(τ(t+2)), paper §5; the others in docs/algorithms.md)."""
    log_every: PositiveInt | None = None
    """*tabular*: log metrics every N iterations (default: about 100 records)."""


class _LLMFields(_Params):
    kl_estimator: KLEstimator = "exact"
    """*LLM*: KL(π‖μ) estimator: ``sampled`` (reward-to-go score function),
    ``k3`` (Schulman) or ``exact`` (full vocabulary per position)."""


class NashMD(_TabularFields):
    """Tabular Nash-MD (paper §5): π_t^μ ∝ π_t^(1−ητ) μ^(ητ);
    π_{t+1}(y) ∝ π_t^μ(y)·exp(η P(y ≻ π_t^μ))."""

    name: Literal["nash_md"] = "nash_md"
    tau: PositiveFloat = 0.1


class OMD(_TabularFields):
    """Regularised online mirror descent (paper §5 baseline):
    π_{t+1}(y) ∝ π_t(y)^(1−ητ) μ(y)^(ητ) exp(η P(y ≻ π_t)); its last iterate may cycle."""

    name: Literal["omd"] = "omd"
    tau: NonNegativeFloat = 0.1


class SelfPlay(_TabularFields, _LLMFields):
    """Self-play. Tabular: multiplicative weights against the current policy,
    π_{t+1}(y) ∝ π_t(y)^(1−ητ) μ(y)^(ητ) exp(η P(y ≻ π_t)) with constant η (τ=0: plain
    MW, whose last iterate cycles on non-transitive games). LLM: Nash-MD-PG with β=0."""

    name: Literal["self_play"] = "self_play"
    tau: ScheduleOrFloat = 0.0

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: ScheduleOrFloat) -> ScheduleOrFloat:
        return _check_range(v, 0.0, None, "tau")


class BestResponse(_TabularFields, _LLMFields):
    """Regularised best response against μ: π = argmax_π P(π ≻ μ) − τ KL(π‖μ)
    = softmax(log μ + P μ / τ) (tabular, closed form). LLM: Nash-MD-PG with y' ~ μ (β=1)."""

    name: Literal["best_response"] = "best_response"
    tau: ScheduleOrFloat = 0.1

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: ScheduleOrFloat) -> ScheduleOrFloat:
        return _check_range(v, 0.0, None, "tau")


class NashMDPG(_LLMFields):
    """Nash-MD-PG (paper §7): y ~ π_θ, y' ~ π̃_β ∝ π_θ^(1−β) μ^β token by token;
    loss = −(P(y≻y'|x) − ½)·Σ_n log π_θ(y_n|x,y_<n) + τ·KL(π_θ‖μ)."""

    name: Literal["nash_md_pg"] = "nash_md_pg"
    beta: ScheduleOrFloat = 0.125
    tau: ScheduleOrFloat = 0.1

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: ScheduleOrFloat) -> ScheduleOrFloat:
        return _check_range(v, 0.0, 1.0, "beta")

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: ScheduleOrFloat) -> ScheduleOrFloat:
        return _check_range(v, 0.0, None, "tau")


class NashEMAPG(_LLMFields):
    """Nash-EMA-PG (paper §7): y' sampled from an exponential moving average of past
    parameters, θ̄ ← decay·θ̄ + (1 − decay)·θ after every optimiser step."""

    name: Literal["nash_ema_pg"] = "nash_ema_pg"
    ema_decay: Fraction = 0.9
    tau: ScheduleOrFloat = 0.1

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: ScheduleOrFloat) -> ScheduleOrFloat:
        return _check_range(v, 0.0, None, "tau")


class RLHFPG(_LLMFields):
    """RLHF baseline: maximise E_y~π[r(x,y)] − τ KL(π‖μ) with the same policy gradient,
    reward centred by the batch mean (r from ``bradley_terry_reward`` or an oracle's score)."""

    name: Literal["rlhf_pg"] = "rlhf_pg"
    tau: ScheduleOrFloat = 0.1

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: ScheduleOrFloat) -> ScheduleOrFloat:
        return _check_range(v, 0.0, None, "tau")


class OnlineIPO(_LLMFields):
    """Online IPO and IPO-MD (Calandriello et al., "Human alignment of large language
    models through online preference optimisation", ICML 2024, arXiv 2403.08635).

    Per prompt, y ~ π_θ and y' from the opponent: with β = 0 y' ~ π_θ itself (Online
    IPO); with β > 0 y' ~ π̃_β ∝ π_θ^(1−β) μ^β, the geometric mixture sampled token by
    token as in Nash-MD (IPO-MD). The loss is IPO's (h_π(y_w, y_l) − 1/(2τ))² with
    h = log π(y_w)/μ(y_w) − log π(y_l)/μ(y_l) (Azar et al. 2023) averaged over the label
    y_w ~ Bernoulli(P(y≻y')): per row (h(y, y') − (P(y≻y') − ½)/τ)², up to a constant in θ
    (for P ∈ {0, 1}, the sampled loss itself).
    """

    name: Literal["online_ipo"] = "online_ipo"
    beta: ScheduleOrFloat = 0.0
    tau: PositiveFloat = 0.1

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: ScheduleOrFloat) -> ScheduleOrFloat:
        return _check_range(v, 0.0, 1.0, "beta")


class EGPO(_TabularFields):
    """Extragradient Preference Optimization (Zhou, Fazel & Du, COLM 2025,
    arXiv 2503.08942), tabular form: one extragradient step on the KL-regularised game,
    π_{t+½} ∝ π_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_t)),
    π_{t+1} ∝ π_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_{t+½})).
    ``eta: auto`` = 1/(τ + 2L), L = max|P − ½|: last-iterate linear convergence to π*_τ.
    τ = 0 runs extragradient on the unregularised game.
    *LLM*: optimiser steps alternate a half step from θ_t (to θ_{t+½}) and a full step
    that restores θ_t and its optimizer state and applies the loss of pairs sampled from
    θ_{t+½}; the loss is the online IPO form (h − (P − ½)/τ)² (τ > 0)."""

    name: Literal["egpo"] = "egpo"
    tau: NonNegativeFloat = 0.1


class MPO(_TabularFields, _LLMFields):
    """Magnetic Preference Optimization (Wang et al., ICLR 2025, arXiv 2410.16714):
    magnetic mirror descent (Sokota et al., ICLR 2023) towards a magnet m,
    π_{t+1} ∝ (π_t · m^(ητ) · exp(η P(y ≻ π_t)))^(1/(1+ητ)). The magnet is μ; with
    ``magnet_every: K`` it becomes the current policy every K steps, and the run targets
    the Nash equilibrium of the unregularised game (measured at τ = 0).
    ``eta: auto`` = τ/L², L = max|P − ½|: linear last-iterate convergence to π*_τ of
    the current magnet. *LLM*: the self-play policy gradient
    −(P(y≻y') − ½)·log π_θ(y) + τ·KL(π_θ‖m), y, y' ~ π_θ, with m a frozen copy of θ
    refreshed every ``magnet_every`` optimiser steps (μ until the first refresh)."""

    name: Literal["mpo"] = "mpo"
    tau: PositiveFloat = 0.1
    magnet_every: PositiveInt | None = None
    """Refresh the magnet to the current policy every this many steps (``None``: keep μ)."""


class ONPO(_TabularFields):
    """Optimistic Nash Policy Optimization (Zhang et al. 2025, arXiv 2502.16852):
    optimistic online mirror descent on the regularised game with the previous step's
    gradient as the prediction; π̂ the secondary iterate (π̂_0 = π_0 = μ):
    π_{t+1} ∝ π̂_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_t)),
    π̂_{t+1} ∝ π̂_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_{t+1})).
    ``eta: auto`` = min(1/(2τ + 2L), 1/(4L)), L = max|P − ½|.
    *LLM*: INPO's pairwise loss (:class:`INPO`), whose gradient g_t enters the optimizer
    as the optimistic 2·g_t − g_{t−1} (g_{t−1} kept in the checkpoint); ``eta`` is needed."""

    name: Literal["onpo"] = "onpo"
    tau: NonNegativeFloat = 0.1


class INPO(_TabularFields):
    """Iterative Nash Policy Optimization (Zhang et al., ICLR 2025, arXiv 2407.00617):
    online mirror descent on the regularised game,
    π_{t+1} ∝ π_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_t)), with a constant η (the LLM form
    reaches this update through INPO's pairwise squared loss, without win-rate estimates).
    ``eta: auto`` = τ/(τ² + L²), L = max|P − ½|: linear last-iterate convergence.
    *LLM*: loss (h_t(y, y') − η(P(y≻y') − ½))², h_t = log π_θ(y)/π_θ(y') −
    ητ·log μ(y)/μ(y') − (1 − ητ)·log π_t(y)/π_t(y'), y, y' ~ π_t; ``eta`` is needed
    (a number with η·τ ≤ 1)."""

    name: Literal["inpo"] = "inpo"
    tau: PositiveFloat = 0.1


class SPPO(_TabularFields):
    """Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675):
    multiplicative weights on the win rate, π_{t+1}(y) ∝ π_t(y) exp(η P(y ≻ π_t)), no KL
    term (τ = 0). Its guarantee is for the average iterate π̄_T (duality gap
    O(√(ln n / T)) with ``eta: auto`` = √(8 ln n / T)); tabular runs report π̄_T next to
    the last iterate, which cycles on non-transitive games.
    *LLM*: loss (log π_θ(y)/π_t(y) − η(P̂(y ≻ π_t) − ½))² over K = ``num_samples``
    responses per prompt, P̂ the mean of P(y ≻ y_k) over the K samples; ``eta`` is
    needed (SPPO's η, the inverse of its code's β)."""

    name: Literal["sppo"] = "sppo"
    num_samples: PositiveInt = 5
    """*LLM*: K ≥ 2 responses per prompt for the estimate P̂(y ≻ π_t) of SPPO's squared loss."""


STEPPER_STATE_ALGORITHMS = ("sppo", "mpo", "onpo", "egpo")
"""LLM algorithms whose K samples, magnet, previous gradient or extragradient anchor live in
the single-process steppers (not under DeepSpeed)."""


def llm_problems(algorithm: object, engine: str = "none") -> list[str]:
    """The ``algorithm.*`` problems of a game-family algorithm run on a language model
    (fields whose tabular defaults have no LLM meaning, and the DeepSpeed engine for the
    algorithms with stepper state), as ``field.path: message``."""
    name = getattr(algorithm, "name", None)
    problems: list[str] = []
    if engine == "deepspeed" and name in STEPPER_STATE_ALGORITHMS:
        problems.append(
            f"algorithm.name: {name} is not supported under distributed.engine: deepspeed yet "
            "(its K samples, magnet, previous gradient or extragradient anchor live in the "
            "single-process stepper); remove the distributed section, or use inpo"
        )
    eta = getattr(algorithm, "eta", None)
    tau = getattr(algorithm, "tau", None)  # a float, or a schedule (not checked here)
    tau = float(tau) if isinstance(tau, int | float) else None
    if name in ("inpo", "onpo", "sppo") and not isinstance(eta, float):
        problems.append(
            f"algorithm.eta: {name} on a language model needs its step η as a number "
            f"(`eta: auto` is the tabular step); e.g. eta: 1.0"
        )
    if name in ("inpo", "onpo") and isinstance(eta, float) and tau and eta * tau > 1.0:
        problems.append(
            f"algorithm.eta: {name} weighs log π_t by 1 − η·τ, so η·τ must be ≤ 1; got "
            f"η·τ = {eta * tau:g} (lower eta or tau)"
        )
    if name == "egpo" and tau is not None and tau <= 0:
        problems.append(
            "algorithm.tau: egpo on a language model divides by τ in its loss "
            "(h − (P − ½)/τ)²; give tau > 0"
        )
    if name == "sppo" and int(getattr(algorithm, "num_samples", 2)) < 2:
        problems.append(
            "algorithm.num_samples: sppo estimates P(y ≻ π_t) from the other responses of "
            "the prompt, so it needs num_samples ≥ 2"
        )
    return problems


class DPO(_Params):
    """DPO on fixed pairs (Rafailov et al. 2023, "Direct preference optimization", eq. 7):
    loss = −log σ(τ·h), h = log π/μ(y_w) − log π/μ(y_l); ``tau`` is the paper's β, the
    strength of the KL regulariser towards μ (τ here, as in every nlhf algorithm)."""

    name: Literal["dpo"] = "dpo"
    tau: PositiveFloat
    """KL strength (DPO's β), e.g. 0.1."""


class IPO(_Params):
    """IPO on fixed pairs (Azar et al. 2023, "A general theoretical paradigm to understand
    learning from human preferences", arXiv 2310.12036, the sampled IPO loss):
    loss = (h − 1/(2τ))², h as in :class:`DPO`, whose minimum, pair by pair, is at
    h = 1/(2τ)."""

    name: Literal["ipo"] = "ipo"
    tau: PositiveFloat
    """KL strength τ, e.g. 0.1 (target margin 1/(2τ))."""


AlgorithmSpec = Annotated[
    NashMD
    | OMD
    | SelfPlay
    | BestResponse
    | EGPO
    | MPO
    | ONPO
    | INPO
    | SPPO
    | NashMDPG
    | NashEMAPG
    | RLHFPG
    | OnlineIPO
    | DPO
    | IPO,
    Field(discriminator="name"),
]
