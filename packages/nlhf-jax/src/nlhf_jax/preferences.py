"""Temporary re-exports, kept only until the jax Nash trainer imports
:func:`nlhf_jax.preference.scorers.build_scorer` (``check_preference`` is superseded by
the capability checks of ``nlhf validate``)."""

from __future__ import annotations

from typing import Any

from nlhf.preference.scorers import check_supported

from nlhf_jax.preference.scorers import SUPPORTED, build_scorer

__all__ = ["SUPPORTED", "build_preference", "check_preference"]


def build_preference(spec: Any, plugins: Any = None) -> Any:
    """``build_scorer(spec, plugins=plugins)`` of a spec's ``preference`` section."""
    return build_scorer(spec, plugins=plugins)


def check_preference(spec: Any) -> None:
    """A missing or unsupported ``preference`` section is an error before any model loads."""
    check_supported(spec, SUPPORTED, "jax")
