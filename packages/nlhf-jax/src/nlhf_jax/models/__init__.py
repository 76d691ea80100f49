"""Flax NNX Llama / Qwen2 decoders that load and save Hugging Face checkpoints."""

from nlhf_jax.models.decoder import (
    DecoderConfig,
    DecoderForCausalLM,
    DecoderForSequenceClassification,
    positions_from_mask,
)
from nlhf_jax.models.io import load_config, load_model, save_model, to_hf_state_dict

__all__ = [
    "DecoderConfig",
    "DecoderForCausalLM",
    "DecoderForSequenceClassification",
    "load_config",
    "load_model",
    "positions_from_mask",
    "save_model",
    "to_hf_state_dict",
]
