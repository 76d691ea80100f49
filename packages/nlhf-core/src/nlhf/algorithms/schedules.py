"""Schedules for β (mixture weight) and τ (KL weight), evaluated at an integer step.

Indexing by an integer optimiser step (never a float epoch) avoids TRL #6801.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Schedule(BaseModel):
    """``value(step) = start + (end − start)·shape(min(step, steps)/steps)``.

    kind ``constant``: shape ≡ 0; ``linear``: shape(u) = u; ``cosine``:
    shape(u) = (1 − cos(πu))/2; ``exponential``: geometric interpolation
    start·(end/start)^u (start, end > 0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["constant", "linear", "cosine", "exponential"] = "linear"
    start: float
    end: float | None = None
    steps: Annotated[int, Field(gt=0)] | None = None
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


ScheduleOrFloat = float | Schedule


def schedule_value(value: ScheduleOrFloat, step: int, total_steps: int) -> float:
    """Evaluate a float-or-:class:`Schedule` spec field at integer ``step``."""
    if isinstance(value, Schedule):
        return value.value(step, total_steps)
    return float(value)


def schedule_bounds(value: ScheduleOrFloat) -> tuple[float, float]:
    if isinstance(value, Schedule):
        return value.bounds()
    return float(value), float(value)
