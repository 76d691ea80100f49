"""Schedules for β (mixture weight), τ (KL weight) and the learning rate, evaluated at an
integer step.

Indexing by an integer optimiser step (never a float epoch) avoids TRL #6801.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from nlhf.fields import Float, PositiveInt


class Schedule(BaseModel):
    """``value(step) = start + (end − start)·shape(min(step, steps)/steps)``.

    kind ``constant``: shape ≡ 0; ``linear``: shape(u) = u; ``cosine``:
    shape(u) = (1 − cos(πu))/2; ``exponential``: geometric interpolation
    start·(end/start)^u (start, end > 0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["constant", "linear", "cosine", "exponential"] = "linear"
    start: Float
    end: Float | None = None
    steps: PositiveInt | None = None
    """Steps over which to move from start to end; default: the run's total steps."""

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        if self.kind != "constant" and self.end is None:
            raise ValueError(f"a {self.kind} schedule needs `end`")
        if self.kind == "exponential" and (self.start <= 0 or (self.end or 0) <= 0):
            raise ValueError("an exponential schedule needs start > 0 and end > 0")
        return self

    def value(self, step: int, total_steps: int) -> float:
        if self.kind == "constant" or self.end is None:
            return self.start
        horizon = self.steps or max(total_steps, 1)
        u = min(max(step, 0), horizon) / horizon
        if self.kind == "linear":
            return self.start + (self.end - self.start) * u
        if self.kind == "cosine":
            return self.start + (self.end - self.start) * (1 - math.cos(math.pi * u)) / 2
        return self.start * (self.end / self.start) ** u

    def bounds(self) -> tuple[float, float]:
        values = (self.start, self.end if self.end is not None else self.start)
        return min(values), max(values)


ScheduleOrFloat = Float | Schedule


def schedule_value(value: ScheduleOrFloat, step: int, total_steps: int) -> float:
    """Evaluate a float-or-:class:`Schedule` spec field at integer ``step``."""
    if isinstance(value, Schedule):
        return value.value(step, total_steps)
    return float(value)


def schedule_bounds(value: ScheduleOrFloat) -> tuple[float, float]:
    if isinstance(value, Schedule):
        return value.bounds()
    return float(value), float(value)


def lr_multiplier(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor f(s) after ``s`` optimiser steps (lr_s = lr·f(s)): a linear
    warmup min(1, (s + 1)/warmup) for s < warmup, then ``constant`` 1, ``linear`` 1 − u or
    ``cosine`` ½(1 + cos πu), with u = min(1, (s − warmup)/(total − warmup)).

    The one formula of every trainer: torch wraps it in ``LambdaLR``, jax indexes the table
    :func:`lr_table` (so both backends use the same float64 values)."""

    def factor(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        u = min(max(s - warmup, 0) / max(total - warmup, 1), 1.0)
        if schedule == "linear":
            return 1.0 - u
        return 0.5 * (1.0 + math.cos(math.pi * u))

    return factor


def lr_table(lr: float, schedule: str, warmup: int, total: int) -> list[float]:
    """lr·f(s) for s = 0..total (:func:`lr_multiplier`); entry ``total`` serves any later s."""
    factor = lr_multiplier(schedule, warmup, total)
    return [lr * factor(s) for s in range(total + 1)]
