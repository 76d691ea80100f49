"""Tabular learning dynamics (paper §5), computed in log space, starting at π_0 = μ.

- ``nash_md`` (paper §5, Nash-MD):
  π_t^μ ∝ π_t^(1−η_t τ) μ^(η_t τ);  π_{t+1}(y) ∝ π_t^μ(y) exp(η_t P(y ≻ π_t^μ)).
  ``eta: auto`` = the paper's η_t = 2/(τ(t+2)), with the last-iterate guarantee
  KL(π*_τ‖π_T) ≤ 8/(τ²(T+1)) (paper §5).
- ``omd`` (regularised online mirror descent, the paper's baseline):
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

Every update needs η_t τ ≤ 1 (the exponent 1 − η_t τ of π_t must stay ≥ 0).

Backends: the schedules and checks live here (:func:`schedules` gives the checked arrays
η_t, τ_t for t < T); a backend supplies only the numeric steps, a :class:`TrajectoryFn`
on its own arrays (:func:`trajectory` is NumPy's), which
:func:`nlhf.tabular.runner.train_spec` drives.
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

Algorithm = Literal["nash_md", "omd", "self_play", "best_response"]
ALGORITHMS: tuple[str, ...] = ("nash_md", "omd", "self_play", "best_response")
DEFAULT_STEPS = 1000


def _normalize(log_p: np.ndarray) -> np.ndarray:
    """log p − log Σ exp(log p) (max-shifted; ~10× faster than scipy's logsumexp here)."""
    m = np.max(log_p)
    return log_p - (m + np.log(np.sum(np.exp(log_p - m))))


def hedge_eta(n: int, steps: int) -> float:
    """√(8 ln n / T): the Hedge step size with regret ≤ √(T ln n / 2) for payoffs in [0, 1]."""
    return math.sqrt(8.0 * math.log(n) / max(steps, 1))


def tau_at(tau: float | Schedule, step: int, steps: int) -> float:
    """τ at integer ``step`` (a float or a :class:`~nlhf.algorithms.schedules.Schedule`)."""
    return schedule_value(tau, step, steps)


def eta_schedule(
    algorithm: str, tau: float | Schedule, eta: float | str, steps: int, n: int
) -> Callable[[int], float]:
    """η_t as a function of the integer step t (see the module docstring for ``auto``)."""
    if eta != "auto":
        value = float(eta)
        if not value > 0:
            raise InputError(f"algorithm.eta: must be > 0 or 'auto'; got {eta!r}")
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
    """One Nash-MD step (paper §5) on normalised log-probabilities."""
    log_mix = _normalize((1.0 - eta * tau) * log_pi + eta * tau * log_mu)
    return _normalize(log_mix + eta * (P @ np.exp(log_mix)))


def omd_step(
    log_pi: np.ndarray, log_mu: np.ndarray, P: np.ndarray, eta: float, tau: float
) -> np.ndarray:
    """One regularised OMD / multiplicative-weights step on log-probabilities."""
    return _normalize((1.0 - eta * tau) * log_pi + eta * tau * log_mu + eta * (P @ np.exp(log_pi)))


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


def schedules(
    P: np.ndarray,
    mu: np.ndarray,
    *,
    algorithm: str,
    tau: float | Schedule,
    eta: float | str = "auto",
    steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The checked float64 arrays ``(etas, taus)`` = (η_t, τ_t) for t = 0 … T−1.

    :class:`InputError` for an unknown algorithm, mismatched shapes, T < 1, η ≤ 0 or
    η_t τ_t > 1 at some t. ``best_response`` is one step: T = 1, τ_0 = τ at the last
    step (a schedule's end) and η_0 = NaN (unused).
    """
    P = np.asarray(P, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    steps = _checked(P, mu, algorithm, steps)
    if algorithm == "best_response":
        return np.full(1, np.nan), np.array([tau_at(tau, steps, steps)])
    eta_t = eta_schedule(algorithm, tau, eta, steps, P.shape[0])
    etas, taus = np.empty(steps), np.empty(steps)
    for t in range(steps):
        tau_t, e = tau_at(tau, t, steps), eta_t(t)
        _check_eta_tau(e, tau_t, t)
        etas[t], taus[t] = e, tau_t
    return etas, taus


def initial_log_policy(mu: np.ndarray) -> np.ndarray:
    """log π_0 = log μ, renormalised."""
    return _normalize(np.log(np.asarray(mu, dtype=np.float64)))


class TrajectoryFn(Protocol):
    """A backend's numeric steps: from log π_s, apply the steps with
    (η, τ) = (``etas[k]``, ``taus[k]``) and return log π_{s+1} … π_{s+K} as a float64
    NumPy array of shape (K, n), K = ``len(etas)``. ``nash_md`` and ``omd`` /
    ``self_play`` use :func:`nash_md_step` / :func:`omd_step`; ``best_response`` (K = 1)
    returns log :func:`best_response` (P, μ, τ_0). The schedules are already checked.
    """

    def __call__(
        self,
        P: np.ndarray,
        mu: np.ndarray,
        log_pi: np.ndarray,
        etas: np.ndarray,
        taus: np.ndarray,
        algorithm: str,
    ) -> np.ndarray: ...


def _steps(
    P: np.ndarray,
    mu: np.ndarray,
    log_pi: np.ndarray,
    etas: np.ndarray,
    taus: np.ndarray,
    algorithm: str,
) -> Iterator[np.ndarray]:
    """Yield log π_{s+1}, log π_{s+2}, … from log π_s (the NumPy steps)."""
    if algorithm == "best_response":
        with np.errstate(divide="ignore"):
            yield np.log(best_response(P, mu, float(taus[0])))
        return
    log_mu = np.log(mu)
    step_fn = nash_md_step if algorithm == "nash_md" else omd_step
    for e, tau_t in zip(etas.tolist(), taus.tolist(), strict=True):
        log_pi = step_fn(log_pi, log_mu, P, e, tau_t)
        yield log_pi


def trajectory(
    P: np.ndarray,
    mu: np.ndarray,
    log_pi: np.ndarray,
    etas: np.ndarray,
    taus: np.ndarray,
    algorithm: str,
) -> np.ndarray:
    """The NumPy :class:`TrajectoryFn`: log π_{s+1} … π_{s+K}, shape (K, n)."""
    rows = list(_steps(P, mu, log_pi, etas, taus, algorithm))
    return np.stack(rows) if rows else np.empty((0, np.shape(mu)[0]))


def iterate(
    P: np.ndarray,
    mu: np.ndarray,
    *,
    algorithm: str,
    tau: float | Schedule,
    eta: float | str = "auto",
    steps: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(t, log π_t)`` for t = 0 … T (T = ``steps``, 1 for ``best_response``)."""
    P = np.asarray(P, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    etas, taus = schedules(P, mu, algorithm=algorithm, tau=tau, eta=eta, steps=steps)
    log_pi = initial_log_policy(mu)
    yield 0, log_pi
    yield from enumerate(_steps(P, mu, log_pi, etas, taus, algorithm), start=1)


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
) -> Trajectory:
    """Run a tabular algorithm; record π_0, every ``record_every``-th iterate and π_T."""
    if record_every < 1:
        raise InputError(f"record_every: must be ≥ 1; got {record_every}")
    ts: list[int] = []
    rows: list[np.ndarray] = []
    last: tuple[int, np.ndarray] | None = None
    for t, log_pi in iterate(P, mu, algorithm=algorithm, tau=tau, eta=eta, steps=steps):
        last = (t, log_pi)
        if t % record_every == 0:
            ts.append(t)
            rows.append(log_pi)
    assert last is not None
    if ts[-1] != last[0]:
        ts.append(last[0])
        rows.append(last[1])
    return Trajectory(np.array(ts), np.array(rows))
