"""Serve a trained preference model: ``preference: {name: pairwise_model, path: ...}`` in
``task: nash`` specs and the evaluation task call ``load_pairwise_model(path).prob``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nlhf_torch.preference.model import PreferenceModel, load_preference_model


def load_pairwise_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    dtype: str = "float32",
) -> PreferenceModel:
    """Load a preference model directory for scoring (eval mode, no gradients).

    Returns an object with ``prob(prompts, ys, y_primes) -> list[float]`` giving
    P(y≻y'|x) = σ(v(x,y,y') − v(x,y',y)) for a pairwise model and σ(r(x,y) − r(x,y'))
    for a Bradley–Terry reward model, scored ``batch_size`` comparisons at a time;
    ``pair_logits`` gives z = logit P as a tensor. ``max_length`` caps the token limit
    saved with the model. Directories without ``nlhf_preference.json`` load as a
    zero-shot judge (causal LM) or a BT reward model (1-label classifier).
    """
    model = load_preference_model(path, device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    model.batch_size = batch_size
    if max_length is not None:
        model.config.max_length = min(model.config.max_length, max_length)
    return model


def from_spec(preference: Any, device: str | torch.device = "cpu") -> PreferenceModel:
    """Build the scorer of a ``PairwiseModelPreference`` / ``BradleyTerryPreference``."""
    return load_pairwise_model(
        preference.path,
        device,
        batch_size=preference.batch_size,
        max_length=preference.max_length,
        dtype=preference.dtype,
    )
