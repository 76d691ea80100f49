"""Flax NNX Llama/Qwen2 (nlhf_jax.models) vs transformers' torch models, the independent
implementation, in float32 on the shared tiny checkpoints; rotary frequencies against
transformers' own initialisers. (The jax suite checks the same models against the NumPy
forward of nlhf.testing.numpy_lm, without torch.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from nlhf.testing.tolerances import assert_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

import jax.numpy as jnp  # noqa: E402
from nlhf_jax.models import load_model, save_model  # noqa: E402
from nlhf_jax.models.decoder import DecoderConfig, rope_inv_freq  # noqa: E402

ARCHS = ["llama", "llama_tied", "qwen2", "qwen2_tied"]


def _batch(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A left-padded batch: row 0 full, rows 1 and 2 padded by 3 and 1 tokens."""
    ids = np.random.RandomState(seed).randint(3, vocab, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def _hf(cls, path, ids, mask):
    model = cls.from_pretrained(path).eval()
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)  # generate()'s left-padding positions
    with torch.no_grad():
        out = model(
            torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)
        )
    return out.logits.numpy()


def _hf_logits(path, ids, mask):
    return _hf(transformers.AutoModelForCausalLM, path, ids, mask)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_left_padded(tiny_ckpts, arch):
    model = load_model(tiny_ckpts[arch])
    ids, mask = _batch(model.config.vocab_size)
    ref = _hf_logits(tiny_ckpts[arch], ids, mask)
    got, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    got = np.asarray(got)
    assert np.abs(ref).max() > 0.5  # non-trivial logits
    assert_close(got[mask == 1], ref[mask == 1], scope="model")
    # a padded row gives the logits of its unpadded sequence
    alone, _ = model(jnp.asarray(ids[1:2, 3:]))
    assert_close(np.asarray(alone)[0], ref[1, 3:], scope="model")


@pytest.mark.parametrize("arch", ["llama", "qwen2_tied"])
def test_save_then_transformers_load_gives_same_logits(tiny_ckpts, tmp_path, arch):
    model = load_model(tiny_ckpts[arch])
    save_model(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == (arch == "qwen2_tied")
    ids, mask = _batch(model.config.vocab_size, seed=1)
    np.testing.assert_array_equal(
        _hf_logits(tmp_path / "out", ids, mask)[mask == 1],
        _hf_logits(tiny_ckpts[arch], ids, mask)[mask == 1],
    )


def test_sequence_classification_matches_transformers(tiny_ckpts):
    path = tiny_ckpts["llama_rm"]
    model = load_model(path)
    ids, mask = _batch(model.config.vocab_size, seed=2)
    ref = _hf(transformers.AutoModelForSequenceClassification, path, ids, mask)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.shape == (3, 1)
    assert_close(got, ref, scope="model")


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 500000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
)
def test_rope_inv_freq_matches_transformers(rope):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = LlamaConfig(
        hidden_size=64, num_attention_heads=2, rope_parameters=dict(rope), num_hidden_layers=1
    )
    cfg = DecoderConfig.from_dict(hf_cfg.to_dict())
    if rope["rope_type"] == "default":
        ref = 1.0 / (rope["rope_theta"] ** (np.arange(0, 32, 2) / 32))
    else:
        ref = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_cfg, "cpu")[0].numpy()
    np.testing.assert_allclose(rope_inv_freq(cfg), ref, rtol=1e-6)
