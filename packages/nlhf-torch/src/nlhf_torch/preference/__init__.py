"""Preference models P(y≻y'|x) on the torch backend: train (``task: preference_model``),
evaluate and serve (issue 4). Heavy imports happen in the submodules."""

from __future__ import annotations

__all__ = ["load_pairwise_model"]


def __getattr__(name: str):  # lazy: importing the package does not import transformers
    if name == "load_pairwise_model":
        from nlhf_torch.preference.serve import load_pairwise_model

        return load_pairwise_model
    raise AttributeError(name)
