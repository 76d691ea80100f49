"""Entry point of the jax backend (group ``nlhf``). Imports nothing heavy."""

from __future__ import annotations

from typing import Any

import nlhf


def _backend() -> Any:
    from nlhf_jax.backend import JaxBackend

    return JaxBackend()


@nlhf.hookimpl
def nlhf_register_backends(register: Any) -> None:
    register(
        "jax",
        _backend,
        requires=("jax", "flax", "optax"),
        description="JAX + Flax NNX; jax.sharding meshes (TPU/GPU/CPU devices)",
    )
