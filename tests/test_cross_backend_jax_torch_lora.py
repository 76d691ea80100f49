"""jax LoRA (:mod:`nlhf_jax.lora`) vs peft on transformers, the torch backend's LoRA
(``nlhf_torch.models._apply_lora``): same adapter weights give the same logits and LoRA
gradients (float32, 1e-5), adapters cross between the two in peft's file format, the
disabled adapter is the base model, and A is initialised from the same distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")
peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from nlhf.testing.tolerances import assert_close  # noqa: E402
from nlhf_jax import lora as L  # noqa: E402
from nlhf_jax.models import load_model  # noqa: E402

R, ALPHA = 4, 12.0
ARCHS = ["llama", "qwen2"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Llama and Qwen2 (q/k/v biases) with weights ~ N(0, 0.2²): logits of O(1-5)
    whose float32 rounding stays well inside 1e-5 (at 0.3 the attention is so peaked that
    even the base models differ by ~1.2e-5 between torch and jax)."""
    from nlhf_torch.tiny import build_tiny_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("xlora")
    tok = build_tiny_model(root / "tok", "llama")
    out = {}
    for i, arch in enumerate(ARCHS):
        raw = build_tiny_model(root / f"{arch}-raw", arch, tokenizer_dir=tok, seed=i)
        model = AutoModelForCausalLM.from_pretrained(raw)
        gen = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if "norm" in name else 0))
        model.save_pretrained(root / arch)
        out[arch] = root / arch
    return out


def _batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(0).randint(3, vocab, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def _torch_base(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _torch_logits(model, ids, mask) -> np.ndarray:
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)  # generate()'s left-padding positions
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos))  # fmt: skip
    return out.logits.numpy()


def _jax_logits(model, ids, mask) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))[0])


def _peft_model(path: Path, targets, seed: int = 0):
    """peft exactly as the torch backend builds it, then A, B ~ N(0, 0.1²) (B ≠ 0)."""
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets,
                          task_type="CAUSAL_LM")  # fmt: skip
    model = peft.get_peft_model(_torch_base(path), cfg)
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _peft_names(model) -> dict[str, tuple[int, ...]]:
    sd = peft.get_peft_model_state_dict(model)
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_adapter_loads_in_jax(bases, tmp_path, arch):
    pm = _peft_model(bases[arch], "all-linear")
    pm.save_pretrained(tmp_path / "adapter")
    ids, mask = _batch(pm.config.vocab_size)
    want = _torch_logits(pm, ids, mask)
    with pm.disable_adapter():
        want_off = _torch_logits(pm, ids, mask)
    base_logits = _torch_logits(_torch_base(bases[arch]), ids, mask)
    np.testing.assert_array_equal(want_off, base_logits)  # the oracle itself
    assert np.abs(want - base_logits).max() > 0.1

    jm = L.load_adapter(load_model(bases[arch]), tmp_path / "adapter")
    assert len(L.lora_layers(jm)) == 7 * pm.config.num_hidden_layers
    real = mask == 1
    assert_close(_jax_logits(jm, ids, mask)[real], want[real], what="logits", scope="model")
    off = _jax_logits(L.without_adapter(jm), ids, mask)
    assert_close(off[real], base_logits[real], what="adapter off", scope="model")


@pytest.mark.parametrize("arch", ARCHS)
def test_jax_adapter_loads_in_peft(bases, tmp_path, arch):
    from nlhf.spec.models import LoraSpec

    jm = load_model(bases[arch])
    spec = LoraSpec(
        r=R, alpha=ALPHA, dropout=0.1, target_modules=["q_proj", "v_proj", "mlp.up_proj"]
    )
    L.apply_lora(jm, spec, seed=3)
    rng = np.random.RandomState(3)
    for _, layer in sorted(L.lora_layers(jm).items()):
        layer.lora.lora_b[...] = jnp.asarray(rng.randn(*layer.lora.lora_b.shape) * 0.1)
    L.save_adapter(jm, tmp_path / "adapter", spec, bases[arch])

    pm = peft.PeftModel.from_pretrained(_torch_base(bases[arch]), tmp_path / "adapter").eval()
    cfg = pm.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (R, ALPHA, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "v_proj", "mlp.up_proj"}
    assert cfg.base_model_name_or_path == str(bases[arch])
    adapted = {n.rsplit(".", 2)[0] for n in _peft_names(pm) if n.endswith("lora_A.weight")}
    assert adapted == {"base_model.model." + k for k in L.lora_layers(jm)}
    ids, mask = _batch(pm.config.vocab_size)
    real = mask == 1
    got, want = _jax_logits(jm, ids, mask), _torch_logits(pm, ids, mask)
    assert np.abs(want - _torch_logits(_torch_base(bases[arch]), ids, mask)).max() > 0.1
    assert_close(got[real], want[real], what="logits", scope="model")


