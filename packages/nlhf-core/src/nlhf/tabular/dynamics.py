"""Tabular learning dynamics, computed in log space, starting at π_0 = μ.

Notation: P the preference matrix, Pπ the win rates P(y ≻ π), μ the reference, τ the KL
strength, η the step, norm(·) = · − log Σ exp(·) (renormalised log-probabilities), and
L = max_ij |P_ij − ½| (the Lipschitz constant of π ↦ Pπ from ‖·‖₁ to ‖·‖∞ on the simplex).

- ``nash_md`` (Munos et al. 2023, Nash-MD, arXiv:2312.00886 v4, §6, eq. 3–4):
  π_t^μ ∝ π_t^(1−η_t τ) μ^(η_t τ);  π_{t+1}(y) ∝ π_t^μ(y) exp(η_t P(y ≻ π_t^μ)).
  ``eta: auto`` = the paper's η_t = 2/(τ(t+2)), with the last-iterate guarantee
  KL(π*_τ‖π_T) ≤ 8/(τ²(T+1)) (its Theorem 1, §6).
- ``omd`` (regularised online mirror descent, the paper's baseline, its eq. 7–8):
  π_{t+1}(y) ∝ π_t(y)^(1−η_t τ) μ(y)^(η_t τ) exp(η_t P(y ≻ π_t)).
  ``eta: auto`` = η_t = 2/(τ(t+2)) when τ > 0 (same schedule as Nash-MD, so the two
  compare step for step), and the constant Hedge step η = √(8 ln n / T) when τ = 0.
- ``self_play`` (multiplicative weights against the current policy): the OMD update with
  a constant η; ``eta: auto`` = √(8 ln n / T) (the classic Hedge no-regret step),
  capped at 1/τ. τ may be a schedule, evaluated at every integer step. With τ = 0 its
  last iterate cycles away from the NE of a non-transitive game.
- ``best_response`` (closed form, one step): π_1 = argmax_π P(π ≻ μ) − τ KL(π‖μ)
  = softmax(log μ + Pμ/τ); at τ = 0 the uniform distribution over argmax_y (Pμ)_y.
  A τ schedule is evaluated at its last step.
- ``egpo`` (Zhou, Fazel & Du, COLM 2025, arXiv 2503.08942: extragradient on the
  KL-regularised game; the tabular form is the predictive-update method of Cen, Wei & Chi,
  NeurIPS 2021, played by one policy against itself):
  π_{t+½} ∝ π_t^(1−ητ) μ^(ητ) exp(η Pπ_t);  π_{t+1} ∝ π_t^(1−ητ) μ^(ητ) exp(η Pπ_{t+½})
  (arXiv:2503.08942 v3; equation number not confirmed). ``eta: auto`` = 1/(τ + 2L), the
  step of Cen et al.'s linear last-iterate rate KL(π*_τ‖π_t) = O((1 − ητ)^t).
- ``mpo`` (Wang et al., ICLR 2025, arXiv 2410.16714: magnetic mirror descent of Sokota et
  al., ICLR 2023, towards the magnet m): π_{t+1} = argmax_π η⟨π, Pπ_t⟩ − ητ KL(π‖m) −
  KL(π‖π_t), i.e. π_{t+1} ∝ (π_t · m^(ητ) · exp(η Pπ_t))^(1/(1+ητ)) (arXiv:2410.16714 v2;
  equation number not confirmed). The magnet starts at μ; with ``magnet_every: K`` it
  becomes the current policy before steps K, 2K, … (MPO's magnet refresh), and the run
  targets the NE of the unregularised game (the maximal lottery when it is unique) instead
  of π*_τ. ``eta: auto`` = τ/L², the MMD step with
  the linear rate KL(π*_τ‖π_t) ≤ (1+ητ)^(−t)·KL(π*_τ‖μ) for a fixed magnet.
- ``onpo`` (Zhang et al. 2025, arXiv 2502.16852: optimistic online mirror descent on the
  regularised game, the previous step's gradient as the prediction). With π̂ the
  secondary iterate (π̂_0 = π_0 = μ):
  π_{t+1} ∝ π̂_t^(1−ητ) μ^(ητ) exp(η Pπ_t)   (play: prediction = the last gradient Pπ_t);
  π̂_{t+1} ∝ π̂_t^(1−ητ) μ^(ητ) exp(η Pπ_{t+1})   (update with the observed gradient);
  the paper's optimistic OMD (arXiv:2502.16852, section "Optimistic Nash Policy
  Optimization", built on its OMD step eq. 1) with the KL-to-μ term added.
  This is the regularised optimistic MWU of Cen et al. (2021); ``eta: auto`` =
  min(1/(2τ + 2L), 1/(4L)), its step for a linear last-iterate rate. (The ONPO paper,
  "Improving LLM General Preference Alignment via Optimistic Online Mirror Descent",
  proves a duality gap O(1/T) for the average policy π̄_T; the last-iterate rate here is
  Cen et al.'s.)
- ``inpo`` (Zhang et al., ICLR 2025, arXiv 2407.00617: online mirror descent on the
  regularised game, which INPO's pairwise loss implements without win-rate estimates):
  π_{t+1} ∝ π_t^(1−ητ) μ^(ητ) exp(η Pπ_t) with a constant η (arXiv:2407.00617, ICLR 2025
  version, eq. 4–5; the paper's η is 1/η here). ``eta: auto`` =
  τ/(τ² + L²): the step η is MMD's step η' = η/(1 − ητ) (the two updates are the same map),
  and η' ≤ τ/L² is MMD's condition for a linear last-iterate rate. With both steps
  ``auto``, η' = τ/L² is ``mpo``'s step, so ``inpo`` and ``mpo`` without magnet refreshes
  produce the same iterates.
- ``sppo`` (Wu et al. 2024, arXiv 2405.00675: multiplicative weights on P(y ≻ π_t), no
  KL term): π_{t+1}(y) ∝ π_t(y) exp(η P(y ≻ π_t)) (arXiv:2405.00675 v5, eq. 4.1). Its
  guarantee is for the average iterate π̄_T = (1/T) Σ_{t<T} π_t (duality gap
  O(√(ln n / T)) with ``eta: auto`` = √(8 ln n / T)); the last iterate cycles on
  non-transitive games. The runner reports both.
  With τ = 0 and ``eta: auto``, ``omd`` and ``self_play`` take the same step on the same
  update, so all three produce the same iterates.

Every update with an exponent 1 − η_t τ needs η_t τ ≤ 1 (``mpo``'s exponent 1/(1+ητ) does
not). When L = 0 (every P_ij = ½) any η converges and ``auto`` takes 1/τ (1 when τ = 0).

Backends: the schedules and checks live here (:func:`schedules` gives the checked
:class:`Schedules` η_t, τ_t and the magnet refreshes for t < T); a backend supplies only
the numeric steps, a :class:`TrajectoryFn` on its own arrays (:func:`trajectory` is
NumPy's), which :func:`nlhf.tabular.runner.train_spec` drives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from scipy.special import logsumexp

from nlhf.algorithms.schedules import Schedule, schedule_value
from nlhf.errors import InputError

Algorithm = Literal[
    "nash_md", "omd", "self_play", "best_response", "egpo", "mpo", "onpo", "inpo", "sppo"
]
ALGORITHMS: tuple[str, ...] = (
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
CONSTANT_STEP = ("egpo", "mpo", "onpo", "inpo", "sppo")
"""Algorithms whose ``eta: auto`` is one constant step computed from the game."""
DEFAULT_STEPS = 1000


def _normalize(log_p: np.ndarray) -> np.ndarray:
    """log p − log Σ exp(log p) (max-shifted; ~10× faster than scipy's logsumexp here)."""
    m = np.max(log_p)
    return log_p - (m + np.log(np.sum(np.exp(log_p - m))))


def hedge_eta(n: int, steps: int) -> float:
    """√(8 ln n / T): the Hedge step size with regret ≤ √(T ln n / 2) for payoffs in [0, 1]."""
    return math.sqrt(8.0 * math.log(n) / max(steps, 1))


def game_lipschitz(P: np.ndarray) -> float:
    """L = max_ij |P_ij − ½|: ‖P(π − π')‖∞ ≤ L‖π − π'‖₁ for π, π' in the simplex."""
    return float(np.max(np.abs(np.asarray(P, dtype=np.float64) - 0.5)))


def tau_at(tau: float | Schedule, step: int, steps: int) -> float:
    """τ at integer ``step`` (a float or a :class:`~nlhf.algorithms.schedules.Schedule`)."""
    return schedule_value(tau, step, steps)


def auto_constant_eta(algorithm: str, tau: float, P: np.ndarray, steps: int) -> float:
    """``eta: auto`` of the constant-step algorithms (module docstring): egpo 1/(τ + 2L),
    mpo τ/L², onpo min(1/(2τ + 2L), 1/(4L)), inpo τ/(τ² + L²), sppo √(8 ln n / T)."""
    if algorithm == "sppo":
        return hedge_eta(P.shape[0], steps)
    if algorithm in ("mpo", "inpo") and tau <= 0:
        raise InputError(f"algorithm.tau: {algorithm} needs tau > 0; got {tau:g}")
    L = game_lipschitz(P)
    if L == 0.0:
        return 1.0 / tau if tau > 0 else 1.0
    if algorithm == "egpo":
        return 1.0 / (tau + 2.0 * L)
    if algorithm == "mpo":
        return tau / L**2
    if algorithm == "onpo":
        return min(1.0 / (2.0 * tau + 2.0 * L), 1.0 / (4.0 * L))
    if algorithm == "inpo":
        return tau / (tau**2 + L**2)
    raise InputError(f"algorithm.name: {algorithm!r} has no constant auto step")


def eta_schedule(
    algorithm: str,
    tau: float | Schedule,
    eta: float | str,
    steps: int,
    n: int,
    P: np.ndarray | None = None,
) -> Callable[[int], float]:
    """η_t as a function of the integer step t (see the module docstring for ``auto``;
    the constant-step algorithms need the game ``P``)."""
    if eta != "auto":
        value = float(eta)
        if not value > 0:
            raise InputError(f"algorithm.eta: must be > 0 or 'auto'; got {eta!r}")
        return lambda t: value
    if algorithm in CONSTANT_STEP:
        if P is None:
            raise ValueError(f"eta_schedule: {algorithm} with eta: auto needs the game P")
        value = auto_constant_eta(algorithm, tau_at(tau, 0, steps), P, steps)
        return lambda t: value
    if algorithm == "nash_md" or (algorithm == "omd" and tau_at(tau, 0, steps) > 0):
        tau0 = tau_at(tau, 0, steps)
        if tau0 <= 0:
            raise InputError(
                "algorithm.tau: nash_md needs tau > 0 (the paper schedule is 2/(τ(t+2)))"
            )
        return lambda t: 2.0 / (tau0 * (t + 2))
    base = hedge_eta(n, steps)

    def capped(t: int) -> float:
        tt = tau_at(tau, t, steps)
        return min(base, 1.0 / tt) if tt > 0 else base

    return capped


def _check_eta_tau(eta: float, tau: float, t: int) -> None:
    if eta * tau > 1.0 + 1e-12:
        raise InputError(
            f"algorithm.eta: eta·tau = {eta:g}·{tau:g} = {eta * tau:.4g} > 1 at step {t}, "
            f"which makes the exponent 1 − ητ of π_t negative; use eta ≤ 1/tau = {1 / tau:.4g} "
            f"or eta: auto"
        )


def nash_md_step(
    log_pi: np.ndarray, log_mu: np.ndarray, P: np.ndarray, eta: float, tau: float
) -> np.ndarray:
    """One Nash-MD step (arXiv:2312.00886 v4, eq. 3–4) on normalised log-probabilities."""
    log_mix = _normalize((1.0 - eta * tau) * log_pi + eta * tau * log_mu)
    return _normalize(log_mix + eta * (P @ np.exp(log_mix)))


def omd_step(
    log_pi: np.ndarray, log_mu: np.ndarray, P: np.ndarray, eta: float, tau: float
) -> np.ndarray:
    """One regularised OMD / multiplicative-weights step on log-probabilities
    (also INPO's and, with τ = 0, SPPO's)."""
    return _normalize((1.0 - eta * tau) * log_pi + eta * tau * log_mu + eta * (P @ np.exp(log_pi)))


def egpo_step(
    log_pi: np.ndarray, log_mu: np.ndarray, P: np.ndarray, eta: float, tau: float
) -> np.ndarray:
    """One extragradient (EGPO) step: the OMD step from π_t against the half step π_{t+½}."""
    base = (1.0 - eta * tau) * log_pi + eta * tau * log_mu
    log_half = _normalize(base + eta * (P @ np.exp(log_pi)))
    return _normalize(base + eta * (P @ np.exp(log_half)))


def mpo_step(
    log_pi: np.ndarray, log_magnet: np.ndarray, P: np.ndarray, eta: float, tau: float
) -> np.ndarray:
    """One magnetic mirror descent (MPO) step towards ``log_magnet``."""
    return _normalize(
        (log_pi + eta * tau * log_magnet + eta * (P @ np.exp(log_pi))) / (1 + eta * tau)
    )


def onpo_step(
    log_pi: np.ndarray,
    log_hat: np.ndarray,
    log_mu: np.ndarray,
    P: np.ndarray,
    eta: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One optimistic OMD (ONPO) step: (log π_t, log π̂_t) → (log π_{t+1}, log π̂_{t+1})."""
    base = (1.0 - eta * tau) * log_hat + eta * tau * log_mu
    nxt = _normalize(base + eta * (P @ np.exp(log_pi)))
    return nxt, _normalize(base + eta * (P @ np.exp(nxt)))


def best_response(P: np.ndarray, mu: np.ndarray, tau: float) -> np.ndarray:
    """softmax(log μ + Pμ/τ) for τ > 0; uniform over argmax_y (Pμ)_y for τ = 0."""
    u = P @ mu
    if tau > 0:
        z = np.log(mu) + u / tau
        return np.exp(z - logsumexp(z))
    top = np.isclose(u, u.max(), rtol=0.0, atol=1e-12)
    return top / top.sum()


def _checked(P: np.ndarray, mu: np.ndarray, algorithm: str, steps: int | None) -> int:
    if algorithm not in ALGORITHMS:
        raise InputError(
            f"algorithm.name: {algorithm!r} is not a tabular algorithm; "
            f"use one of {', '.join(ALGORITHMS)}"
        )
    if P.ndim != 2 or P.shape[0] != P.shape[1] or mu.shape != (P.shape[0],):
        raise InputError(f"shapes do not match: P {P.shape}, μ {mu.shape}")
    steps = DEFAULT_STEPS if steps is None else int(steps)
    if steps < 1:
        raise InputError(f"algorithm.steps: must be ≥ 1; got {steps}")
    return steps


@dataclass(frozen=True)
class Schedules:
    """The checked per-step inputs of a run, t = 0 … T−1: ``etas[t]`` = η_t,
    ``taus[t]`` = τ_t and ``refresh[t]`` (``mpo``): the magnet becomes π_t before step t."""

    etas: np.ndarray
    taus: np.ndarray
    refresh: np.ndarray

    def __len__(self) -> int:
        return len(self.etas)

    def __getitem__(self, k: slice) -> Schedules:
        return Schedules(self.etas[k], self.taus[k], self.refresh[k])


def schedules(
    P: np.ndarray,
    mu: np.ndarray,
    *,
    algorithm: str,
    tau: float | Schedule,
    eta: float | str = "auto",
    steps: int | None = None,
    magnet_every: int | None = None,
) -> Schedules:
    """The checked float64 :class:`Schedules` (η_t, τ_t, magnet refreshes) for t < T.

    :class:`InputError` for an unknown algorithm, mismatched shapes, T < 1, η ≤ 0 or
    η_t τ_t > 1 at some t (except ``mpo``). ``best_response`` is one step: T = 1, τ_0 = τ
    at the last step (a schedule's end) and η_0 = NaN (unused). ``magnet_every`` (``mpo``
    only; ``None``: the magnet stays μ) sets ``refresh[t]`` at t = K, 2K, ….
    """
    P = np.asarray(P, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    steps = _checked(P, mu, algorithm, steps)
    if magnet_every is not None and algorithm != "mpo":
        raise InputError(f"algorithm.magnet_every: applies to mpo only, not {algorithm!r}")
    if magnet_every is not None and magnet_every < 1:
        raise InputError(f"algorithm.magnet_every: must be ≥ 1; got {magnet_every}")
    if algorithm == "best_response":
        return Schedules(
            np.full(1, np.nan), np.array([tau_at(tau, steps, steps)]), np.zeros(1, bool)
        )
    eta_t = eta_schedule(algorithm, tau, eta, steps, P.shape[0], P)
    etas, taus = np.empty(steps), np.empty(steps)
    for t in range(steps):
        tau_t, e = tau_at(tau, t, steps), eta_t(t)
        if algorithm != "mpo":
            _check_eta_tau(e, tau_t, t)
        etas[t], taus[t] = e, tau_t
    ts = np.arange(steps)
    refresh = (ts > 0) & (ts % magnet_every == 0) if magnet_every else np.zeros(steps, bool)
    return Schedules(etas, taus, refresh)


def initial_log_policy(mu: np.ndarray) -> np.ndarray:
    """log π_0 = log μ, renormalised (also the start of the auxiliary vector)."""
    return _normalize(np.log(np.asarray(mu, dtype=np.float64)))


class TrajectoryFn(Protocol):
    """A backend's numeric steps: from (log π_s, log a_s) apply the steps of ``sched``
    (η, τ, refresh = ``sched.etas[k]``, ``sched.taus[k]``, ``sched.refresh[k]``) and return
    (log π_{s+1} … π_{s+K}, log a_{s+K}) as float64 NumPy arrays of shapes (K, n) and (n,),
    K = ``len(sched)``. a is the auxiliary vector: ``mpo``'s magnet (set to π_t before a
    step with ``refresh``), ``onpo``'s secondary iterate π̂; the other algorithms return it
    unchanged. The steps are :func:`nash_md_step`, :func:`omd_step` (``omd``,
    ``self_play``, ``inpo``, ``sppo``), :func:`egpo_step`, :func:`mpo_step`,
    :func:`onpo_step`; ``best_response`` (K = 1) returns log :func:`best_response`
    (P, μ, τ_0). The schedules are already checked.
    """

    def __call__(
        self,
        P: np.ndarray,
        mu: np.ndarray,
        log_pi: np.ndarray,
        log_aux: np.ndarray,
        sched: Schedules,
        algorithm: str,
    ) -> tuple[np.ndarray, np.ndarray]: ...


def _steps(
    P: np.ndarray,
    mu: np.ndarray,
    log_pi: np.ndarray,
    log_aux: np.ndarray,
    sched: Schedules,
    algorithm: str,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (log π_{s+1}, log a_{s+1}), (log π_{s+2}, log a_{s+2}), … (the NumPy steps)."""
    if algorithm == "best_response":
        with np.errstate(divide="ignore"):
            yield np.log(best_response(P, mu, float(sched.taus[0]))), log_aux
        return
    log_mu = np.log(mu)
    plain = {"nash_md": nash_md_step, "egpo": egpo_step}.get(algorithm, omd_step)
    for e, tau_t, fresh in zip(
        sched.etas.tolist(), sched.taus.tolist(), sched.refresh.tolist(), strict=True
    ):
        if algorithm == "mpo":
            if fresh:
                log_aux = log_pi
            log_pi = mpo_step(log_pi, log_aux, P, e, tau_t)
        elif algorithm == "onpo":
            log_pi, log_aux = onpo_step(log_pi, log_aux, log_mu, P, e, tau_t)
        else:
            log_pi = plain(log_pi, log_mu, P, e, tau_t)
        yield log_pi, log_aux


def trajectory(
    P: np.ndarray,
    mu: np.ndarray,
    log_pi: np.ndarray,
    log_aux: np.ndarray,
    sched: Schedules,
    algorithm: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy :class:`TrajectoryFn`: (log π_{s+1} … π_{s+K}, log a_{s+K})."""
    rows, aux = [], log_aux
    for row, aux in _steps(P, mu, log_pi, log_aux, sched, algorithm):  # noqa: B007
        rows.append(row)
    stacked = np.stack(rows) if rows else np.empty((0, np.shape(mu)[0]))
    return stacked, aux


def iterate(
    P: np.ndarray,
    mu: np.ndarray,
    *,
    algorithm: str,
    tau: float | Schedule,
    eta: float | str = "auto",
    steps: int | None = None,
    magnet_every: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(t, log π_t)`` for t = 0 … T (T = ``steps``, 1 for ``best_response``)."""
    P = np.asarray(P, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    sched = schedules(
        P, mu, algorithm=algorithm, tau=tau, eta=eta, steps=steps, magnet_every=magnet_every
    )
    log_pi = initial_log_policy(mu)
    yield 0, log_pi
    for t, (row, _) in enumerate(_steps(P, mu, log_pi, log_pi, sched, algorithm), start=1):
        yield t, row


@dataclass(frozen=True)
class Trajectory:
    """Recorded iterates: ``steps[k]`` is the step of ``log_policies[k]``; the last row is
    the final policy π_T."""

    steps: np.ndarray
    log_policies: np.ndarray

    @property
    def policies(self) -> np.ndarray:
        return np.exp(self.log_policies)

    @property
    def final(self) -> np.ndarray:
        return np.exp(self.log_policies[-1])


def run(
    P: np.ndarray,
    mu: np.ndarray,
    *,
    algorithm: str,
    tau: float | Schedule,
    eta: float | str = "auto",
    steps: int | None = None,
    record_every: int = 1,
    magnet_every: int | None = None,
) -> Trajectory:
    """Run a tabular algorithm; record π_0, every ``record_every``-th iterate and π_T."""
    if record_every < 1:
        raise InputError(f"record_every: must be ≥ 1; got {record_every}")
    ts: list[int] = []
    rows: list[np.ndarray] = []
    last: tuple[int, np.ndarray] | None = None
    for t, log_pi in iterate(
        P, mu, algorithm=algorithm, tau=tau, eta=eta, steps=steps, magnet_every=magnet_every
    ):
        last = (t, log_pi)
        if t % record_every == 0:
            ts.append(t)
            rows.append(log_pi)
    assert last is not None
    if ts[-1] != last[0]:
        ts.append(last[0])
        rows.append(last[1])
    return Trajectory(np.array(ts), np.array(rows))
