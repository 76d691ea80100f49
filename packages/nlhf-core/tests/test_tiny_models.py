"""nlhf.testing.tiny_models writes transformers-layout checkpoints without torch: names and
shapes from the architecture, seeded weights with the asked spread, the four special
tokens, and clear errors. (Loading by transformers itself: tests/test_tiny_models_transformers.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from nlhf.testing import tiny_models as T
from safetensors.numpy import load_file


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return T.build_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=300)


@pytest.mark.parametrize(
    ("arch", "head", "tied"),
    [
        ("llama", "causal_lm", False),
        ("qwen2", "causal_lm", True),
        ("llama", "sequence_classification", False),
    ],
)
def test_names_shapes_and_dtype(tmp_path, tok, arch, head, tied):
    path = T.build_tiny_model(
        tmp_path / "m", arch, tokenizer_dir=tok, head=head, tie_word_embeddings=tied
    )
    cfg = json.loads((path / "config.json").read_text())
    tensors = load_file(path / "model.safetensors")
    v, h = cfg["vocab_size"], 32
    assert v == len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"])
    assert tensors["model.embed_tokens.weight"].shape == (v, h)
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (2 * 8, h)  # 2 kv heads
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (h, 64)
    assert ("model.layers.0.self_attn.q_proj.bias" in tensors) == (arch == "qwen2")
    assert ("lm_head.weight" in tensors) == (head == "causal_lm" and not tied)
    assert ("score.weight" in tensors) == (head == "sequence_classification")
    assert {a.dtype for a in tensors.values()} == {np.dtype(np.float32)}
    assert len(tensors) == 2 + 9 * 2 + ("lm_head.weight" in tensors) + (
        "score.weight" in tensors
    ) + (6 if arch == "qwen2" else 0)
    assert cfg["architectures"] == [T._ARCHITECTURES[arch, head]]


def test_weights_are_seeded_with_the_asked_spread(tmp_path, tok):
    a = T.build_tiny_model(
        tmp_path / "a", "qwen2", tokenizer_dir=tok, seed=3, std=0.3, bias_std=0.1, norm_std=0.2
    )
    b = T.build_tiny_model(
        tmp_path / "b", "qwen2", tokenizer_dir=tok, seed=3, std=0.3, bias_std=0.1, norm_std=0.2
    )
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    emb = wa["model.embed_tokens.weight"]  # ~ 9000 draws: 5σ bounds on mean and std
    assert abs(emb.mean()) < 5 * 0.3 / np.sqrt(emb.size)
    assert abs(emb.std() - 0.3) < 5 * 0.3 / np.sqrt(2 * emb.size)
    assert abs(wa["model.norm.weight"].mean() - 1.0) < 5 * 0.2 / np.sqrt(32)
    assert wa["model.layers.0.self_attn.q_proj.bias"].std() > 0
    default = load_file(
        T.build_tiny_model(tmp_path / "c", "qwen2", tokenizer_dir=tok) / "model.safetensors"
    )
    np.testing.assert_array_equal(default["model.norm.weight"], 1.0)
    np.testing.assert_array_equal(default["model.layers.0.self_attn.q_proj.bias"], 0.0)


def test_tokenizer_has_the_special_tokens_first(tok):
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tok / "tokenizer.json"))
    assert [t.token_to_id(s) for s in T.SPECIAL_TOKENS] == [0, 1, 2, 3]
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    assert (cfg["pad_token"], cfg["eos_token"], cfg["padding_side"]) == (
        "<|pad|>",
        "<|eos|>",
        "left",
    )
    text = "The quick brown fox"
    assert t.decode(t.encode(text).ids) == text


def test_clear_errors(tmp_path, tok):
    with pytest.raises(ValueError, match="'llama' or 'qwen2'"):
        T.tiny_config("gpt2", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of heads"):
        T.tiny_config("llama", 10, hidden_size=30, heads=4)
    cfg = T.tiny_config("llama", 10)
    weights = T.random_weights(cfg)
    weights.pop("model.norm.weight")
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\]"):
        T.save_checkpoint(tmp_path / "x", cfg, weights)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        T.build_tiny_model(tmp_path / "y", tokenizer_dir=tmp_path / "nothing")
