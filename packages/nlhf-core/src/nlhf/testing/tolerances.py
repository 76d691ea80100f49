"""Tolerances of the conformance kit, in one place (Keras 3 style, DESIGN §7-8).

A backend's result ``a`` matches the oracle ``e`` when |a − e| ≤ atol + rtol·|e|
elementwise (numpy.testing.assert_allclose). float64 backends must agree with the
float64 NumPy oracle to 1e-10; float32 backends to 1e-5 (the oracle is evaluated on the
float32-rounded inputs, so only the backend's arithmetic error is measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-10, atol=1e-10),
    "float32": Tolerance(rtol=1e-5, atol=1e-5),
}

#: Injected uniforms stay at least this far from every CDF boundary, so that rounding
#: differences between backends cannot flip a sampled token (≥ 1e-6, DESIGN §7).
SAMPLER_MARGIN = 1e-4


def tolerance(dtype: str) -> Tolerance:
    """The tolerance of ``dtype`` ("float64" or "float32")."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(
            f"no conformance tolerance for dtype {dtype!r}; known: {sorted(TOLERANCES)}"
        ) from None


def assert_close(actual: Any, expected: Any, dtype: str, what: str = "") -> None:
    """Assert ``actual`` ≈ ``expected`` within :func:`tolerance` (dtype); ``what`` names it."""
    tol = tolerance(dtype)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(
        actual, expected, rtol=tol.rtol, atol=tol.atol, err_msg=f"{what} ({dtype})"
    )
