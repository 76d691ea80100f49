"""The tabular dynamics on torch tensors (:mod:`nlhf.tabular.dynamics` has each update and
its source).

The schedules η_t, τ_t, the magnet refreshes, their checks, the outputs and the metrics are
core's (:func:`nlhf.tabular.runner.train_spec`); this module supplies only the numeric
steps, :func:`trajectory`, on float64 CPU tensors (norm = ``log_softmax``, b_t =
(1−η_t τ_t)·log π_t + η_t τ_t·log μ):

- ``nash_md``: log π_t^μ = norm(b_t), log π_{t+1} = norm(log π_t^μ + η_t P π_t^μ);
- ``omd`` / ``self_play`` / ``inpo`` / ``sppo``: log π_{t+1} = norm(b_t + η_t P π_t);
- ``egpo``: log π_{t+½} = norm(b_t + η_t P π_t), log π_{t+1} = norm(b_t + η_t P π_{t+½});
- ``mpo``: log π_{t+1} = norm((log π_t + η_t τ_t log m + η_t P π_t)/(1 + η_t τ_t)), the
  magnet m set to π_t before a refresh step;
- ``onpo``: b̂_t = (1−η_t τ_t)·log π̂_t + η_t τ_t·log μ, log π_{t+1} = norm(b̂_t + η_t P π_t),
  log π̂_{t+1} = norm(b̂_t + η_t P π_{t+1});
- ``best_response``: log softmax(log μ + Pμ/τ) for τ > 0, uniform over argmax_y (Pμ)_y
  for τ = 0.

Tabular problems are tiny and sequential, so they run on the CPU whatever the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from nlhf.tabular.dynamics import Schedules

__all__ = ["train_tabular", "trajectory"]

_TIE_ATOL = 1e-12  # responses within this of max_y (Pμ)_y tie (as numpy's best_response)


def _best_response(P: torch.Tensor, mu: torch.Tensor, tau: float) -> torch.Tensor:
    """log softmax(log μ + Pμ/τ) (τ > 0); log of uniform over argmax_y (Pμ)_y (τ = 0)."""
    u = P @ mu
    if tau > 0:
        return torch.log_softmax(torch.log(mu) + u / tau, dim=-1)
    top = ((u - u.max()).abs() <= _TIE_ATOL).to(u.dtype)
    return torch.log(top / top.sum())


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=-1)


@torch.no_grad()
def trajectory(
    P: np.ndarray,
    mu: np.ndarray,
    log_pi: np.ndarray,
    log_aux: np.ndarray,
    sched: Schedules,
    algorithm: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The torch :class:`~nlhf.tabular.dynamics.TrajectoryFn`: (log π_{s+1} … π_{s+K},
    log a_{s+K}) as float64 NumPy arrays of shapes (K, n) and (n,), computed in float64
    torch."""
    f64 = torch.float64
    P_, mu_ = torch.as_tensor(P, dtype=f64), torch.as_tensor(mu, dtype=f64)
    if algorithm == "best_response":
        return _best_response(P_, mu_, float(sched.taus[0]))[None, :].numpy(), log_aux
    log_mu = torch.log(mu_)
    lp = torch.as_tensor(log_pi, dtype=f64)
    aux = torch.as_tensor(log_aux, dtype=f64)
    rows = torch.empty((len(sched), P_.shape[0]), dtype=f64)
    steps = zip(sched.etas.tolist(), sched.taus.tolist(), sched.refresh.tolist(), strict=True)
    for k, (eta, tau, fresh) in enumerate(steps):
        if algorithm == "nash_md":
            log_mix = _norm((1.0 - eta * tau) * lp + eta * tau * log_mu)
            lp = _norm(log_mix + eta * (P_ @ log_mix.exp()))
        elif algorithm == "egpo":
            base = (1.0 - eta * tau) * lp + eta * tau * log_mu
            half = _norm(base + eta * (P_ @ lp.exp()))
            lp = _norm(base + eta * (P_ @ half.exp()))
        elif algorithm == "mpo":
            if fresh:
                aux = lp
            lp = _norm((lp + eta * tau * aux + eta * (P_ @ lp.exp())) / (1.0 + eta * tau))
        elif algorithm == "onpo":
            base = (1.0 - eta * tau) * aux + eta * tau * log_mu
            lp = _norm(base + eta * (P_ @ lp.exp()))
            aux = _norm(base + eta * (P_ @ lp.exp()))
        else:  # omd, self_play, inpo, sppo
            lp = _norm((1.0 - eta * tau) * lp + eta * tau * log_mu + eta * (P_ @ lp.exp()))
        rows[k] = lp
    return rows.numpy(), aux.numpy()


def train_tabular(spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """``train`` of a tabular spec on the torch backend: :func:`nlhf.tabular.runner.train_spec`
    (same outputs, ``"backend": "torch"`` in the summary) with :func:`trajectory`."""
    from nlhf.tabular.runner import train_spec

    return train_spec(spec, Path(output), resume=resume, trajectory=trajectory, backend="torch")
