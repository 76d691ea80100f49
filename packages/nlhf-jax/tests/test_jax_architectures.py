"""The jax decoder (:mod:`nlhf_jax.models.decoder`) on every architecture it supports,
against transformers' own torch forward in float32.

Each model is built by transformers from its own config class (tiny sizes, weights of
``initializer_range`` 0.15 so logits are of order 1, norm weights and biases randomised so
Gemma's (1 + w), the q/k norms and Qwen2's biases all matter) and saved with
``save_pretrained``; the jax side loads that directory. Oracles:

- logits: transformers' forward of each row *unpadded* (its eager Gemma 2 forward returns
  NaN on left-padded rows), against the jax forward of the left-padded batch; sequences
  are longer than the sliding window, and a jax model with the windows removed is shown
  to miss the oracle, so the window is exercised;
- the jitted cached decode (:func:`nlhf_jax.generation.generate_pairs`) against the
  uncached full forward over prompt + completion: uniforms placed at the centre of each
  token's CDF interval under the uncached logits must reproduce every token (a token can
  only change if the cached logits move its interval by half its probability), and the
  reference logits along y equal transformers' forward;
- LoRA: peft adapters on the same transformers model (fused ``qkv_proj`` /
  ``gate_up_proj`` for Phi-3) loaded into the jax model give peft's logits;
- bfloat16: no less accurate than transformers' own bfloat16 forward;
- the jax trainer: two ``task: nash`` steps whose checkpoint transformers loads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from nlhf.algorithms import numpy_oracle as ref_np
from nlhf.errors import InputError
from nlhf.testing.tolerances import assert_close, tolerance

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from nlhf_jax.models import load_model  # noqa: E402
from nlhf_jax.models.decoder import DecoderConfig, rope_inv_freq  # noqa: E402
from nlhf_jax.models.io import load_config  # noqa: E402

V, EOS, PAD, WINDOW = 48, 0, 1, 4
BETA, TEMP, MAX_NEW = 0.4, 0.9, 8
SMALL = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    pad_token_id=PAD,
    bos_token_id=2,
    eos_token_id=EOS,
    initializer_range=0.15,
)
SLIDING = ["sliding_attention", "full_attention"]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,  # wavelengths 6.3 … 1.2e5: every band is hit
}


def hf_config(arch: str):
    tf = transformers
    if arch == "llama3":
        return tf.LlamaConfig(**SMALL, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)
    if arch == "qwen2":
        return tf.Qwen2Config(**SMALL)
    if arch == "qwen2-sliding":
        return tf.Qwen2Config(
            **SMALL, use_sliding_window=True, sliding_window=WINDOW, layer_types=SLIDING[::-1]
        )
    if arch == "qwen3":
        return tf.Qwen3Config(**SMALL)
    if arch == "qwen3-sliding":
        return tf.Qwen3Config(
            **SMALL, use_sliding_window=True, sliding_window=WINDOW, layer_types=SLIDING
        )
    if arch == "mistral":
        return tf.MistralConfig(**SMALL, sliding_window=WINDOW)
    if arch == "gemma2":
        return tf.Gemma2Config(
            **SMALL,
            query_pre_attn_scalar=16,
            sliding_window=WINDOW,
            layer_types=SLIDING,
            attn_logit_softcapping=1.5,
            final_logit_softcapping=2.0,
        )
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            **SMALL,
            query_pre_attn_scalar=16,
            sliding_window=WINDOW,
            layer_types=SLIDING,
            final_logit_softcapping=2.5,
            attn_logit_softcapping=1.5,  # set, but transformers' Gemma 3 never applies it
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
            },
        )
    if arch == "phi3":
        return tf.Phi3Config(
            **SMALL,
            sliding_window=WINDOW,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
            },
        )
    raise AssertionError(arch)


ARCHS = [
    "llama3",
    "qwen2",
    "qwen2-sliding",
    "qwen3",
    "qwen3-sliding",
    "mistral",
    "gemma2",
    "gemma3",
    "phi3",
]
WINDOWED = ["qwen2-sliding", "qwen3-sliding", "mistral", "gemma2", "gemma3", "phi3"]


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory):
    """arch -> (transformers model in eval mode, its save_pretrained directory); built on
    first use."""
    root = tmp_path_factory.mktemp("archs")
    cache: dict[str, tuple[object, Path]] = {}

    def get(arch: str, seed: int = 0):
        key = f"{arch}-{seed}"
        if key not in cache:
            torch.manual_seed(seed)
            model = transformers.AutoModelForCausalLM.from_config(hf_config(arch)).eval()
            gen = torch.Generator().manual_seed(100 + seed)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "norm" in name or name.endswith(".bias"):
                        p.add_(torch.randn(p.shape, generator=gen) * 0.3)
            model.save_pretrained(root / key)
            cache[key] = (model, root / key)
        return cache[key]

    return get


def _batch(seed: int = 0, width: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts longer than the window: rows padded by 0, 3 and 5 tokens."""
    ids = np.random.RandomState(seed).randint(3, V, size=(3, width))
    mask = np.ones_like(ids)
    for row, n_pad in enumerate([0, 3, 5]):
        mask[row, :n_pad] = 0
    ids[mask == 0] = PAD
    return ids, mask


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' logits of every row run alone without its padding (NaN on pads)."""
    out = np.full((*ids.shape, model.config.vocab_size), np.nan, np.float64)
    for r in range(ids.shape[0]):
        keep = mask[r] == 1
        with torch.no_grad():
            out[r, keep] = model(torch.tensor(ids[r, keep][None])).logits[0].double().numpy()
    return out


