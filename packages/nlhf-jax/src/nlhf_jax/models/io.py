"""Hugging Face checkpoint directories <-> Flax NNX decoders, without torch.

A checkpoint is ``config.json`` + ``model.safetensors`` (or a sharded
``model.safetensors.index.json``), read with ``safetensors.numpy``. Torch ``Linear``
weights are (out, in); ours are ``kernel`` (in, out), so every ``*.weight`` of a linear
layer is transposed on the way in and out. Saving writes the same names and layout, so
``transformers.AutoModelForCausalLM.from_pretrained`` loads the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx
from nlhf.errors import InputError

from nlhf_jax.models.decoder import (
    DecoderConfig,
    DecoderForCausalLM,
    DecoderForSequenceClassification,
)

Head = Literal["causal_lm", "sequence_classification"]
DecoderLM = DecoderForCausalLM | DecoderForSequenceClassification

_DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16,
           "float16": jnp.float16}  # fmt: skip


def load_config(path: str | Path) -> DecoderConfig:
    """The :class:`DecoderConfig` of a model directory; an architecture or setting the
    decoder does not reproduce is an :class:`InputError` located at its ``config.json``."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"no config.json in {path} (expected a Hugging Face model directory)")
    try:
        return DecoderConfig.from_dict(json.loads(cfg_file.read_text(encoding="utf-8")))
    except InputError as exc:  # located: FILE: field: message
        raise InputError(f"{cfg_file}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{cfg_file}: not a decoder config ({type(exc).__name__}: {exc})"
        ) from None


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or the shards of its index) as numpy arrays."""
    from safetensors.numpy import load_file

    path = Path(path)
    single = path / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(load_file(path / shard))
        return out
    raise InputError(f"no model.safetensors in {path} (save the model with safetensors)")


def _hf_name(path: tuple[Any, ...]) -> tuple[str, bool]:
    """NNX state path -> (Hugging Face tensor name, transposed?)."""
    parts = [str(p) for p in path]
    if parts[-1] == "kernel":
        return ".".join([*parts[:-1], "weight"]), True
    if parts[-1] == "embed_tokens":
        return ".".join([*parts, "weight"]), False
    return ".".join(parts), False


def to_hf_state_dict(model_or_state: DecoderLM | nnx.State) -> dict[str, np.ndarray]:
    """Parameters (or a same-shaped State, e.g. gradients) under their Hugging Face names,
    in torch layout (linear weights (out, in)). LoRA parameters are refused (they have no
    Hugging Face name): see :mod:`nlhf_jax.lora` (``save_adapter``, ``merge_lora``)."""
    state = (
        model_or_state
        if isinstance(model_or_state, nnx.State)
        else nnx.state(model_or_state, nnx.Param)
    )
    out = {}
    for path, var in nnx.to_flat_state(state):
        if isinstance(var, nnx.LoRAParam):
            raise InputError(
                "the model holds LoRA parameters: write the adapter with "
                "nlhf_jax.lora.save_adapter, or fold it in with nlhf_jax.lora.merge_lora first"
            )
        name, transpose = _hf_name(path)
        value = np.asarray(var.get_value() if hasattr(var, "get_value") else var)
        out[name] = np.ascontiguousarray(value.T if transpose else value)
    return out


def from_hf_state_dict(
    cfg: DecoderConfig,
    tensors: dict[str, np.ndarray],
    head: Head = "causal_lm",
    dtype: Any = jnp.float32,
) -> DecoderLM:
    """Build a model from Hugging Face-named tensors (every parameter must be present)."""
    cls = DecoderForCausalLM if head == "causal_lm" else DecoderForSequenceClassification
    abstract = nnx.eval_shape(lambda: cls(cfg, dtype=dtype))
    graphdef, state = nnx.split(abstract)
    flat = []
    missing = []
    for path, var in nnx.to_flat_state(state):
        name, transpose = _hf_name(path)
        if name not in tensors:
            missing.append(name)
            continue
        value = np.asarray(tensors[name])
        value = value.T if transpose else value
        if tuple(value.shape) != tuple(var.shape):
            raise InputError(f"{name}: shape {value.shape} != expected {tuple(var.shape)}")
        flat.append((path, var.replace(jnp.asarray(value, dtype=var.dtype))))
    if missing:
        raise InputError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _head_of(cfg: DecoderConfig) -> Head:
    archs = cfg.raw.get("architectures") or []
    return (
        "sequence_classification"
        if any("SequenceClassification" in a for a in archs)
        else ("causal_lm")
    )


def load_model(
    path: str | Path, *, dtype: str | Any = "float32", head: Head | None = None
) -> DecoderLM:
    """Load a checkpoint directory of one of :data:`~nlhf_jax.models.decoder.ARCHITECTURES` (``head`` defaults to its ``architectures``)."""
    cfg = load_config(path)
    jdtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    return from_hf_state_dict(cfg, read_safetensors(path), head or _head_of(cfg), jdtype)


def save_model(model: DecoderLM, path: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers loads (tied
    embeddings are saved once, under ``model.embed_tokens.weight``)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_state_dict(model)
    cfg = dict(model.config.raw)
    cfg["dtype"] = str(next(iter(tensors.values())).dtype)
    cfg.pop("torch_dtype", None)
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path
