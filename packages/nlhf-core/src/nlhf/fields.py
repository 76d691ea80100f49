"""Strict number types of the run spec's fields (used by :mod:`nlhf.spec.models` and the
algorithm parameter models of :mod:`nlhf.algorithms`).

pydantic's default (lax) mode reads ``steps: true`` as 1 and ``steps: 1e3`` as 1000, and
accepts ``lr: .inf``; a spec field that counts something is a strict integer instead
(no bools, no floats), bounded by :data:`MAX_COUNT` so that every backend can hold it, and
every real-valued field is a finite float (ints are accepted: ``tau: 1`` is 1.0).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, FiniteFloat, Strict

MAX_COUNT = 2**63 - 1
"""Largest count (steps, sizes, lengths): a signed 64-bit integer, what NumPy, torch and
jax index with."""
MAX_SEED = 2**32 - 1
"""Largest seed: jax's ``PRNGKey`` keeps only the low 32 bits of a seed when 64-bit mode is
off, so larger seeds would silently collide."""


def _fits_int64(value: int) -> int:
    if abs(value) > MAX_COUNT:
        raise ValueError(f"must fit a 64-bit integer (at most 2**63 - 1); got {value:.3g}")
    return value


_Int64 = AfterValidator(_fits_int64)
Int = Annotated[int, Strict(), _Int64]
"""An integer (no bools, no floats such as ``1e3``) that fits 64 bits."""
PositiveInt = Annotated[int, Strict(), Field(gt=0), _Int64]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0), _Int64]
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]
Float = Annotated[FiniteFloat, Strict()]
"""A finite real number (``.inf``/``.nan`` and bools are errors; ints are read as floats)."""
PositiveFloat = Annotated[FiniteFloat, Strict(), Field(gt=0)]
NonNegativeFloat = Annotated[FiniteFloat, Strict(), Field(ge=0)]
Probability = Annotated[FiniteFloat, Strict(), Field(ge=0, le=1)]
Fraction = Annotated[FiniteFloat, Strict(), Field(ge=0, lt=1)]
"""A number in [0, 1): dropout, EMA decay, Adam betas, held-out fractions."""