def _jax_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))[0], np.float64)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(hf_models, arch):
    hf, path = hf_models(arch)
    model = load_model(path)
    ids, mask = _batch()
    want = hf_logits(hf, ids, mask)
    got = _jax_logits(model, ids, mask)
    live = mask == 1
    assert np.abs(want[live]).max() > 0.5  # non-trivial logits
    assert_close(got[live], want[live], "float32", f"{arch} logits", scope="model")
    if arch in WINDOWED:  # the window changes the logits of this batch
        assert any(w == WINDOW for w in model.config.layer_windows)
        full = dataclasses.replace(model.config, layer_windows=())
        state = nnx.state(model)
        unwindowed = nnx.merge(nnx.split(type(model)(full))[0], state)
        off = _jax_logits(unwindowed, ids, mask)
        tol = tolerance("float32", "model")
        assert np.abs(off[live] - want[live]).max() > 100 * (tol.atol + tol.rtol)


def test_config_reading_agrees_with_transformers(hf_models):
    """The per-layer windows, rope tables, scales and caps the jax config derives from
    config.json are those of transformers' own modules."""
    for arch in ARCHS:
        hf, path = hf_models(arch)
        cfg = load_config(path)
        layers = hf.model.layers
        windows = []
        for layer in layers:
            attn = layer.self_attn
            w = getattr(attn, "sliding_window", getattr(hf.config, "sliding_window", None))
            windows.append(None if w is None else int(w))
        assert list(cfg.layer_windows) == windows, arch
        for i, layer in enumerate(layers):
            scale = cfg.attention_scale or cfg.head_dim**-0.5
            assert scale == pytest.approx(layer.self_attn.scaling), arch
            rotary = hf.model.rotary_emb
            key = cfg.layer_types[i]
            inv = getattr(rotary, f"{key}_inv_freq", getattr(rotary, "inv_freq", None))
            assert_close(rope_inv_freq(cfg, cfg.rope_of(i)), inv.numpy(), "float32", arch)
        assert cfg.tie_word_embeddings == bool(hf.config.tie_word_embeddings)


