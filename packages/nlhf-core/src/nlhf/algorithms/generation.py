"""Front-end checks of pair generation, shared by every backend's ``generate_pairs``
(validate once in front, then dispatch to same-shaped backend code; docs/architecture.md
§1)."""

from __future__ import annotations

from typing import Any, Literal

Opponent = Literal["mixture", "reference", "policy", "model"]
OPPONENTS: tuple[str, ...] = ("mixture", "reference", "policy", "model")


def check_generation_args(
    *,
    opponent: str,
    beta: float,
    temperature: float,
    max_new_tokens: int,
    opponent_model: Any,
    ids_shape: tuple[int, ...],
    mask_shape: tuple[int, ...],
) -> None:
    """Raise ``ValueError`` naming the bad argument: y' comes from one of
    :data:`OPPONENTS`, β ∈ [0, 1], T > 0, at least one new token, an ``opponent_model``
    for ``opponent='model'``, and (B, P) prompt ids with a mask of the same shape."""
    if opponent not in OPPONENTS:
        raise ValueError(
            f"opponent must be 'mixture', 'reference', 'policy' or 'model'; got {opponent!r}"
        )
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must lie in [0, 1]; got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if opponent == "model" and opponent_model is None:
        raise ValueError("opponent='model' needs opponent_model (e.g. the EMA policy)")
    if len(ids_shape) != 2 or tuple(ids_shape) != tuple(mask_shape):
        raise ValueError(
            f"input_ids and attention_mask must both be (B, P); got {tuple(ids_shape)} "
            f"and {tuple(mask_shape)}"
        )
