"""The roofline's FLOP and byte counts (benchmarks/roofline.py, docs/benchmarks.md) against
a hand count on a tiny decoder, and its parameter count against transformers'."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import roofline

# L=2 layers, h=8, MLP i=16, 2 query heads and 1 KV head of width d=4, V=10, tied embeddings
CONFIG = {
    "model_type": "llama",
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "vocab_size": 10,
    "tie_word_embeddings": True,
}
# Hand count. One layer's matmul weights: q 8·8 = 64, k 8·4 = 32, v 32, o 64, MLP 3·8·16 = 384:
LAYER = 64 + 32 + 32 + 64 + 384  # 576
MATMUL = 2 * LAYER + 8 * 10  # + LM head = 1232
PARAMS = 2 * (LAYER + 2 * 8) + 8 + 10 * 8  # + 2 RMSNorms per layer, final norm, embedding
KV_PER_POS = 2 * 2 * 1 * 4  # keys and values, 2 layers, 1 KV head, width 4 = 16 values


def test_shape_counts() -> None:
    s = roofline.DecoderShape.from_config(CONFIG)
    assert s.layer_matmul_weights == LAYER
    assert s.matmul_weights == MATMUL
    assert s.params == PARAMS
    assert s.kv_values_per_position() == KV_PER_POS


def test_generation_cost_by_hand() -> None:
    # B = 1 prompt of P = 3 tokens, T = 2 new tokens: policy and reference run 2 rows each.
    # Prefill per row: 3 tokens, attention contexts 1+2+3 = 6, logits of the last position.
    prefill = 2 * 3 * 2 * LAYER + 4 * 2 * 2 * 4 * 6 + 2 * 1 * 8 * 10  # 7456
    # One decode forward (the first new token comes from the prefill): context 4.
    decode = 2 * 1 * 2 * LAYER + 4 * 2 * 2 * 4 * 4 + 2 * 1 * 8 * 10  # 2720
    flops = 4 * (prefill + decode)
    # Bytes (float32): each model reads its matmul weights once per forward pass (prefill,
    # one decode); per row the prefill writes 3 cached positions, the decode reads 4 and
    # writes 1.
    w = 4 * MATMUL
    policy = 2 * w + 2 * (3 + 4 + 1) * KV_PER_POS * 4
    reference = policy
    c = roofline.generation_cost(roofline.DecoderShape.from_config(CONFIG), 1, 3, 2)
    assert c.flops == flops == 40704
    assert c.bytes == policy + reference == 21760


def test_update_cost_by_hand() -> None:
    # B = 1, sequences of P + T = 5 tokens (contexts sum to 15), logits on the 2 new ones.
    fwd = 2 * 5 * 2 * LAYER + 4 * 2 * 2 * 4 * 15 + 2 * 2 * 8 * 10  # 12800
    reward_fwd = 2 * 5 * 2 * LAYER + 4 * 2 * 2 * 4 * 15 + 2 * 1 * 8 * 1  # score head, last pos
    flops = 3 * fwd + 2 * reward_fwd  # policy forward + backward, reward on 2B sequences
    w = 4 * MATMUL
    nbytes = 3 * w + 7 * 4 * PARAMS + 4 * 2 * LAYER  # + AdamW, reward's layer weights
    shape = roofline.DecoderShape.from_config(CONFIG)
    c = roofline.update_cost(shape, shape, 1, 3, 2)
    assert c.flops == flops == 63392
    assert c.bytes == nbytes == 55008


def test_limit_is_the_larger_bound() -> None:
    c = roofline.Cost(flops=1e9, bytes=4e9)
    assert c.limit(peak_flops=1e10, bandwidth=1e10) == 0.4  # memory-bound
    assert c.limit(peak_flops=1e9, bandwidth=1e10) == 1.0  # compute-bound
    roof = roofline.step_roofline(
        CONFIG, None, batch=1, prompt_len=3, new_tokens=2, peak_flops=1e4, bandwidth=1e5
    )
    gen = roof["generation"]
    assert gen["limit_seconds"] == max(40704 / 1e4, 21760 / 1e5)
    assert gen["bound"] == "compute"
    upd = roof["update"]["limit_seconds"]
    assert roof["step"]["limit_seconds"] == gen["limit_seconds"] + upd
    frac = roofline.fractions(roof, generation_s=2 * gen["limit_seconds"], update_s=4 * upd)
    assert frac["generation"] == 0.5 and frac["update"] == 0.25
    assert frac["step"] == (gen["limit_seconds"] + upd) / (2 * gen["limit_seconds"] + 4 * upd)


def test_params_match_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())  # tied: the embedding counted once
    assert roofline.DecoderShape.from_config(CONFIG).params == n
    linear = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
    )  # the layers' projections and the (tied) LM head
    assert roofline.DecoderShape.from_config(CONFIG).matmul_weights == linear
