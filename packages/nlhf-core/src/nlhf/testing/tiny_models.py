"""Tiny offline checkpoints for tests, built without torch: NumPy + safetensors + tokenizers.

A directory written by :func:`build_tiny_model` is what ``save_pretrained`` of transformers
writes for a Llama / Qwen2 causal LM (or its sequence-classification head): a
``config.json``, a ``model.safetensors`` with transformers' parameter names and shapes
(float32, linear weights as (out, in)), and a byte-level BPE tokenizer trained locally with
``tokenizers`` (``tokenizer.json`` + ``tokenizer_config.json``). So
``transformers.AutoModelForCausalLM.from_pretrained``, ``AutoTokenizer.from_pretrained`` and
``nlhf_jax.models.load_model`` all load it, and a backend without torch can build the
checkpoints its tests share. Weights are seeded normal draws (NumPy ``default_rng``);
nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

Arch = Literal["llama", "qwen2"]
Head = Literal["causal_lm", "sequence_classification"]

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"]
PAD, BOS, EOS, UNK = SPECIAL_TOKENS

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Which response is better, 1 or 2? The better response is 1.",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt.",
    "Nash learning from human feedback finds the policy preferred to any other.",
    "rock paper scissors lizard spock apple banana cherry 0 1 2 3 4 5 6 7 8 9",
    "Assistant: I cannot help with that. Human: Why not? Assistant: It is unsafe.",
]

_ARCHITECTURES = {
    ("llama", "causal_lm"): "LlamaForCausalLM",
    ("llama", "sequence_classification"): "LlamaForSequenceClassification",
    ("qwen2", "causal_lm"): "Qwen2ForCausalLM",
    ("qwen2", "sequence_classification"): "Qwen2ForSequenceClassification",
}


def build_tokenizer(
    out_dir: str | Path, corpus: Iterable[str] | None = None, vocab_size: int = 512
) -> Path:
    """Train a byte-level BPE tokenizer on ``corpus`` (``tokenizers``) and save it to
    ``out_dir`` as transformers reads it: ``tokenizer.json`` and ``tokenizer_config.json``
    (pad/bos/eos/unk = the four :data:`SPECIAL_TOKENS`, ids 0–3, left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus) if corpus is not None else DEFAULT_CORPUS
    tok.train_from_iterator(texts * 4, trainer=trainer)
    # what transformers' fast tokenizer installs: no special tokens added around a text
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0", pair="$A:0 $B:1", special_tokens=[]
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "backend": "tokenizers",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "padding_side": "left",
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    return out_dir


