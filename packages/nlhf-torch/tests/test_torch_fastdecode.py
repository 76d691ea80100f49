"""The fused Llama/Qwen2 sampler (:mod:`nlhf_torch.fastdecode`) against transformers' forward.

Oracles: the HF path of :func:`generate_pairs` (``fast_decode=False``: HF forward with a
DynamicCache) for tokens, masks and EOS handling, and the uncached HF forward over prompt +
prefix for the reference logits returned along y. float64 models make token equality exact
(random uniforms, no CDF boundary within rounding); float32 logits agree to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from nlhf.testing.tolerances import assert_close
from nlhf_torch import fastdecode
from nlhf_torch.generation import generate_pairs
from nlhf_torch.tiny import tiny_config
from transformers import AutoModelForCausalLM

V, EOS, PAD, B, MAX_NEW = 40, 0, 1, 3, 6
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}
LINEAR = {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}
CASES = {
    "llama": ("llama", {}),
    "llama-bias-tied-mha": ("llama", {"attention_bias": True, "tie": True, "kv": 4}),
    "llama-rope-llama3": ("llama", {"rope_parameters": LLAMA3}),
    "llama-rope-linear": ("llama", {"rope_parameters": LINEAR}),
    "qwen2": ("qwen2", {}),
    "qwen2-tied": ("qwen2", {"tie": True}),
}


def _model(arch: str, seed: int, dtype=torch.float64, **extra):
    tie, kv = extra.pop("tie", False), extra.pop("kv", 2)
    cfg = tiny_config(arch, V, hidden_size=32, heads=4, kv_heads=kv, tie_word_embeddings=tie)
    for k, v in extra.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


def _prompts():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (B, 7), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in enumerate([3, 0, 5]):
        mask[row, :n_pad], ids[row, :n_pad] = 0, PAD
    return ids, mask


def _uniforms(eos_at):
    u = 0.05 + 0.9 * torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(4))
    u = u.double()
    for row, step in eos_at.items():
        u[row, step] = 1e-6  # below p(EOS): forces token 0
    return u


def _both(policy, reference, **kw):
    ids, mask = _prompts()
    args = dict(max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=PAD, **kw)
    fast = generate_pairs(policy, reference, ids, mask, fast_decode=True, **args)
    slow = generate_pairs(policy, reference, ids, mask, fast_decode=False, **args)
    assert fast.stats["fast_decode"] == 1 and slow.stats["fast_decode"] == 0
    return fast, slow, ids, mask


def _same_tokens(fast, slow):
    for name in ("y", "y_mask", "y_prime", "y_prime_mask"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name


@pytest.mark.parametrize("case", list(CASES))
def test_tokens_and_reference_logits_match_hf(case):
    arch, extra = CASES[case]
    policy, reference = _model(arch, 0, **dict(extra)), _model(arch, 1, **dict(extra))
    assert fastdecode.supported(policy)
    u = _uniforms({0: 1, 4: 2})  # y row 0 and y' row 1 stop early; EOS kept in the mask
    fast, slow, ids, mask = _both(
        policy, reference, beta=0.5, temperature=0.8, uniforms=u, return_reference_logits=True
    )
    _same_tokens(fast, slow)
    assert not fast.reference_logits[0, 2:].any()  # zeros after y row 0's EOS
    assert fast.y[0, 1] == EOS and fast.y_mask[0].tolist()[:3] == [1, 1, 0]
    assert (fast.y[0, 2:] == PAD).all() and fast.y_prime_mask[1, 3:].sum() == 0
    with torch.no_grad():  # independent oracle: uncached HF forward over prompt + prefix
        for n in range(fast.y.shape[1]):
            seq = torch.cat([ids, fast.y[:, :n]], 1)
            am = torch.cat([mask, torch.ones(B, n, dtype=mask.dtype)], 1)
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            want = reference(input_ids=seq, attention_mask=am, position_ids=pos).logits[:, -1]
            live = fast.y_mask[:, n].bool()
            assert_close(fast.reference_logits[live, n], want[live], "float64", scope="model")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float32_logits_match_the_hf_path(arch):
    policy, reference = _model(arch, 0, torch.float32), _model(arch, 1, torch.float32)
    fast, slow, _, _ = _both(
        policy,
        reference,
        beta=0.3,
        temperature=1.0,
        uniforms=_uniforms({}),
        return_reference_logits=True,
    )
    _same_tokens(fast, slow)
    assert_close(fast.reference_logits, slow.reference_logits, scope="model")


@pytest.mark.parametrize("opponent", ["policy", "reference", "model"])
def test_opponents_and_generator(opponent):
    policy, reference, ema = (_model("qwen2", s) for s in (0, 1, 2))
    fast, slow, _, _ = _both(
        policy,
        reference,
        beta=0.4,
        temperature=0.9,
        opponent=opponent,
        opponent_model=ema,
        generator=None,
        uniforms=_uniforms({2: 0, 3: 3}),
    )
    _same_tokens(fast, slow)
    ids, mask = _prompts()
    kw = dict(beta=0.5, max_new_tokens=MAX_NEW, temperature=1.0, eos_token_id=None)
    a, b = (
        generate_pairs(
            policy,
            reference,
            ids,
            mask,
            pad_token_id=PAD,
            generator=torch.Generator().manual_seed(9),
            fast_decode=f,
            **kw,
        )
        for f in (True, False)
    )
    assert torch.equal(a.y, b.y) and torch.equal(a.y_prime, b.y_prime)


def test_mixed_architectures_use_separate_groups():
    policy, reference = _model("llama", 0), _model("qwen2", 1)
    fast, slow, _, _ = _both(
        policy, reference, beta=0.5, temperature=0.7, uniforms=_uniforms({5: 1})
    )
    _same_tokens(fast, slow)


def test_fallbacks(monkeypatch):
    llama = _model("llama", 0)
    assert fastdecode.supported(llama)
    gpt2 = AutoModelForCausalLM.from_config(tiny_config("gpt2", V)).eval()
    assert not fastdecode.supported(gpt2)
    assert fastdecode.supported(_model("llama", 0, torch.bfloat16))  # half precision fuses
    dyn = _model(
        "llama", 0, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}
    )
    assert not fastdecode.supported(dyn)
    hooked = _model("llama", 0)
    hooked.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert not fastdecode.supported(hooked)

    class LoraLinear(torch.nn.Linear):  # stands for a PEFT-injected layer
        pass

    lora = _model("llama", 0)
    old = lora.model.layers[1].self_attn.q_proj
    lora.model.layers[1].self_attn.q_proj = LoraLinear(old.in_features, old.out_features)
    assert not fastdecode.supported(lora)
    zero3 = _model("llama", 0)
    zero3.model.norm.weight.ds_id = 3  # DeepSpeed ZeRO-3 marks partitioned parameters
    assert "outside DeepSpeed's partitioning" in fastdecode.unsupported_reason(zero3)
    ids, mask = _prompts()
    kw = dict(beta=0.5, max_new_tokens=2, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD)
    out = generate_pairs(gpt2, gpt2, ids, mask, **kw)
    assert out.stats["fast_decode"] == 0
    monkeypatch.setenv("NLHF_FAST_DECODE", "1")
    assert generate_pairs(llama, llama, ids, mask, **kw).stats["fast_decode"] == 1
    monkeypatch.setenv("NLHF_FAST_DECODE", "0")
    assert generate_pairs(llama, llama, ids, mask, **kw).stats["fast_decode"] == 0


DS_SCRIPT = """
import os, sys, json
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0", DS_ACCELERATOR="cpu")
import torch, deepspeed
from transformers import AutoModelForCausalLM
from nlhf_torch import fastdecode

deepspeed.init_distributed(dist_backend="gloo")
out = {}
for stage in (1, 2, 3):
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
           "zero_optimization": {"stage": stage}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    out[f"zero{stage}"] = fastdecode.supported(engine.module)
    if stage == 2:  # a hook of the user's own still sends it to the HF path
        handle = engine.module.register_forward_hook(lambda *a: None)
        out["zero2_user_hook"] = fastdecode.supported(engine.module)
        handle.remove()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_deepspeed_zero_engines_use_the_fast_path(tmp_path):
    """A ZeRO 1/2 engine's module keeps whole float32 parameters; only the engine's own
    bookkeeping hooks sit on it, so it decodes fast. ZeRO-3 (partitioned) does too, its
    parameters gathered once per generation (test_torch_fastdecode_models.py)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    model = AutoModelForCausalLM.from_config(tiny_config("llama", V))
    model.save_pretrained(tmp_path / "m")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    script = tmp_path / "ds.py"
    script.write_text(DS_SCRIPT)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "m"), port],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"zero1": True, "zero2": True, "zero2_user_hook": False, "zero3": True}
