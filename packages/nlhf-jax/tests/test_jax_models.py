"""Flax NNX Llama/Qwen2 vs the float64 NumPy forward of :mod:`nlhf.testing.numpy_lm` (an
independent implementation; agreement with transformers itself:
tests/test_cross_backend_jax_hf_models.py), in float32, on the shared tiny checkpoints."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.testing.numpy_lm import NumpyLM
from nlhf.testing.tolerances import assert_close
from nlhf_jax.models import load_model, save_model
from nlhf_jax.models.decoder import DecoderConfig, rope_inv_freq

pytestmark = pytest.mark.jax

ARCHS = ["llama", "llama_tied", "qwen2", "qwen2_tied"]


def _batch(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A left-padded batch: row 0 full, rows 1 and 2 padded by 3 and 1 tokens."""
    ids = np.random.RandomState(seed).randint(3, vocab, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_the_numpy_forward_left_padded(tiny_ckpts, arch):
    model = load_model(tiny_ckpts[arch])
    ids, mask = _batch(model.config.vocab_size)
    ref = NumpyLM.load(tiny_ckpts[arch]).logits(ids, mask)
    got, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    got = np.asarray(got)
    assert np.abs(ref).max() > 0.5  # non-trivial logits
    assert_close(got[mask == 1], ref[mask == 1], scope="model")
    # a padded row gives the logits of its unpadded sequence
    alone, _ = model(jnp.asarray(ids[1:2, 3:]))
    assert_close(np.asarray(alone)[0], ref[1, 3:], scope="model")


@pytest.mark.parametrize("arch", ["llama", "qwen2_tied"])
def test_save_then_load_gives_the_same_weights_and_logits(tiny_ckpts, tmp_path, arch):
    from safetensors.numpy import load_file

    model = load_model(tiny_ckpts[arch])
    save_model(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == (arch == "qwen2_tied")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    original = load_file(tiny_ckpts[arch] / "model.safetensors")
    assert set(saved) == set(original)
    for k in original:
        np.testing.assert_array_equal(saved[k], original[k], err_msg=k)
    ids, mask = _batch(model.config.vocab_size, seed=1)
    again, _ = load_model(tmp_path / "out")(jnp.asarray(ids), jnp.asarray(mask))
    first, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(again)[mask == 1], np.asarray(first)[mask == 1])


def test_sequence_classification_matches_the_numpy_forward(tiny_ckpts):
    path = tiny_ckpts["llama_rm"]
    model = load_model(path)
    ids, mask = _batch(model.config.vocab_size, seed=2)
    ref = NumpyLM.load(path).scores(ids, mask)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.shape == (3, 1)
    assert_close(got, ref, scope="model")


def test_kv_cache_decode_matches_full_forward(tiny_ckpts):
    """Prefill a left-padded prompt into a static cache, then feed one token at a time:
    every step's last-position logits equal the full-sequence logits of the NumPy forward."""
    model = load_model(tiny_ckpts["qwen2"])
    ids, mask = _batch(model.config.vocab_size, seed=3)
    ref = NumpyLM.load(tiny_ckpts["qwen2"]).logits(ids, mask)
    prompt = 5
    length = ids.shape[1] + 2  # spare slots stay masked
    cache = model.init_cache(3, length)
    kv_mask = np.zeros((3, length), np.int32)
    kv_mask[:, :prompt] = mask[:, :prompt]
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)
    logits, cache = model(
        jnp.asarray(ids[:, :prompt]),
        jnp.asarray(kv_mask),
        jnp.asarray(pos[:, :prompt]),
        cache=cache,
        cache_index=0,
        last_only=True,
    )
    assert_close(np.asarray(logits), ref[:, prompt - 1], scope="model")
    for t in range(prompt, ids.shape[1]):
        kv_mask[:, t] = 1
        logits, cache = model(
            jnp.asarray(ids[:, t : t + 1]),
            jnp.asarray(kv_mask),
            jnp.asarray(pos[:, t : t + 1]),
            cache=cache,
            cache_index=t,
            last_only=True,
        )
        assert_close(np.asarray(logits), ref[:, t], scope="model")


def test_default_rope_inv_freq_is_the_closed_form():
    """inv_freq_i = θ^(−2i/d) (RoFormer); other rope types: the cross-backend tests."""
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    cfg = DecoderConfig.from_dict(
        dict(
            model_type="llama",
            vocab_size=8,
            hidden_size=64,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            rope_parameters=rope,
        )
    )
    ref = 1.0 / (500000.0 ** (np.arange(0, 32, 2) / 32))
    np.testing.assert_allclose(rope_inv_freq(cfg), ref, rtol=1e-6)


def test_legacy_rope_theta_config_is_read():
    cfg = DecoderConfig.from_dict(
        dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
             num_hidden_layers=1, num_attention_heads=2, rope_theta=1234.0)
    )  # fmt: skip
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 1234.0}
    np.testing.assert_allclose(rope_inv_freq(cfg), 1234.0 ** -(np.arange(0, 4, 2) / 4), rtol=1e-6)


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(InputError, match="gpt2"):
        DecoderConfig.from_dict({"model_type": "gpt2"})
