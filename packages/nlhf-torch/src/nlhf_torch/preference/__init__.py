"""Preference models P(y≻y'|x) on the torch backend: the trainable networks (:mod:`.model`),
``task: preference_model`` (:mod:`.train`), serving a trained model (:mod:`.serve`) and the
runtime preferences of ``task: nash`` and ``task: evaluate`` (:mod:`.scorers`). The
backend-agnostic parts are in :mod:`nlhf.preference`. Heavy imports happen in the
submodules."""

from __future__ import annotations

__all__ = ["load_pairwise_model"]


def __getattr__(name: str):  # lazy: importing the package does not import transformers
    if name == "load_pairwise_model":
        from nlhf_torch.preference.serve import load_pairwise_model

        return load_pairwise_model
    raise AttributeError(name)
