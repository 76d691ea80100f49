"""Which parameter dtypes an optimiser can train, checked by every backend before its first
step (:func:`check_training_dtype`).

Adam and AdamW (Kingma & Ba, arXiv:1412.6980; Loshchilov & Hutter, arXiv:1711.05101) update
θ ← θ − lr·m̂/(√v̂ + ε). With float16 parameters a framework keeps m, v and the update in
float16 (``torch.optim.AdamW``, ``optax.adamw``): the default ε = 1e-8 is below float16's
smallest subnormal 2⁻²⁴ ≈ 6e-8 and rounds to 0, so a weight whose gradient is 0 (an
embedding row no token used, a masked position) gets 0/0 = NaN at the first step, and
(1 − β₂)·g² underflows to 0 for small gradients, whose update m̂/0 is ±inf. That is the
arithmetic, on every device. bfloat16 has float32's exponent range (ε and g² do not underflow); float16
works with float32 master weights and loss scaling (DeepSpeed ``fp16``, mixed precision).
"""

from __future__ import annotations

from typing import Any

from nlhf.errors import InputError

ADAPTIVE_OPTIMIZERS = ("adam", "adamw")
"""Optimisers whose update divides by √v̂ + ε (the ones float16 breaks)."""


def dtype_name(dtype: Any) -> str:
    """``"float16"`` for ``"float16"``, ``torch.float16``, ``jnp.float16``,
    ``np.dtype("float16")``."""
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    name = getattr(dtype, "name", None)  # numpy dtypes
    if isinstance(name, str):
        return name
    try:  # numpy / jax scalar types
        import numpy as np

        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).removeprefix("torch.")  # torch.float16


def training_dtype_problem(
    dtype: Any, device_kind: str, *, optimizer: str, master_weights: bool = False
) -> str | None:
    """Why parameters of ``dtype`` cannot be trained by ``optimizer`` on ``device_kind``
    (``"cpu"``, ``"cuda"``, ``"tpu"``, …), or None. ``master_weights``: the engine keeps a
    float32 copy and scales the loss (DeepSpeed ``fp16``), which makes float16 fine."""
    if dtype_name(dtype) != "float16" or master_weights:
        return None
    if optimizer not in ADAPTIVE_OPTIMIZERS:
        return None
    advice = (
        "float32 or bfloat16 on CPU"
        if device_kind == "cpu"
        else "bfloat16, float32, or float16 with float32 master weights and loss scaling "
        "(torch: distributed: {engine: deepspeed})"
    )
    return (
        f"policy.dtype: float16 training with {optimizer} on {device_kind} updates float16 "
        "weights in float16: ε (default 1e-8) rounds to 0 and the second moment underflows, "
        "so a weight with a zero gradient becomes NaN at the first step; use " + advice
    )


def check_training_dtype(
    dtype: Any, device_kind: str, *, optimizer: str = "adamw", master_weights: bool = False
) -> None:
    """Raise :class:`~nlhf.errors.InputError` when :func:`training_dtype_problem` finds one.
    Call it with the dtype of the *trainable* parameters (a LoRA adapter may be float32 on a
    float16 base), before the first optimiser step."""
    problem = training_dtype_problem(
        dtype, device_kind, optimizer=optimizer, master_weights=master_weights
    )
    if problem is not None:
        raise InputError(problem)
