"""optax optimisers with torch's conventions, so both backends take the same step.

- clipping: g ← g·min(1, c/(‖g‖₂ + 1e-6)) over all parameters
  (``torch.nn.utils.clip_grad_norm_``);
- ``adamw``: decoupled decay, θ ← θ − lr·(m̂/(√v̂ + ε) + λθ) (``torch.optim.AdamW`` =
  ``optax.adamw``: ε outside the square root, bias-corrected moments);
- ``adam`` / ``sgd``: L2 decay added to the gradient, g ← g + λθ (torch's ``weight_decay``);
- learning rate lr·f(s) after s updates, f = linear warmup min(1, (s+1)/warmup) then
  ``constant`` 1, ``linear`` 1 − u or ``cosine`` ½(1 + cos πu), u = (s − warmup)/(total −
  warmup) (the torch trainer's ``LambdaLR``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def lr_multiplier(schedule: str, warmup: int, total: int):
    """f(s) as a jax function of the update count s (see the module doc)."""

    def fn(count: jax.Array) -> jax.Array:
        s = jnp.asarray(count, jnp.float32)
        if schedule == "constant":
            after = jnp.ones_like(s)
        else:
            u = jnp.clip((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
            after = 1.0 - u if schedule == "linear" else 0.5 * (1.0 + jnp.cos(jnp.pi * u))
        if warmup > 0:
            return jnp.where(s < warmup, (s + 1.0) / warmup, after)
        return after

    return fn


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """g ← g·min(1, max_norm/(‖g‖₂ + 1e-6)), as ``torch.nn.utils.clip_grad_norm_``."""

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def build_optimizer(training: Any, total_steps: int | None = None) -> optax.GradientTransformation:
    """The optax chain of a ``training:`` spec section (see the module doc)."""
    opt = training.optimizer
    total = total_steps if total_steps is not None else training.steps
    mult = lr_multiplier(training.lr_schedule, training.warmup_steps, total)

    def lr(count: jax.Array) -> jax.Array:
        return training.lr * mult(count)

    parts = []
    if training.max_grad_norm is not None:
        parts.append(clip_by_global_norm_torch(training.max_grad_norm))
    b1, b2 = opt.betas
    if opt.name == "adamw":
        parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=opt.eps, weight_decay=opt.weight_decay))
    else:
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay))
        if opt.name == "adam":
            parts.append(optax.adam(lr, b1=b1, b2=b2, eps=opt.eps))
        else:
            parts.append(optax.sgd(lr))
    return optax.chain(*parts)