def _centred_uniforms(policy, reference, ids, mask, y, y_mask, yp, yp_mask) -> np.ndarray:
    """Uniforms at the centre of each token's CDF interval under the uncached full forward
    (one pass over prompt + completion), float64 CDF."""

    def along(model, toks, tmask):
        full = np.concatenate([ids, toks], 1)
        fmask = np.concatenate([mask, tmask], 1)
        return _jax_logits(model, full, fmask)[:, ids.shape[1] - 1 : -1]

    lp_y = ref_np.log_softmax(along(policy, y, y_mask) / TEMP)
    lp_yp = ref_np.mixture_logprobs(
        along(policy, yp, yp_mask), along(reference, yp, yp_mask), BETA, TEMP
    )
    u = np.full((2 * ids.shape[0], MAX_NEW), 0.5)
    b = ids.shape[0]
    for rows, lp, toks, tmask in (
        (slice(0, b), lp_y, y, y_mask),
        (slice(b, None), lp_yp, yp, yp_mask),
    ):
        p = np.exp(lp)
        before = np.cumsum(p, -1) - p
        tok = toks[..., None]
        centre = (np.take_along_axis(before, tok, -1) + np.take_along_axis(p, tok, -1) / 2)[..., 0]
        u[rows] = np.where(tmask == 1, centre, 0.5)
    return u


def _check_decode(hf_models, arch: str) -> None:
    from nlhf_jax.generation import generate_pairs

    hf_ref, ref_path = hf_models(arch, seed=1)
    policy, reference = load_model(hf_models(arch)[1]), load_model(ref_path)
    ids, mask = _batch(seed=2, width=7)
    kw = dict(
        beta=BETA,
        max_new_tokens=MAX_NEW,
        temperature=TEMP,
        eos_token_id=EOS,
        pad_token_id=PAD,
        return_reference_logits=True,
    )
    u0 = np.random.RandomState(5).rand(2 * ids.shape[0], MAX_NEW)
    first = generate_pairs(policy, reference, ids, mask, uniforms=u0, **kw)
    y, y_mask = np.asarray(first.y), np.asarray(first.y_mask)
    yp, yp_mask = np.asarray(first.y_prime), np.asarray(first.y_prime_mask)
    assert (y_mask.sum(1) > WINDOW).any()  # completions run past the window
    u = _centred_uniforms(policy, reference, ids, mask, y, y_mask, yp, yp_mask)
    again = generate_pairs(policy, reference, ids, mask, uniforms=u, **kw)
    np.testing.assert_array_equal(np.asarray(again.y), y)
    np.testing.assert_array_equal(np.asarray(again.y_prime), yp)
    np.testing.assert_array_equal(np.asarray(again.y_mask), y_mask)
    np.testing.assert_array_equal(np.asarray(again.y_prime_mask), yp_mask)
    # the cached reference logits along y are transformers' (uncached) ones
    full = np.concatenate([ids, y], 1)
    fmask = np.concatenate([mask, y_mask], 1)
    want = hf_logits(hf_ref, full, fmask)[:, ids.shape[1] - 1 : -1]
    live = y_mask == 1
    got = np.asarray(again.reference_logits, np.float64)
    assert_close(got[live], want[live], "float32", f"{arch} reference logits", scope="model")


@pytest.mark.slow  # ≈ 10–30 s each on 2 shared cores: mostly the decode loop's compile
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decode_matches_the_uncached_forward(hf_models, arch):
    _check_decode(hf_models, arch)


