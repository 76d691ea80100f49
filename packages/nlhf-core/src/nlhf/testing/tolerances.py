"""Floating-point tolerances of nlhf's tests and conformance kit, in one place.

A result ``a`` matches the expected ``e`` when |a − e| ≤ atol + rtol·|e| elementwise
(``numpy.testing.assert_allclose``). Every tolerance is relative *and* absolute, chosen by
the dtype of the computation and by its *scope*:

- ``kernel``: one kernel (a loss, a mixture, a KL) on identical inputs, compared with the
  float64 NumPy oracle evaluated on the same (rounded) inputs. Only the backend's own
  arithmetic error is measured: float64 to 1e-10, float32 to 1e-5.
- ``model``: a result that went through a whole network — a forward or backward pass of a
  transformer, a compiled (``jax.jit``) against an eager program, one framework against
  another, a KV-cached decode against a full forward, an optimiser step, a short training
  run. The summation order of every matmul then depends on the CPU's vector width and the
  BLAS/XLA kernel it picks (AVX2 vs AVX-512, oneDNN vs Eigen), so float32 results differ
  between machines by ~1e-5 relative per layer; the bound is ten times the kernel one.

Reduced-precision dtypes get their unit roundoff's worth (bfloat16 ε = 2⁻⁸, float16
ε = 2⁻¹¹). Comparisons that claim *bit* equality (resume, determinism, adapter off = base)
use ``numpy.testing.assert_array_equal`` instead; Monte-Carlo checks use
:func:`sampling_bound`, which follows from the sample size, not from a dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Scope = Literal["kernel", "model"]


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def kwargs(self) -> dict[str, float]:
        """``{"rtol": …, "atol": …}`` for ``numpy.testing.assert_allclose``, ``numpy.isclose``
        and ``torch.allclose`` (``pytest.approx`` spells them ``rel``/``abs``)."""
        return {"rtol": self.rtol, "atol": self.atol}


#: Kernel-scope tolerances by dtype (see the module docstring).
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-10, atol=1e-10),
    "float32": Tolerance(rtol=1e-5, atol=1e-5),
    "bfloat16": Tolerance(rtol=2**-7, atol=2**-7),
    "float16": Tolerance(rtol=2**-10, atol=2**-10),
}

#: How much looser a ``model``-scope comparison is than a ``kernel`` one.
MODEL_FACTOR: dict[str, float] = {
    "float64": 100.0,
    "float32": 10.0,
    "bfloat16": 4.0,
    "float16": 4.0,
}

#: Injected uniforms stay at least this far from every CDF boundary, so that rounding
#: differences between backends cannot flip a sampled token.
SAMPLER_MARGIN = 1e-4


def tolerance(dtype: str = "float32", scope: Scope = "kernel") -> Tolerance:
    """The tolerance of a ``dtype`` computation of ``scope`` ("kernel" or "model")."""
    try:
        base = TOLERANCES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {sorted(TOLERANCES)}") from None
    if scope == "kernel":
        return base
    if scope != "model":
        raise ValueError(f"scope must be 'kernel' or 'model', not {scope!r}")
    factor = MODEL_FACTOR[str(dtype).removeprefix("torch.")]
    return Tolerance(rtol=base.rtol * factor, atol=base.atol * factor)


def assert_close(
    actual: Any,
    expected: Any,
    dtype: str = "float32",
    what: str = "",
    *,
    scope: Scope = "kernel",
) -> None:
    """Assert ``actual`` ≈ ``expected`` within :func:`tolerance` (dtype, scope); ``what``
    names the quantity in the failure message."""
    tol = tolerance(dtype, scope)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(
        actual,
        expected,
        rtol=tol.rtol,
        atol=tol.atol,
        err_msg=f"{what} ({dtype}, {scope})",
    )


def sampling_bound(std: float, n: int, sigmas: float = 5.0) -> float:
    """Half-width of a ``sigmas``-σ interval of the mean of ``n`` samples with standard
    deviation ``std``: σ·std/√n. Monte-Carlo tests compare an estimate with its exact value
    within this bound (5σ: a false alarm about once in 1.7 million runs)."""
    return sigmas * std / math.sqrt(n)