@pytest.mark.parametrize(
    "targets",
    ["all-linear", ["q_proj", "v_proj"], ["layers.1.mlp.down_proj", "k_proj"],
     ["model.layers.0.self_attn.o_proj"]],
)  # fmt: skip
def test_adapted_layers_and_tensor_names_match_peft(bases, targets):
    from nlhf.spec.models import LoraSpec

    want = _peft_names(_peft_model(bases["llama"], targets))
    jm = L.apply_lora(load_model(bases["llama"]), LoraSpec(r=R, target_modules=targets), seed=0)
    got = {k: v.shape for k, v in L.adapter_state_dict(jm).items()}
    assert got == want


def test_lora_gradients_match_peft(bases, tmp_path):
    """∂/∂(A, B) of the mean log-prob of fixed next tokens, torch autograd vs jax.grad."""
    pm = _peft_model(bases["qwen2"], "all-linear", seed=1)
    pm.save_pretrained(tmp_path / "adapter")
    ids, mask = _batch(pm.config.vocab_size)
    targets = np.random.RandomState(1).randint(0, pm.config.vocab_size, size=ids.shape)
    weights = mask.astype(np.float32) / mask.sum()

    pos = np.clip(mask.cumsum(-1) - 1, 0, None)
    logits = pm(torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(pos)).logits  # fmt: skip
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
    (lp * torch.tensor(weights)).sum().backward()
    want = {n.replace(".default", ""): p.grad.numpy() for n, p in pm.named_parameters()
            if p.requires_grad}  # fmt: skip
    assert all(".lora_" in n for n in want)

    jm = L.load_adapter(load_model(bases["qwen2"]), tmp_path / "adapter")
    graphdef, lora_state, rest = nnx.split(jm, L.LORA_FILTER, ...)

    @jax.jit
    def grad(lora_state, rest):
        def loss(s):
            out = nnx.merge(graphdef, s, rest)(jnp.asarray(ids), jnp.asarray(mask))[0]
            lp = jnp.take_along_axis(jax.nn.log_softmax(out), jnp.asarray(targets)[..., None], -1)
            return (lp[..., 0] * jnp.asarray(weights)).sum()

        return jax.grad(loss)(lora_state)

    got = L.adapter_state_dict(grad(lora_state, rest))
    assert set(got) == set(want) and len(got) == 2 * 7 * pm.config.num_hidden_layers
    assert min(np.abs(g).max() for g in want.values()) > 1e-4  # every tensor has a gradient
    for name, g in want.items():
        assert_close(got[name], g, what=name, scope="model")


def test_a_init_matches_peft_distribution(bases):
    """peft draws A with kaiming_uniform_(a=√5); jax's A·√in and peft's A·√in come from
    the same distribution (two-sample Kolmogorov–Smirnov), and both start with B = 0."""
    from nlhf.spec.models import LoraSpec
    from scipy import stats

    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
    sd = peft.get_peft_model_state_dict(peft.get_peft_model(_torch_base(bases["llama"]), cfg))
    jm = load_model(bases["llama"])
    L.apply_lora(jm, LoraSpec(r=R, alpha=ALPHA), seed=0)
    jsd = L.adapter_state_dict(jm)
    assert set(sd) == set(jsd)

    def normalised(tensors, which):
        return np.concatenate([np.asarray(v).ravel() * np.sqrt(np.asarray(v).shape[1])
                               for k, v in sorted(tensors.items()) if which in k])  # fmt: skip

    for tensors in (sd, jsd):
        assert not normalised(tensors, "lora_B").any()
    z_torch, z_jax = normalised(sd, "lora_A"), normalised(jsd, "lora_A")
    assert z_torch.size == z_jax.size > 1000
    assert stats.ks_2samp(z_torch, z_jax).pvalue > 1e-3
