"""The fused decoder (:mod:`nlhf_torch.fastdecode`) on the models users run: half precision,
LoRA adapters and the 2026 architectures, each against transformers' own forward.

Oracles: the HF path of :func:`generate_pairs` (``fast_decode=False``: transformers'
forward with a DynamicCache) for tokens, masks and the reference logits along y, and an
uncached transformers forward over prompt + completion (:func:`sequence_logits`) that
places every injected uniform at the centre of its token's CDF interval. Centred uniforms
make "same uniforms → same tokens" a claim that rounding cannot flip: a token changes only
if the fused logits move its CDF interval by half its probability, far beyond the dtype's
tolerance. Logits are compared with the same weights evaluated in float64 by an uncached
transformers forward: at the dtype's model-scope tolerance in float64, and in half
precision (where the two paths round differently) no less accurate than transformers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from nlhf.testing.tolerances import assert_close, tolerance
from nlhf_torch import fastdecode
from nlhf_torch.generation import generate_pairs, sequence_logits
from nlhf_torch.kernels import mixture_logprobs
from transformers import AutoModelForCausalLM

V, EOS, PAD, B, MAX_NEW, WINDOW = 48, 0, 1, 3, 6, 4
BETA, TEMP = 0.4, 0.9
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
    initializer_range=0.15,  # logits of order 1, so that tolerances mean something
)
SLIDING = ["sliding_attention", "full_attention"]


def _config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**SMALL)
    if arch == "qwen2":
        return tf.Qwen2Config(**SMALL, attention_bias=True)
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
            attn_logit_softcapping=0.5,  # kept in the config, never applied by Gemma 3
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


def _model(arch: str, seed: int, dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(arch)).to(dtype).eval()


def _prompts(padded: bool = True):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (B, 7), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in enumerate([3, 0, 5] if padded else []):
        mask[row, :n_pad], ids[row, :n_pad] = 0, PAD
    return ids, mask


def _centred(policy, reference, ids, mask, out) -> torch.Tensor:
    """Uniforms at the centre of the CDF interval of every token of ``out``, from the
    uncached HF forward over prompt + completion (float64 CDF)."""
    with torch.no_grad():
        lp_y = torch.log_softmax(
            sequence_logits(policy, ids, mask, out.y, out.y_mask).float() / TEMP, -1
        )
        pol = sequence_logits(policy, ids, mask, out.y_prime, out.y_prime_mask)
        ref = sequence_logits(reference, ids, mask, out.y_prime, out.y_prime_mask)
        lp_yp = mixture_logprobs(pol, ref, BETA, TEMP)
    u = torch.full((2 * B, MAX_NEW), 0.5, dtype=torch.float64)
    for rows, lp, toks, msk in (
        (slice(0, B), lp_y, out.y, out.y_mask),
        (slice(B, 2 * B), lp_yp, out.y_prime, out.y_prime_mask),
    ):
        p = lp.double().exp()
        cdf_before = p.cumsum(-1) - p
        tok = toks[:, :, None]
        centre = (cdf_before.gather(-1, tok) + p.gather(-1, tok) / 2).squeeze(-1)
        t = toks.shape[1]
        u[rows, :t] = torch.where(msk.bool(), centre, torch.full_like(centre, 0.5))
    return u


def _generate(policy, reference, uniforms, fast, padded):
    ids, mask = _prompts(padded)
    return generate_pairs(
        policy,
        reference,
        ids,
        mask,
        beta=BETA,
        temperature=TEMP,
        max_new_tokens=MAX_NEW,
        eos_token_id=EOS,
        pad_token_id=PAD,
        uniforms=uniforms,
        return_reference_logits=True,
        fast_decode=fast,
    )


def _float64_copy(model):
    from nlhf_torch.models import AdapterDisabled

    if isinstance(model, AdapterDisabled):  # the policy is held, not registered, by μ
        return AdapterDisabled(_float64_copy(model._policy[0]))
    return copy.deepcopy(model).to(torch.float64)


def _check_parity(policy, reference, dtype: str) -> None:
    # transformers 5's eager Gemma 2 forward returns NaN logits on every position of a
    # left-padded row (its own HF path cannot serve as the oracle there): unpadded prompts
    padded = policy.config.model_type != "gemma2"
    ids, mask = _prompts(padded)
    u0 = torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    first = _generate(policy, reference, u0, fast=False, padded=padded)
    u = _centred(policy, reference, ids, mask, first)
    slow = _generate(policy, reference, u, fast=False, padded=padded)
    fast = _generate(policy, reference, u, fast=True, padded=padded)
    assert slow.decode_path.startswith("hf") and fast.decode_path == "fused"
    for name in ("y", "y_mask", "y_prime", "y_prime_mask"):
        assert torch.equal(getattr(slow, name), getattr(first, name)), f"centring moved {name}"
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    # logits: the same weights in float64, one uncached forward over prompt + y
    exact = _float64_copy(reference)
    with torch.no_grad():
        want = sequence_logits(exact, ids, mask, fast.y, fast.y_mask)
    live = fast.y_mask.bool()
    got = fast.reference_logits.double()[live]
    if dtype in ("float64", "float32"):
        assert_close(got, want[live], dtype, "reference logits along y", scope="model")
        return
    # half precision: transformers' own forward misses the exact values by up to ~1.5 of
    # the model-scope tolerance on single elements, so the fused path must be as accurate
    # as transformers (max error within 2×, mean within 1.5× of the HF path's) and its
    # mean error within the dtype's model-scope tolerance
    err = (got - want[live]).abs()
    err_hf = (slow.reference_logits.double()[live] - want[live]).abs()
    assert err.max() <= 2 * err_hf.max(), (err.max(), err_hf.max())
    assert err.mean() <= 1.5 * err_hf.mean(), (err.mean(), err_hf.mean())
    assert err.mean() <= tolerance(dtype, "model").atol, err.mean()


HALF_ARCHS = ["llama", "qwen2"]


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("arch", HALF_ARCHS)
def test_half_precision_matches_hf(arch, dtype):
    dt = getattr(torch, dtype)
    policy, reference = _model(arch, 0, dt), _model(arch, 1, dt)
    assert fastdecode.unsupported_reason(policy) is None
    _check_parity(policy, reference, dtype)


ARCHS = ["qwen2-sliding", "qwen3", "qwen3-sliding", "mistral", "gemma2", "gemma3", "phi3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_matches_hf(arch):
    policy, reference = _model(arch, 0), _model(arch, 1)
    assert fastdecode.unsupported_reason(policy) is None, fastdecode.unsupported_reason(policy)
    _check_parity(policy, reference, "float64")


@pytest.mark.parametrize("arch", ["qwen3", "phi3"])
def test_large_model_path_uses_the_parameters_in_place(arch, monkeypatch):
    """Above FUSE_MAX_PARAMS nothing is stacked or concatenated: each member's matmuls read
    its own parameter tensors (Phi-3's fused qkv_proj as it is); tokens still match."""
    monkeypatch.setattr(fastdecode, "FUSE_MAX_PARAMS", 0)
    policy, reference = _model(arch, 0), _model(arch, 1)
    group = fastdecode.FastGroup([policy, reference], torch.arange(2 * B), MAX_NEW)
    qkv = group.layers[0]["qkv"]
    assert not qkv.shared and not qkv.fuse
    attn = reference.model.layers[0].self_attn
    own = attn.qkv_proj.weight if arch == "phi3" else attn.q_proj.weight
    assert qkv.w[1][0].data_ptr() == own.data_ptr()
    _check_parity(policy, reference, "float64")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_bfloat16_matches_hf(arch):
    policy, reference = _model(arch, 0, torch.bfloat16), _model(arch, 1, torch.bfloat16)
    _check_parity(policy, reference, "bfloat16")


def _lora_policy(arch: str = "llama", dtype: torch.dtype = torch.float64, **lora_kw):
    """A peft LoRA policy whose B matrices are random (peft initialises B = 0, which would
    make the adapter a no-op), and its reference: the same module with the adapter off."""
    from nlhf_torch.models import AdapterDisabled
    from peft import LoraConfig, get_peft_model

    base = _model(arch, 0, dtype)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.2,
        target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
        task_type="CAUSAL_LM",
        **lora_kw,
    )
    policy = get_peft_model(base, cfg)
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    return policy.eval(), AdapterDisabled(policy)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused-copies", "in-place"])
def test_lora_policy_and_adapter_off_reference_match_hf(fuse, monkeypatch):
    if not fuse:  # the path of models above FUSE_MAX_PARAMS: weights used in place
        monkeypatch.setattr(fastdecode, "FUSE_MAX_PARAMS", 0)
    policy, reference = _lora_policy()
    assert fastdecode.unsupported_reason(policy) is None
    assert fastdecode.unsupported_reason(reference) is None
    ids, mask = _prompts()
    with torch.no_grad():  # the adapter changes the logits: the test would see it missing
        on = policy(input_ids=ids, attention_mask=mask).logits
        off = reference(input_ids=ids, attention_mask=mask).logits
    assert (on - off).abs().max() > 0.1
    _check_parity(policy, reference, "float64")
    # generate_pairs puts the policy in eval mode (LoRA dropout off) and restores it
    u = torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    want = _generate(policy, reference, u, fast=True, padded=True)
    policy.train()
    got = _generate(policy, reference, u, fast=True, padded=True)
    assert policy.training
    assert torch.equal(got.y, want.y) and torch.equal(got.y_prime, want.y_prime)
    assert torch.equal(got.reference_logits, want.reference_logits)


