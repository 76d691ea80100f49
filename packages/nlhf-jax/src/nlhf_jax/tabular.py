"""The tabular dynamics on JAX arrays (:mod:`nlhf.tabular.dynamics` has each update and its
source).

The schedules η_t, τ_t, the magnet refreshes, their checks, the outputs and the metrics are
core's (:func:`nlhf.tabular.runner.train_spec`); this module supplies only the numeric
steps, :func:`trajectory`, as one jitted ``jax.lax.scan`` per chunk of steps over the carry
(log π_t, log a_t) (norm = ``log_softmax``, b_t = (1−η_t τ_t)·log π_t + η_t τ_t·log μ):

- ``nash_md``: log π_t^μ = norm(b_t), log π_{t+1} = norm(log π_t^μ + η_t P π_t^μ);
- ``omd`` / ``self_play`` / ``inpo`` / ``sppo``: log π_{t+1} = norm(b_t + η_t P π_t);
- ``egpo``: log π_{t+½} = norm(b_t + η_t P π_t), log π_{t+1} = norm(b_t + η_t P π_{t+½});
- ``mpo``: log π_{t+1} = norm((log π_t + η_t τ_t log m + η_t P π_t)/(1 + η_t τ_t)), the
  magnet a = m set to π_t before a refresh step;
- ``onpo``: b̂_t = (1−η_t τ_t)·log π̂_t + η_t τ_t·log μ, log π_{t+1} = norm(b̂_t + η_t P π_t),
  log π̂_{t+1} = norm(b̂_t + η_t P π_{t+1}) (a = π̂);
- ``best_response``: log softmax(log μ + Pμ/τ) for τ > 0, uniform over argmax_y (Pμ)_y
  for τ = 0.

Everything runs in float64 under the scoped ``jax.enable_x64(True)`` context (the global
switch is never flipped) on the CPU device: tabular problems are tiny and sequential, and
TPUs have no float64.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from nlhf.tabular.dynamics import Schedules

__all__ = ["train_tabular", "trajectory"]

_TIE_ATOL = 1e-12  # responses within this of max_y (Pμ)_y tie (as numpy's best_response)

Carry = tuple[jax.Array, jax.Array]
Step = tuple[jax.Array, jax.Array, jax.Array]


def _step(algorithm: str, P: jax.Array, log_mu: jax.Array, carry: Carry, x: Step) -> Carry:
    """One step of ``algorithm`` on (log π_t, log a_t) with (η_t, τ_t, refresh_t)."""
    norm = jax.nn.log_softmax
    lp, aux = carry
    eta, tau, fresh = x
    if algorithm == "nash_md":
        log_mix = norm((1.0 - eta * tau) * lp + eta * tau * log_mu)
        return norm(log_mix + eta * (P @ jnp.exp(log_mix))), aux
    if algorithm == "egpo":
        base = (1.0 - eta * tau) * lp + eta * tau * log_mu
        half = norm(base + eta * (P @ jnp.exp(lp)))
        return norm(base + eta * (P @ jnp.exp(half))), aux
    if algorithm == "mpo":
        aux = jnp.where(fresh, lp, aux)
        return norm((lp + eta * tau * aux + eta * (P @ jnp.exp(lp))) / (1.0 + eta * tau)), aux
    if algorithm == "onpo":
        base = (1.0 - eta * tau) * aux + eta * tau * log_mu
        nxt = norm(base + eta * (P @ jnp.exp(lp)))
        return nxt, norm(base + eta * (P @ jnp.exp(nxt)))
    # omd, self_play, inpo, sppo
    return norm((1.0 - eta * tau) * lp + eta * tau * log_mu + eta * (P @ jnp.exp(lp))), aux


@functools.partial(jax.jit, static_argnames="algorithm")
def _scan(
    P: jax.Array,
    log_mu: jax.Array,
    log_pi: jax.Array,
    log_aux: jax.Array,
    etas: jax.Array,
    taus: jax.Array,
    refresh: jax.Array,
    algorithm: str,
) -> tuple[jax.Array, jax.Array]:
    """(log π_{s+1} … π_{s+K}, log a_{s+K}) from (log π_s, log a_s): one ``lax.scan``."""

    def body(carry: Carry, x: Step) -> tuple[Carry, jax.Array]:
        nxt = _step(algorithm, P, log_mu, carry, x)
        return nxt, nxt[0]

    (_, aux), rows = jax.lax.scan(body, (log_pi, log_aux), (etas, taus, refresh))
    return rows, aux


def _best_response(P: jax.Array, mu: jax.Array, tau: float) -> jax.Array:
    """log softmax(log μ + Pμ/τ) (τ > 0); log of uniform over argmax_y (Pμ)_y (τ = 0)."""
    u = P @ mu
    if tau > 0:
        return jax.nn.log_softmax(jnp.log(mu) + u / tau)
    top = (jnp.abs(u - jnp.max(u)) <= _TIE_ATOL).astype(u.dtype)
    return jnp.log(top / jnp.sum(top))


def trajectory(
    P: np.ndarray,
    mu: np.ndarray,
    log_pi: np.ndarray,
    log_aux: np.ndarray,
    sched: Schedules,
    algorithm: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The jax :class:`~nlhf.tabular.dynamics.TrajectoryFn`: (log π_{s+1} … π_{s+K},
    log a_{s+K}) as float64 NumPy arrays of shapes (K, n) and (n,), computed in float64
    JAX."""
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        P_, mu_ = jnp.asarray(P, jnp.float64), jnp.asarray(mu, jnp.float64)
        if algorithm == "best_response":
            rows = _best_response(P_, mu_, float(sched.taus[0]))[None, :]
            return np.asarray(rows, dtype=np.float64), log_aux
        rows, aux = _scan(
            P_,
            jnp.log(mu_),
            jnp.asarray(log_pi, jnp.float64),
            jnp.asarray(log_aux, jnp.float64),
            jnp.asarray(sched.etas, jnp.float64),
            jnp.asarray(sched.taus, jnp.float64),
            jnp.asarray(sched.refresh, bool),
            algorithm=algorithm,
        )
        return np.asarray(rows, dtype=np.float64), np.asarray(aux, dtype=np.float64)


def train_tabular(spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """``train`` of a tabular spec on the jax backend: :func:`nlhf.tabular.runner.train_spec`
    (same outputs, ``"backend": "jax"`` in the summary) with :func:`trajectory`."""
    from nlhf.tabular.runner import train_spec

    return train_spec(spec, Path(output), resume=resume, trajectory=trajectory, backend="jax")
