"""The torch-free tiny checkpoints (nlhf.testing.tiny_models) are what transformers itself
expects, and the NumPy forward (nlhf.testing.numpy_lm) computes what transformers computes:
``from_pretrained`` finds every parameter with no missing or unexpected key, the config
equals transformers' own config of the same model, the tokenizer loads with its special
tokens, and the logits agree at the model-scope tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from nlhf.testing import tiny_models
from nlhf.testing.numpy_lm import NumpyLM
from nlhf.testing.tolerances import assert_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.torch

from safetensors.numpy import load_file  # noqa: E402


def _batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(0).randint(3, vocab, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("name", ["llama", "llama_tied", "qwen2", "qwen2_tied", "llama_rm"])
def test_transformers_loads_every_parameter_and_computes_the_numpy_forward(tiny_ckpts, name):
    path = tiny_ckpts[name]
    is_rm = name == "llama_rm"
    cls = (
        transformers.AutoModelForSequenceClassification
        if is_rm
        else transformers.AutoModelForCausalLM
    )
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    weights = load_file(path / "model.safetensors")
    state = model.state_dict()
    for k, v in weights.items():
        np.testing.assert_array_equal(state[k].numpy(), v, err_msg=k)
    ids, mask = _batch(model.config.vocab_size)
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)
    with torch.no_grad():
        out = model.eval()(
            torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)
        ).logits.numpy()
    lm = NumpyLM.load(path)
    if is_rm:
        assert_close(out, lm.scores(ids, mask), what=f"{name} reward", scope="model")
    else:
        expected = lm.logits(ids, mask)
        assert np.abs(expected).max() > 1.0
        assert_close(out[mask == 1], expected[mask == 1], what=f"{name} logits", scope="model")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_config_is_transformers_own(tmp_path, arch):
    """Every field transformers' config class derives for these arguments is the same."""
    path = tiny_models.build_tiny_model(tmp_path / arch, arch, vocab_size=300)
    ours = transformers.AutoConfig.from_pretrained(path).to_dict()
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch]
    theirs = cls(
        vocab_size=ours["vocab_size"],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        architectures=ours["architectures"],
    ).to_dict()
    skip = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "head_dim"}
    diff = {
        k: (ours.get(k), theirs.get(k))
        for k in set(ours) | set(theirs)
        if k not in skip and ours.get(k) != theirs.get(k)
    }
    assert not diff


def test_tokenizer_loads_with_its_special_tokens(tiny_ckpts):
    from tokenizers import Tokenizer

    tok = transformers.AutoTokenizer.from_pretrained(tiny_ckpts["llama"])
    raw = Tokenizer.from_file(str(tiny_ckpts["llama"] / "tokenizer.json"))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "left"
    text = "Human: How do I bake bread? Assistant: Mix flour."
    assert tok(text)["input_ids"] == raw.encode(text).ids
    assert tok.decode(tok(text)["input_ids"]) == text