@pytest.mark.slow  # ≈ 7 s on 2 shared cores, most of it importing peft
@pytest.mark.parametrize("arch", ["phi3", "gemma3"])
def test_peft_lora_adapters_give_peft_logits(hf_models, tmp_path, arch):
    """peft LoRA on every linear layer (Phi-3: the fused qkv_proj and gate_up_proj), A and
    B random: the jax model with the adapter loaded gives peft's logits, and with the
    adapter off the base model's."""
    peft = pytest.importorskip("peft")
    from nlhf_jax import lora as L

    hf, path = hf_models(arch)
    base = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    cfg = peft.LoraConfig(r=2, lora_alpha=6, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(3)
    peft_model = peft.get_peft_model(base, cfg).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    if arch == "phi3":
        leaves = {t.rsplit(".", 1)[-1] for t in saved["target_modules"]}
        assert {"qkv_proj", "gate_up_proj"} <= leaves
    model = L.load_adapter(load_model(path), tmp_path / "adapter")
    ids, mask = _batch(seed=4)
    want = hf_logits(peft_model, ids, mask)
    live = mask == 1
    got = _jax_logits(model, ids, mask)
    assert_close(got[live], want[live], "float32", f"{arch} LoRA logits", scope="model")
    base_logits = hf_logits(hf, ids, mask)
    assert np.abs(want[live] - base_logits[live]).max() > 0.1  # the adapter matters
    off = _jax_logits(L.without_adapter(model), ids, mask)
    assert_close(off[live], base_logits[live], "float32", f"{arch} adapter off", scope="model")


def test_unsupported_configs_are_located_errors(tmp_path):
    def write(d: dict) -> Path:
        (tmp_path / "config.json").write_text(json.dumps(d))
        return tmp_path

    gpt2 = transformers.GPT2Config(n_layer=1).to_dict()
    with pytest.raises(InputError) as err:
        load_config(write(gpt2))
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'config.json'}: model_type: 'gpt2'")
    for name in ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3"):
        assert name in msg
    phi = hf_config("phi3").to_dict()
    phi["rope_parameters"] = {
        "rope_type": "longrope",
        "rope_theta": 1e4,
        "short_factor": [1.0] * 2,
        "long_factor": [2.0] * 2,
        "original_max_position_embeddings": 16,
    }
    with pytest.raises(
        InputError, match=r"config.json: rope_parameters.rope_type: 'longrope'.*phi3"
    ):
        load_config(write(phi))
    legacy = dict(phi, rope_parameters=None, rope_scaling={"type": "su", **phi["rope_parameters"]})
    legacy["rope_scaling"].pop("rope_type")
    with pytest.raises(InputError, match=r"rope_scaling.rope_type: 'longrope'"):
        load_config(write(legacy))
    llama = hf_config("llama3").to_dict()
    llama["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(InputError, match=r"'dynamic'.*default, linear, llama3"):
        load_config(write(llama))
    gemma = hf_config("gemma3").to_dict()
    gemma["use_bidirectional_attention"] = True
    with pytest.raises(InputError, match="use_bidirectional_attention"):
        load_config(write(gemma))
    act = dict(hf_config("qwen3").to_dict(), hidden_act="relu")
    with pytest.raises(InputError, match="hidden_act: 'relu'"):
        load_config(write(act))


def test_transformers_4_style_configs_are_read():
    """Legacy keys: ``rope_theta`` + ``rope_scaling`` (type), Gemma 3's
    ``rope_local_base_freq`` and ``sliding_window_pattern``, defaults of omitted fields."""
    base = dict(SMALL, num_hidden_layers=6)
    gemma3 = DecoderConfig.from_dict(
        dict(
            base,
            model_type="gemma3_text",
            rope_theta=1e6,
            rope_local_base_freq=10.0,
            sliding_window_pattern=3,
            rope_scaling={"type": "linear", "factor": 8.0},
        )
    )
    assert gemma3.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2
    assert gemma3.layer_windows == (4096, 4096, None) * 2
    assert gemma3.rope_parameters == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert gemma3.sliding_rope_parameters == {"rope_type": "default", "rope_theta": 10.0}
    assert gemma3.attention_scale == 256**-0.5 and gemma3.tie_word_embeddings
    gemma2 = DecoderConfig.from_dict(dict(base, model_type="gemma2"))
    assert gemma2.attn_logit_softcapping == 50.0 and gemma2.final_logit_softcapping == 30.0
    assert gemma2.layer_windows == (4096, None) * 3
    qwen = DecoderConfig.from_dict(
        dict(base, model_type="qwen2", use_sliding_window=False, sliding_window=4096)
    )
    assert qwen.layer_windows == (None,) * 6
    mistral = DecoderConfig.from_dict(dict(base, model_type="mistral", sliding_window=None))
    assert mistral.layer_windows == (None,) * 6


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_sequence_classification_matches_transformers(tmp_path, arch):
    """``<Arch>ForSequenceClassification`` directories (Gemma 3: the text classifier) load
    as the jax classifier and score the last non-pad token as transformers does."""
    torch.manual_seed(7)
    config = hf_config(arch)
    config.num_labels = 1
    hf = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    cls = model.config.architecture.sequence_classification
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [cls]
    ids, mask = _batch(seed=6)
    want = np.zeros((ids.shape[0], 1))
    for r in range(ids.shape[0]):
        with torch.no_grad():
            want[r] = hf(torch.tensor(ids[r, mask[r] == 1][None])).logits[0].double().numpy()
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)), np.float64)
    assert_close(got, want, "float32", f"{arch} scores", scope="model")


