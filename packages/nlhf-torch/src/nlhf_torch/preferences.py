"""Temporary re-exports, kept only until the torch Nash trainer imports
:func:`nlhf_torch.preference.scorers.build_scorer` and :func:`nlhf.training.has_reward`."""

from __future__ import annotations

from typing import Any

from nlhf.training.algorithms import has_reward

from nlhf_torch.preference.scorers import Device, build_scorer

__all__ = ["build_preference", "has_reward"]


def build_preference(spec: Any, device: Device = "cpu", *, plugins: Any = None) -> Any:
    """``build_scorer(spec.preference, device, plugins=plugins)`` of a run spec."""
    return build_scorer(spec.preference, device, plugins=plugins)
