"""Flax NNX decoders (Llama, Qwen2/3, Mistral, Gemma 2/3, Phi-3) that load and save Hugging
Face checkpoints."""

from nlhf_jax.models.decoder import (
    ARCHITECTURES,
    SUPPORTED_MODEL_TYPES,
    DecoderConfig,
    DecoderForCausalLM,
    DecoderForSequenceClassification,
    positions_from_mask,
)
from nlhf_jax.models.io import load_config, load_model, save_model, to_hf_state_dict

__all__ = [
    "ARCHITECTURES",
    "SUPPORTED_MODEL_TYPES",
    "DecoderConfig",
    "DecoderForCausalLM",
    "DecoderForSequenceClassification",
    "load_config",
    "load_model",
    "positions_from_mask",
    "save_model",
    "to_hf_state_dict",
]
