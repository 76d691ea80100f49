"""Tabular Nash-MD / OMD / self-play / best response on torch tensors (paper §5).

The schedules η_t, τ_t, their checks (η_t τ_t ≤ 1), the outputs and the metrics are
core's (:func:`nlhf.tabular.runner.train_spec`); this module supplies only the numeric
steps, :func:`trajectory`, on float64 CPU tensors:

- ``nash_md``: log π_t^μ = log_softmax((1−η_t τ_t) log π_t + η_t τ_t log μ),
  log π_{t+1} = log_softmax(log π_t^μ + η_t P π_t^μ);
- ``omd`` / ``self_play``:
  log π_{t+1} = log_softmax((1−η_t τ_t) log π_t + η_t τ_t log μ + η_t P π_t);
- ``best_response``: log softmax(log μ + Pμ/τ) for τ > 0, uniform over argmax_y (Pμ)_y
  for τ = 0.

Tabular problems are tiny and sequential, so they run on the CPU whatever the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["train_tabular", "trajectory"]

_TIE_ATOL = 1e-12  # responses within this of max_y (Pμ)_y tie (as numpy's best_response)


def _best_response(P: torch.Tensor, mu: torch.Tensor, tau: float) -> torch.Tensor:
    """log softmax(log μ + Pμ/τ) (τ > 0); log of uniform over argmax_y (Pμ)_y (τ = 0)."""
    u = P @ mu
    if tau > 0:
        return torch.log_softmax(torch.log(mu) + u / tau, dim=-1)
    top = ((u - u.max()).abs() <= _TIE_ATOL).to(u.dtype)
    return torch.log(top / top.sum())


@torch.no_grad()
def trajectory(
    P: np.ndarray,
    mu: np.ndarray,
    log_pi: np.ndarray,
    etas: np.ndarray,
    taus: np.ndarray,
    algorithm: str,
) -> np.ndarray:
    """The torch :class:`~nlhf.tabular.dynamics.TrajectoryFn`: log π_{s+1} … π_{s+K} as a
    float64 NumPy array of shape (K, n), K = ``len(etas)``, computed in float64 torch."""
    f64 = torch.float64
    P_, mu_ = torch.as_tensor(P, dtype=f64), torch.as_tensor(mu, dtype=f64)
    if algorithm == "best_response":
        return _best_response(P_, mu_, float(taus[0]))[None, :].numpy()
    log_mu = torch.log(mu_)
    lp = torch.as_tensor(log_pi, dtype=f64)
    rows = torch.empty((len(etas), P_.shape[0]), dtype=f64)
    nash_md = algorithm == "nash_md"
    for k, (eta, tau) in enumerate(zip(etas.tolist(), taus.tolist(), strict=True)):
        if nash_md:
            log_mix = torch.log_softmax((1.0 - eta * tau) * lp + eta * tau * log_mu, dim=-1)
            lp = torch.log_softmax(log_mix + eta * (P_ @ log_mix.exp()), dim=-1)
        else:
            lp = torch.log_softmax(
                (1.0 - eta * tau) * lp + eta * tau * log_mu + eta * (P_ @ lp.exp()), dim=-1
            )
        rows[k] = lp
    return rows.numpy()


def train_tabular(spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """``train`` of a tabular spec on the torch backend: :func:`nlhf.tabular.runner.train_spec`
    (same outputs, ``"backend": "torch"`` in the summary) with :func:`trajectory`."""
    from nlhf.tabular.runner import train_spec

    return train_spec(spec, Path(output), resume=resume, trajectory=trajectory, backend="torch")