def test_lora_reference_shares_the_base_weights():
    """Policy and adapter-off reference in one group run the base weights once, from the
    same tensors (no second copy of the base), and only the policy gets the LoRA deltas."""
    policy, reference = _lora_policy()
    rows = torch.arange(2 * B)
    group = fastdecode.FastGroup([policy, reference], rows, MAX_NEW)
    for part in ("qkv", "o", "gu", "down"):
        lin = group.layers[0][part]
        assert lin.shared, part
        assert lin.lora[1] is None  # adapter off for the reference
    assert (
        group.layers[0]["qkv"].lora[0] is not None and group.layers[0]["down"].lora[0] is not None
    )
    base = policy.get_base_model()
    o_proj = base.model.layers[0].self_attn.o_proj.base_layer.weight
    assert group.layers[0]["o"].w[0].data_ptr() == o_proj.data_ptr()  # the tensor itself
    assert group.embed.data_ptr() == base.model.embed_tokens.weight.data_ptr()
    # policy (2B rows) and μ (the B y' rows) in two groups share one fused q/k/v copy
    memo: dict = {}
    g_pol = fastdecode.FastGroup([policy], rows, MAX_NEW, memo)
    g_ref = fastdecode.FastGroup([reference], rows[B:], MAX_NEW, memo)
    assert g_pol.layers[1]["qkv"].w[0] is g_ref.layers[1]["qkv"].w[0]
    ids, mask = _prompts()
    kw = dict(beta=BETA, temperature=TEMP, max_new_tokens=MAX_NEW, eos_token_id=EOS)
    u = torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    fast, slow = (
        generate_pairs(
            policy, reference, ids, mask, pad_token_id=PAD, uniforms=u, fast_decode=f, **kw
        )
        for f in (True, False)
    )
    assert fast.decode_path == "fused"
    assert torch.equal(fast.y, slow.y) and torch.equal(fast.y_prime, slow.y_prime)


