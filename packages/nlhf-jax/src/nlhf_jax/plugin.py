"""Entry point of the jax backend (group ``nlhf``). Imports nothing heavy."""

from __future__ import annotations

from typing import Any

import nlhf
from nlhf.algorithms.params import LLM_ALGORITHMS, TABULAR_ALGORITHMS
from nlhf.spec.capabilities import Capabilities

CAPABILITIES = Capabilities(
    tasks=("nash", "preference_model", "evaluate", "offline"),
    tabular_tasks=("nash",),
    algorithms=LLM_ALGORITHMS,
    tabular_algorithms=TABULAR_ALGORITHMS,
    preferences=(
        "bradley_terry_reward",
        "llm_judge",
        "openai_judge",
        "oracle",
        "pairwise_model",
        "remote",
    ),
    engines={"nash": ("none", "jax"), "preference_model": ("none", "jax")},
    lora=("nash", "preference_model", "offline"),
    # float64 needs jax_enable_x64, a global switch nlhf never flips (nlhf_jax.kernels)
    dtypes=("float32", "bfloat16", "float16"),
    batch_axes=("data", "fsdp"),  # nlhf_jax.sharding.BATCH_AXES
    # nlhf_jax.models.decoder.ARCHITECTURES (a test keeps the two equal)
    model_types=("gemma2", "gemma3_text", "llama", "mistral", "phi3", "qwen2", "qwen3"),
)
"""What the jax backend runs (:mod:`nlhf.spec.capabilities`), read without importing jax."""


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
        capabilities=CAPABILITIES,
    )
