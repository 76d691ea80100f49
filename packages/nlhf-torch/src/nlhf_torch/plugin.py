"""Entry point of the torch backend (group ``nlhf``). Imports nothing heavy."""

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
    encoder_backbones=True,  # nlhf_torch.preference.model: any AutoModelForSequenceClassification
    mean_pooling=True,
    frozen_layers=True,
    engines={"nash": ("none", "deepspeed"), "preference_model": ("none", "deepspeed")},
    lora=("nash", "offline"),  # PEFT adapters on the policy; preference models train every weight
    dtypes=("float32", "float64", "bfloat16", "float16"),
    launch_tasks=("nash", "preference_model"),
    launch_engines=("deepspeed",),
)
"""What the torch backend runs (:mod:`nlhf.spec.capabilities`), read without importing torch."""


def _backend() -> Any:
    from nlhf_torch.backend import TorchBackend

    return TorchBackend()


@nlhf.hookimpl
def nlhf_register_backends(register: Any) -> None:
    register(
        "torch",
        _backend,
        requires=("torch", "transformers"),
        description="PyTorch + transformers; DeepSpeed ZeRO for multi-process runs",
        capabilities=CAPABILITIES,
    )
