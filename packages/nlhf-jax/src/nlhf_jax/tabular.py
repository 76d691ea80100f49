"""Tabular Nash-MD / OMD / self-play / best response on JAX arrays (paper §5).

The schedules η_t, τ_t, their checks (η_t τ_t ≤ 1), the outputs and the metrics are
core's (:func:`nlhf.tabular.runner.train_spec`); this module supplies only the numeric
steps, :func:`trajectory`, as one jitted ``jax.lax.scan`` per chunk of steps:

- ``nash_md``: log π_t^μ = log_softmax((1−η_t τ_t) log π_t + η_t τ_t log μ),
  log π_{t+1} = log_softmax(log π_t^μ + η_t P π_t^μ);
- ``omd`` / ``self_play``:
  log π_{t+1} = log_softmax((1−η_t τ_t) log π_t + η_t τ_t log μ + η_t P π_t);
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

__all__ = ["train_tabular", "trajectory"]

_TIE_ATOL = 1e-12  # responses within this of max_y (Pμ)_y tie (as numpy's best_response)


@functools.partial(jax.jit, static_argnames="nash_md")
def _scan(
    P: jax.Array,
    log_mu: jax.Array,
    log_pi: jax.Array,
    etas: jax.Array,
    taus: jax.Array,
    nash_md: bool,
) -> jax.Array:
    """log π_{s+1} … π_{s+K} from log π_s: one ``lax.scan`` over (η_t, τ_t); Nash-MD
    steps if ``nash_md``, else OMD / self-play steps."""

    def md(lp: jax.Array, et: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        eta, tau = et
        log_mix = jax.nn.log_softmax((1.0 - eta * tau) * lp + eta * tau * log_mu)
        nxt = jax.nn.log_softmax(log_mix + eta * (P @ jnp.exp(log_mix)))
        return nxt, nxt

    def omd(lp: jax.Array, et: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        eta, tau = et
        nxt = jax.nn.log_softmax(
            (1.0 - eta * tau) * lp + eta * tau * log_mu + eta * (P @ jnp.exp(lp))
        )
        return nxt, nxt

    _, rows = jax.lax.scan(md if nash_md else omd, log_pi, (etas, taus))
    return rows


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
    etas: np.ndarray,
    taus: np.ndarray,
    algorithm: str,
) -> np.ndarray:
    """The jax :class:`~nlhf.tabular.dynamics.TrajectoryFn`: log π_{s+1} … π_{s+K} as a
    float64 NumPy array of shape (K, n), K = ``len(etas)``, computed in float64 JAX."""
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        P_, mu_ = jnp.asarray(P, jnp.float64), jnp.asarray(mu, jnp.float64)
        if algorithm == "best_response":
            rows = _best_response(P_, mu_, float(taus[0]))[None, :]
        else:
            rows = _scan(
                P_,
                jnp.log(mu_),
                jnp.asarray(log_pi, jnp.float64),
                jnp.asarray(etas, jnp.float64),
                jnp.asarray(taus, jnp.float64),
                nash_md=algorithm == "nash_md",
            )
        return np.asarray(rows, dtype=np.float64)


def train_tabular(spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """``train`` of a tabular spec on the jax backend: :func:`nlhf.tabular.runner.train_spec`
    (same outputs, ``"backend": "jax"`` in the summary) with :func:`trajectory`."""
    from nlhf.tabular.runner import train_spec

    return train_spec(spec, Path(output), resume=resume, trajectory=trajectory, backend="jax")