def test_lora_bfloat16_matches_hf():
    policy, reference = _lora_policy("qwen3", torch.bfloat16)
    _check_parity(policy, reference, "bfloat16")


def test_unsupported_adapters_and_models_keep_a_reason():
    from peft import LoraConfig, get_peft_model

    dora, _ = _lora_policy(use_dora=True)
    assert "variant" in fastdecode.unsupported_reason(dora)
    merged, _ = _lora_policy()
    merged.merge_adapter()
    assert "merged" in fastdecode.unsupported_reason(merged)
    saved = get_peft_model(
        _model("llama", 0),
        LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    )
    assert "modules_to_save" in fastdecode.unsupported_reason(saved)
    from peft import PrefixTuningConfig

    prefix = get_peft_model(
        _model("llama", 0), PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
    )
    assert "peft adapter type" in fastdecode.unsupported_reason(prefix)
    long = _config("phi3")
    long.rope_parameters = {
        "rope_type": "longrope",
        "rope_theta": 1e4,
        "short_factor": [1.0] * 2,
        "long_factor": [2.0] * 2,
        "original_max_position_embeddings": 16,
        "partial_rotary_factor": 0.5,
    }
    phi_long = AutoModelForCausalLM.from_config(long)
    assert "longrope" in fastdecode.unsupported_reason(phi_long)
    gpt2 = AutoModelForCausalLM.from_config(__import__("transformers").GPT2Config(n_layer=1))
    assert fastdecode.unsupported_reason(gpt2).startswith("architecture GPT2LMHeadModel")