@pytest.mark.slow
@pytest.mark.parametrize("arch, lora", [("gemma2", False), ("phi3", True)])
def test_jax_trainer_runs_the_architecture(tmp_path, arch, lora):
    """``task: nash`` on jax end to end: two steps move the policy (Gemma 2: every weight;
    Phi-3: a LoRA adapter on the fused projections), and the saved checkpoint loads in
    transformers with the jax model's logits."""
    from nlhf.runio import checkpoint_dir, read_metrics
    from nlhf.spec.models import RunSpec
    from nlhf.testing.tiny_models import build_tokenizer
    from nlhf_jax.trainer import train_nash
    from tokenizers import Tokenizer

    model_dir = build_tokenizer(tmp_path / "model")
    vocab = Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()
    config = hf_config(arch)
    config.vocab_size = vocab
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2  # the tokenizer's
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Fruit?", "Pick:"]))
    policy: dict = {"model": str(model_dir)}
    if lora:
        policy["lora"] = {"r": 2, "alpha": 4.0}
    spec = RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 3,
            "policy": policy,
            "preference": {"name": "oracle", "function": "population"},
            "data": {"path": str(prompts), "format": "prompt"},
            "algorithm": {"name": "nash_md_pg", "tau": 0.05},
            "training": {
                "steps": 2,
                "batch_size": 2,
                "lr": 1e-2,
                "generation": {"max_new_tokens": 6},
            },
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    summary = train_nash(spec, tmp_path / "run")
    assert summary["backend"] == "jax"
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2] and records[-1]["kl"] > 0
    saved = checkpoint_dir(tmp_path / "run", 2)
    if lora:
        from nlhf_jax import lora as L

        model = L.load_adapter(load_model(model_dir), saved)
        assert L.adapter_state_dict(model)
    else:
        model = load_model(saved)
    ids, mask = _batch(seed=8)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir if lora else saved).eval()
    if lora:
        import peft

        hf = peft.PeftModel.from_pretrained(hf, saved).eval()
    want = hf_logits(hf, ids, mask)
    live = mask == 1
    got = _jax_logits(model, ids, mask)
    assert_close(got[live], want[live], "float32", f"{arch} trained logits", scope="model")
    before = _jax_logits(load_model(model_dir), ids, mask)
    assert np.abs(got[live] - before[live]).max() > 1e-3  # training moved the logits


@pytest.mark.slow  # ≈ 3–12 s each on 2 shared cores (bfloat16 kernels compile anew)
@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "qwen3", "phi3"])
def test_bfloat16_is_as_accurate_as_transformers(hf_models, arch):
    """bfloat16 weights: against the same weights in float64 (transformers' forward), the
    jax model's error is within 2× transformers' own bfloat16 error at worst and 1.5× on
    average (the two round differently; Gemma's norm and embedding-scale casts matter)."""
    hf, path = hf_models(arch)
    ids, mask = _batch(seed=9)
    live = mask == 1
    exact = hf_logits(copy.deepcopy(hf).to(torch.float64), ids, mask)
    half = hf_logits(copy.deepcopy(hf).to(torch.bfloat16), ids, mask)
    got = _jax_logits(load_model(path, dtype="bfloat16"), ids, mask)
    err, err_hf = np.abs(got - exact)[live], np.abs(half - exact)[live]
    assert err.max() <= 2 * err_hf.max(), (err.max(), err_hf.max())
    assert err.mean() <= 1.5 * err_hf.mean(), (err.mean(), err_hf.mean())
    assert err.mean() <= tolerance("bfloat16", "model").atol, err.mean()
