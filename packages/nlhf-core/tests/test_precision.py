"""float16 + Adam(W) without master weights is refused with the reason
(:mod:`nlhf.precision`); the reason itself is checked on a NumPy float16 Adam step."""

from __future__ import annotations

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.precision import check_training_dtype, dtype_name, training_dtype_problem


def _adam_step_float16(grad: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """One bias-corrected Adam step (Kingma & Ba, Algorithm 1) done in float16 throughout,
    as torch.optim.AdamW / optax.adamw do for float16 parameters, from θ = 1, lr = 1e-3."""
    h = np.float16
    g = grad.astype(h)
    b1, b2, lr = h(0.9), h(0.999), h(1e-3)
    m = (h(1) - b1) * g
    v = (h(1) - b2) * g * g
    m_hat, v_hat = m / (h(1) - b1), v / (h(1) - b2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.ones_like(g) - lr * m_hat / (np.sqrt(v_hat) + h(eps))


def test_the_reason_float16_adam_breaks() -> None:
    assert np.float16(1e-8) == 0  # ε rounds to 0
    theta = _adam_step_float16(np.array([0.0, 1e-4, 1.0]))
    assert np.isnan(theta[0])  # zero gradient: 0/0
    assert np.isinf(theta[1])  # (1 − β₂)·g² underflows: m̂/0
    assert np.isfinite(theta[2])
    # a representable ε avoids the 0/0: the default ε is the culprit
    assert np.all(np.isfinite(_adam_step_float16(np.array([0.0, 1e-4, 1.0]), eps=1e-3)))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_float16_with_adam_is_refused_on_every_device(device: str, optimizer: str) -> None:
    with pytest.raises(
        InputError, match=rf"policy.dtype: float16 training with {optimizer} on {device}"
    ):
        check_training_dtype("float16", device, optimizer=optimizer)


@pytest.mark.parametrize(
    ("dtype", "kwargs"),
    [
        ("float32", {}),
        ("bfloat16", {}),
        ("float16", {"optimizer": "sgd"}),
        ("float16", {"master_weights": True}),  # DeepSpeed fp16: float32 copy + loss scaling
    ],
)
def test_what_trains_is_accepted(dtype: str, kwargs: dict[str, object]) -> None:
    check_training_dtype(dtype, "cpu", **kwargs)
    assert training_dtype_problem(dtype, "cpu", **{"optimizer": "adamw", **kwargs}) is None


def test_dtype_names_from_each_framework() -> None:
    assert dtype_name("torch.float16") == "float16"
    assert dtype_name(np.dtype("float16")) == "float16"
    assert dtype_name(np.float16) == "float16"
    assert "on CPU" in training_dtype_problem(np.float16, "cpu", optimizer="adamw")
