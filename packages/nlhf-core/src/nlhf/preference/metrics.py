"""Held-out metrics of a preference model P(y≻y'|x), in float64 NumPy, shared by every
backend's ``task: preference_model`` trainer (the model only has to score pairs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from nlhf.data.pairs import Pair

ECE_BINS = 10
"""Equal-width probability bins of the expected calibration error."""
EVAL_BATCH = 16
"""Comparisons scored per call while evaluating."""


class PairScorer(Protocol):
    """Anything that scores comparisons: P(y≻y'|x) for each (prompt, y, y')."""

    def prob(
        self,
        prompts: Sequence[str],
        ys: Sequence[str],
        y_primes: Sequence[str],
        batch_size: int | None = None,
    ) -> ArrayLike: ...


def calibration_error(probs: ArrayLike, targets: ArrayLike, bins: int = ECE_BINS) -> float:
    """Expected calibration error of binary predictions (Naeini, Cooper & Hauskrecht 2015,
    "Obtaining Well Calibrated Probabilities Using Bayesian Binning"; Guo et al. 2017,
    "On Calibration of Modern Neural Networks"):

    ECE = Σ_b (n_b/N)·|mean_{i∈b} p_i − mean_{i∈b} t_i|

    over ``bins`` equal-width bins of p ∈ [0, 1] (bin b holds b/bins ≤ p < (b+1)/bins, the
    last one also p = 1); soft targets t ∈ [0, 1] are allowed. 0 for no predictions."""
    p = np.asarray(probs, np.float64).reshape(-1)
    t = np.asarray(targets, np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"calibration_error: {p.size} probabilities but {t.size} targets")
    if bins < 1:
        raise ValueError(f"calibration_error: bins must be ≥ 1, got {bins}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("calibration_error: probabilities must lie in [0, 1]")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - t[sel].mean())
    return float(ece)


def pair_metrics(p_fwd: ArrayLike, p_bwd: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Metrics of P = P(chosen ≻ rejected) (``p_fwd``) and P' = P(rejected ≻ chosen)
    (``p_bwd``, scored separately) against the labels p = P(chosen ≻ rejected):

    - accuracy = mean[(P > ½) = (p > ½)] over the pairs with p ≠ ½ (0 if there are none);
    - log_loss = mean −[p log P + (1−p) log(1−P)], P clipped to [1e-12, 1 − 1e-12];
    - ece = :func:`calibration_error` over both orders, (P, p) and (P', 1−p);
    - antisymmetry_max_error = max |P + P' − 1|;
    - mean_prob_chosen = mean P; pairs = the number of pairs."""
    fwd = np.asarray(p_fwd, np.float64).reshape(-1)
    bwd = np.asarray(p_bwd, np.float64).reshape(-1)
    lab = np.asarray(labels, np.float64).reshape(-1)
    if not fwd.size == bwd.size == lab.size:
        raise ValueError(
            f"pair_metrics: {fwd.size} forward and {bwd.size} backward probabilities for "
            f"{lab.size} labels"
        )
    if not fwd.size:
        return {}
    clipped = np.clip(fwd, 1e-12, 1 - 1e-12)
    log_loss = -(lab * np.log(clipped) + (1 - lab) * np.log(1 - clipped)).mean()
    decided = lab != 0.5
    hits = (fwd > 0.5) == (lab > 0.5)
    accuracy = hits[decided].mean() if decided.any() else 0.0
    return {
        "accuracy": float(accuracy),
        "log_loss": float(log_loss),
        "ece": calibration_error(np.concatenate([fwd, bwd]), np.concatenate([lab, 1 - lab])),
        "antisymmetry_max_error": float(np.abs(fwd + bwd - 1).max()),
        "mean_prob_chosen": float(fwd.mean()),
        "pairs": int(fwd.size),
    }


def evaluate_pairs(
    model: PairScorer, pairs: Sequence[Pair], batch_size: int = EVAL_BATCH
) -> dict[str, float]:
    """:func:`pair_metrics` of ``model`` on held-out ``pairs``: P(chosen ≻ rejected) and
    P(rejected ≻ chosen) in two separate calls of ``model.prob`` (so the antisymmetry
    error measures the model, not one shared forward). Empty ``pairs`` give ``{}``."""
    if not pairs:
        return {}
    prompts = [q.prompt for q in pairs]
    chosen = [q.chosen for q in pairs]
    rejected = [q.rejected for q in pairs]
    p_fwd = model.prob(prompts, chosen, rejected, batch_size)
    p_bwd = model.prob(prompts, rejected, chosen, batch_size)
    return pair_metrics(p_fwd, p_bwd, [q.label for q in pairs])