def test_memory_check_falls_back_with_its_reason(monkeypatch):
    policy, reference = _model("qwen3", 0), _model("qwen3", 1)
    ids, mask = _prompts()
    rows = [2 * B, B]
    need = fastdecode.memory_needed([[policy], [reference]], rows, ids.shape[1], MAX_NEW)
    cfg = policy.config
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 8  # float64
    n_params = sum(p.numel() for p in policy.parameters())
    expected = (
        kv * (2 * B + B) * (ids.shape[1] + MAX_NEW)  # static KV caches
        + 2 * (2 * B + B) * V * 4  # logits and the sampler's float32 copy
        + 2 * n_params * 8  # weight copies (small models are fused)
    )
    assert need == expected
    monkeypatch.setattr(fastdecode, "free_memory", lambda device: need - 1)
    out = generate_pairs(
        policy,
        reference,
        ids,
        mask,
        beta=BETA,
        temperature=TEMP,
        max_new_tokens=MAX_NEW,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    assert out.decode_path.startswith("hf: the fused decode needs") and "GiB" in out.decode_path
    assert out.stats["fast_decode"] == 0
    monkeypatch.setattr(fastdecode, "free_memory", lambda device: need)
    out = generate_pairs(
        policy,
        reference,
        ids,
        mask,
        beta=BETA,
        temperature=TEMP,
        max_new_tokens=MAX_NEW,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    assert out.decode_path == "fused"


ZERO3_SCRIPT = """
import os, sys, json
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0", DS_ACCELERATOR="cpu")
import torch, deepspeed
from transformers import AutoModelForCausalLM
from nlhf_torch import fastdecode
from nlhf_torch.generation import generate_pairs

deepspeed.init_distributed(dist_backend="gloo")
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
reference = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
cfg = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
       "zero_optimization": {"stage": 3}}
engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
policy = engine.module
ids = torch.tensor([[1, 5, 6, 7, 8], [1, 1, 9, 10, 11]])
mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
u = torch.rand(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
kw = dict(beta=0.5, max_new_tokens=5, temperature=1.0, eos_token_id=None, pad_token_id=0,
          uniforms=u, return_reference_logits=True)
before = all(p.numel() == 0 for p in policy.parameters())
fast = generate_pairs(policy, reference, ids, mask, fast_decode=True, **kw)
released = all(p.numel() == 0 for p in policy.parameters())  # before the HF path runs
slow = generate_pairs(policy, reference, ids, mask, fast_decode=False, **kw)
print(json.dumps({
    "reason": fastdecode.unsupported_reason(policy),
    "partitioned": fastdecode.partitioned(policy),
    "path": [fast.decode_path, slow.decode_path],
    "same_tokens": bool(torch.equal(fast.y, slow.y) and torch.equal(fast.y_prime, slow.y_prime)),
    "ref_max_diff": float((fast.reference_logits - slow.reference_logits).abs().max()),
    "partitioned_before": before,
    "released": released,
}))
"""


@pytest.mark.slow
def test_deepspeed_zero3_policy_is_gathered_once_and_released(tmp_path):
    """A ZeRO-3 engine's partitioned policy decodes fused: its parameters are gathered for
    the generation and partitioned again afterwards; tokens equal the HF path (which
    fetches parameters module by module through ZeRO-3's hooks)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config("qwen3")).save_pretrained(tmp_path / "m")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    script = tmp_path / "zero3.py"
    script.write_text(ZERO3_SCRIPT)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "m"), port],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["reason"] is None and out["partitioned"] and out["partitioned_before"]
    assert out["path"][0] == "fused" and out["path"][1].startswith("hf")
    assert out["same_tokens"]
    assert out["ref_max_diff"] <= tolerance("float32", "model").atol
    assert out["released"]