def tiny_config(
    arch: Arch,
    vocab_size: int,
    *,
    head: Head = "causal_lm",
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    num_labels: int | None = None,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-6,
) -> dict[str, Any]:
    """The ``config.json`` of a tiny Llama / Qwen2 as transformers 5 writes it (Qwen2 has
    q/k/v biases and no sliding window; Llama has no biases)."""
    if (arch, head) not in _ARCHITECTURES:
        raise ValueError(
            f"tiny models are 'llama' or 'qwen2' with head 'causal_lm' or "
            f"'sequence_classification'; got arch={arch!r}, head={head!r}"
        )
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a multiple of heads ({heads}), and heads "
            f"a multiple of kv_heads ({kv_heads})"
        )
    cfg: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[arch, head]],
        "model_type": arch,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        "rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"},
        "rope_theta": rope_theta,  # the key of transformers 4
        "tie_word_embeddings": tie_word_embeddings,
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": "float32",
    }
    if arch == "llama":
        cfg.update(head_dim=hidden_size // heads, attention_bias=False, mlp_bias=False)
    else:
        cfg.update(
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=28,
            layer_types=["full_attention"] * layers,
        )
    if head == "sequence_classification" or num_labels is not None:
        n = 1 if num_labels is None else num_labels
        cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        cfg["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    return cfg


def parameter_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """transformers' parameter names → shapes for a :func:`tiny_config` (linear weights
    (out, in); no ``lm_head.weight`` when embeddings are tied or for a ``score`` head)."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    qkv_bias = config["model_type"] == "qwen2" or config.get("attention_bias", False)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        for name, out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes[p + f"self_attn.{name}.weight"] = (out, h)
            if qkv_bias:
                shapes[p + f"self_attn.{name}.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        if config.get("attention_bias", False):
            shapes[p + "self_attn.o_proj.bias"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        if config.get("mlp_bias", False):
            for name, out in (("gate_proj", inter), ("up_proj", inter), ("down_proj", h)):
                shapes[p + f"mlp.{name}.bias"] = (out,)
    shapes["model.norm.weight"] = (h,)
    if config["architectures"][0].endswith("ForSequenceClassification"):
        shapes["score.weight"] = (len(config["id2label"]), h)
    elif not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    return shapes


def random_weights(
    config: dict[str, Any],
    seed: int = 0,
    *,
    std: float = 0.02,
    bias_std: float = 0.0,
    norm_std: float = 0.0,
) -> dict[str, np.ndarray]:
    """Seeded float32 weights of a :func:`tiny_config`: matrices ~ N(0, std²), biases
    ~ N(0, bias_std²), RMSNorm scales ~ 1 + N(0, norm_std²). The defaults are transformers'
    own initialisation of these models (``initializer_range`` 0.02, zero biases, unit
    norms); tensors are drawn in name order from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in sorted(parameter_shapes(config).items()):
        if name.endswith("norm.weight"):
            value = 1.0 + rng.normal(0.0, norm_std, shape) if norm_std else np.ones(shape)
        elif name.endswith(".bias"):
            value = rng.normal(0.0, bias_std, shape) if bias_std else np.zeros(shape)
        else:
            value = rng.normal(0.0, std, shape)
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def save_checkpoint(out_dir: str | Path, config: dict[str, Any], weights: dict[str, Any]) -> Path:
    """Write ``config.json`` (+ ``generation_config.json`` for a causal LM) and
    ``model.safetensors`` (``safetensors.numpy``; metadata format "pt": torch's layout)."""
    from safetensors.numpy import save_file

    expected = parameter_shapes(config)
    got = {k: tuple(np.shape(v)) for k, v in weights.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise ValueError(
            f"weights do not match the config: missing {missing}, unexpected {extra}, "
            f"wrong shape {wrong}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir / "config.json", config)
    if not config["architectures"][0].endswith("ForSequenceClassification"):
        ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        _write_json(out_dir / "generation_config.json", ids)
    return out_dir


def build_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    *,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    head: Head = "causal_lm",
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    std: float = 0.02,
    bias_std: float = 0.0,
    norm_std: float = 0.0,
    **config_kwargs: Any,
) -> Path:
    """Save a seeded tiny model + tokenizer to ``out_dir`` and return the path.

    ``tokenizer_dir``: copy that directory's tokenizer files (else one is trained into
    ``out_dir`` on ``corpus`` with ``vocab_size``); the model's vocabulary is the
    tokenizer's size. ``head="sequence_classification"`` gives a 1-label reward model.
    ``std``/``bias_std``/``norm_std``: see :func:`random_weights`; ``config_kwargs``:
    :func:`tiny_config`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            src = Path(tokenizer_dir) / name
            if src.is_file() and src.resolve() != (out_dir / name).resolve():
                (out_dir / name).write_bytes(src.read_bytes())
        if not (out_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer.json to reuse")
    else:
        build_tokenizer(out_dir, corpus, vocab_size=vocab_size)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    ids = {
        f"{n}_token_id": tok.token_to_id(t)
        for n, t in zip(("pad", "bos", "eos"), SPECIAL_TOKENS[:3], strict=True)
    }
    config = tiny_config(arch, tok.get_vocab_size(), head=head, **ids, **config_kwargs)
    weights = random_weights(config, seed, std=std, bias_std=bias_std, norm_std=norm_std)
    return save_checkpoint(out_dir, config, weights)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
