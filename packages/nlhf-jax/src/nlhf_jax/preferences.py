"""Preferences P(y≻y'|x) for the jax trainer, built from the spec's ``preference``
section. Each object has ``prob(prompts, ys, yps) -> np.ndarray`` (float64, in [0, 1])
and ``reward(prompts, ys) -> np.ndarray`` (for ``rlhf_pg``; raises where there is none).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nlhf.errors import InputError, NLHFError


class OraclePreference:
    """A plugin-registered preference function (``preference: {name: oracle}``)."""

    def __init__(self, spec: Any, plugins: Any = None) -> None:
        from nlhf.plugins import get_plugins

        registry = (plugins or get_plugins()).oracles
        registry.get(spec.function)  # UnknownNameError with did-you-mean
        try:
            self.fn = registry.create(spec.function, **spec.options)
        except TypeError as exc:
            raise InputError(f"preference.options: oracle {spec.function!r}: {exc}") from exc
        self.name = spec.function

    def _check(self, values: Any, n: int) -> np.ndarray:
        p = np.asarray(values, np.float64).reshape(-1)
        if p.size != n or not np.all(np.isfinite(p)) or (p < 0).any() or (p > 1).any():
            raise NLHFError(f"oracle {self.name!r}: expected {n} probabilities in [0, 1]")
        return p

    def prob(self, prompts: list[str], ys: list[str], yps: list[str]) -> np.ndarray:
        return self._check(self.fn(prompts, ys, yps), len(ys))

    def reward(self, prompts: list[str], ys: list[str]) -> np.ndarray:
        if not callable(getattr(self.fn, "reward", None)):
            raise InputError(f"algorithm.name: rlhf_pg needs an oracle with `reward`; "
                             f"{self.name!r} has none")  # fmt: skip
        return np.asarray(self.fn.reward(prompts, ys), np.float64).reshape(-1)


SUPPORTED = ("oracle",)


def check_preference(spec: Any) -> None:
    """Fail early (before any model loads) on a preference the jax backend cannot build."""
    if spec.name not in SUPPORTED:
        raise NLHFError(
            f"preference.name: {spec.name!r} is not supported by the jax backend "
            f"yet (supported: {', '.join(SUPPORTED)}); use --backend torch"
        )


def build_preference(spec: Any, plugins: Any = None) -> Any:
    """The preference object for ``spec`` (the run spec's ``preference`` section)."""
    check_preference(spec)
    return OraclePreference(spec, plugins)
