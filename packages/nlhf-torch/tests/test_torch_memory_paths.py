"""Memory options of the torch stepper: ``training.gradient_checkpointing``,
``training.precision: bf16-mixed`` and the chunked log-probabilities
(``training.logprob_chunk``), each against the plain path on tiny models whose vocabulary
(≈300) is large relative to their hidden size (32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest
import torch
from nlhf.errors import InputError, NLHFError
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.spec.models import TrainingSpec
from nlhf.testing.tolerances import assert_close, tolerance
from nlhf.testing.trainer import LengthOracle
from nlhf.training import NashLoop, Samples, nash_loop
from nlhf_torch import kernels
from nlhf_torch.generation import sequence_hidden, sequence_logits
from nlhf_torch.models import logprob_head, peft_quietly
from nlhf_torch.tiny import build_tiny_model
from nlhf_torch.trainer import TorchStepper, left_pad, right_pad, train_nash
from safetensors.torch import load_file

PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


@pytest.fixture(scope="module")
def plugins() -> Any:
    return build_plugins(extra=[_Plugin()])


@pytest.fixture(scope="module")
def assets(torch_tiny: dict[str, str]) -> dict[str, str]:
    """The session's transformers-initialised tiny Llama and tied Qwen2 (conftest.py)."""
    return torch_tiny


def make_spec(assets: dict[str, str], out: Path, **over: Any) -> RunSpec:
    raw: dict[str, Any] = {
        "seed": 3,
        "policy": {"model": assets["model"]},
        "preference": {"name": "oracle", "function": "length"},
        "data": {"path": assets["data"], "shuffle": False},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {
            "steps": 2,
            "batch_size": 4,
            "lr": 1e-2,
            "logprob_chunk": "off",
            "generation": {"max_new_tokens": 6},
        },
        "output": {"dir": str(out)},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    return RunSpec.model_validate(raw)


# ------------------------------------------------------------------ the chunked kernel
def _oracle_token_logprobs(
    hidden: np.ndarray, weight: np.ndarray, tokens: np.ndarray, temp: float, cap: float | None
) -> np.ndarray:
    """float64 NumPy: log_softmax(ℓ/T)[y] with ℓ = h Wᵀ (soft-capped: c·tanh(ℓ/c))."""
    logits = hidden @ weight.T
    if cap is not None:
        logits = cap * np.tanh(logits / cap)
    z = logits / temp
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("softcap", [None, 2.5])
def test_chunked_token_logprobs_value_and_gradient(chunk: int, softcap: float | None) -> None:
    """Values against a float64 NumPy oracle; gradients (hidden and head weight) and the
    exact-KL terms against the full-logits path of :mod:`nlhf_torch.kernels`."""
    g = torch.Generator().manual_seed(0)
    b, t, h, v, temp = 3, 7, 8, 300, 0.7
    hidden = torch.randn(b, t, h, generator=g)
    head = torch.nn.Linear(h, v, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
    tokens = torch.randint(0, v, (b, t), generator=g)
    ref = torch.randn(b, t, v, generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 5:] = 0

    x = hidden.clone().requires_grad_(True)
    lp, exact = kernels.chunked_token_logprobs(
        x, head, tokens, temp, chunk, softcap=softcap, reference_logits=ref
    )
    expected = _oracle_token_logprobs(
        hidden.double().numpy(),
        head.weight.detach().double().numpy(),
        tokens.numpy(),
        temp,
        softcap,
    )
    assert_close(lp.detach(), expected, what="chunked token log-probs")
    assert exact is not None
    weights = torch.randn(b, t, generator=g)
    ((lp * weights).sum() + (exact * mask).sum()).backward()
    grad_x, grad_w = x.grad.clone(), head.weight.grad.clone()

    x2 = hidden.clone().requires_grad_(True)
    head.weight.grad = None
    logits = head(x2)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    full_lp = kernels.token_logprobs(logits, tokens, temp)
    full_kl, _ = kernels.kl(logits, ref, tokens, mask, "exact", temp)
    ((full_lp * weights).sum() + full_kl.sum()).backward()
    assert_close(exact.detach() * mask, _masked_exact(logits, ref, temp, mask), what="exact KL")
    assert_close(grad_x, x2.grad, what="∂/∂hidden")
    assert_close(grad_w, head.weight.grad, what="∂/∂W_lm")
    seq = kernels.chunked_sequence_logprobs(
        hidden, head, tokens, mask, temp, chunk, softcap=softcap
    )
    assert_close(seq.detach(), (expected * mask.numpy()).sum(-1), what="sequence log-probs")


def _masked_exact(
    logits: torch.Tensor, ref: torch.Tensor, temp: float, mask: torch.Tensor
) -> torch.Tensor:
    logp = torch.log_softmax(logits.detach().double() / temp, -1)
    logq = torch.log_softmax(ref.double() / temp, -1)
    return (logp.exp() * (logp - logq)).sum(-1) * mask


def test_chunked_logprobs_hold_one_chunk_of_logits() -> None:
    """Under autograd only inputs are kept per chunk: the saved tensors of the graph are far
    smaller than the B×T×V logits the full path keeps for its backward."""
    b, t, h, v = 2, 32, 8, 4096
    hidden = torch.randn(b, t, h, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False)
    tokens = torch.randint(0, v, (b, t))
    saved: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        kernels.chunked_token_logprobs(hidden, head, tokens, 1.0, 4)
    chunked = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        kernels.token_logprobs(head(hidden), tokens, 1.0)
    assert chunked < b * t * v / 4
    assert sum(saved) >= b * t * v


# -------------------------------------------------------------- hidden states + head
def _gemma2(root: Path, tokenizer_dir: str) -> Path:
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=3.0,
        attn_logit_softcapping=20.0,
        sliding_window=4,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(4)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():  # logits of a few units, so the soft-cap c·tanh(ℓ/c) bends them
        model.lm_head.weight.mul_(40.0)
    model.save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    return root


@pytest.mark.parametrize("which", ["model", "tied", "gemma2", "lora"])
def test_hidden_and_head_reproduce_the_model_logits(
    assets: dict[str, str], tmp_path: Path, which: str
) -> None:
    """sequence_hidden → logprob_head (tied embeddings, Gemma 2's soft-cap, a LoRA-adapted
    lm_head) gives the log-probs of the model's own forward (sequence_logits)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets["tied" if which == "tied" else "model"]
    if which == "gemma2":
        path = str(_gemma2(tmp_path / "gemma2", assets["model"]))
    model = AutoModelForCausalLM.from_pretrained(path)
    if which == "lora":
        from peft import LoraConfig, get_peft_model

        with peft_quietly():
            model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
        for name, p in model.named_parameters():  # B ≠ 0, so the adapter changes logits
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(5))
    tok = AutoTokenizer.from_pretrained(path)
    ids, mask = left_pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id, "cpu")
    comp, cmask = right_pad([[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]], tok.pad_token_id, "cpu")
    found = logprob_head(model)
    assert isinstance(found, tuple)
    head, softcap = found
    assert (softcap == 3.0) if which == "gemma2" else softcap is None
    with torch.no_grad():
        full = kernels.token_logprobs(sequence_logits(model, ids, mask, comp, cmask), comp, 0.9)
        hidden = sequence_hidden(model, ids, mask, comp, cmask)
        lp, _ = kernels.chunked_token_logprobs(hidden, head, comp, 0.9, 3, softcap=softcap)
    assert_close(lp, full, what=f"{which}: chunked vs model log-probs", scope="model")
    if which == "gemma2":  # the cap matters on this model: without it the values differ
        with torch.no_grad():
            plain, _ = kernels.chunked_token_logprobs(hidden, head, comp, 0.9, 3)
        assert not np.allclose(plain, full, **tolerance("float32", "model").kwargs())


def test_logprob_head_refuses_unknown_architectures(assets: dict[str, str]) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    assert "model_type 'gpt2'" in str(logprob_head(model))


# ---------------------------------------------------------------- the stepper
def _samples(spec: RunSpec, plugins: Any) -> tuple[Samples, np.ndarray]:
    stepper = TorchStepper(spec, None, plugins)
    prompts = [stepper.tokenizer(p)["input_ids"] for p in PROMPTS]
    samples = stepper.sample(1, 0, prompts, 0.25)
    assert stepper.decode_path == "fused"
    return samples, np.array([0.9, 0.2, 0.6, 0.4])


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_keeps_the_fused_decode(
    assets: dict[str, str], tmp_path: Path, plugins: Any, lora: bool
) -> None:
    """Checkpointing adds no hook that sends sampling to the HF path, and samples the
    tokens of a run without it."""
    policy: dict[str, Any] = {"model": assets["model"]}
    if lora:
        policy["lora"] = {"r": 4}
    plain = make_spec(assets, tmp_path / "a", policy=policy)
    training = {**plain.training.model_dump(), "gradient_checkpointing": True}
    expected, _ = _samples(plain, plugins)
    got, _ = _samples(make_spec(assets, tmp_path / "b", policy=policy, training=training), plugins)
    assert got.y == expected.y and got.y_prime == expected.y_prime


def _grads(spec: RunSpec, plugins: Any, samples: Samples, pref: np.ndarray) -> dict[str, Any]:
    stepper = TorchStepper(spec, None, plugins)
    stepper.accumulate(samples, pref, 0.1)
    named = stepper.policy.named_parameters()
    grads = {n: p.grad.detach().clone() for n, p in named if p.requires_grad}
    assert any(bool(g.abs().max() > 0) for g in grads.values())
    return grads


@pytest.mark.parametrize(
    ("option", "algorithm"),
    [
        ({"gradient_checkpointing": True}, {}),
        ({"logprob_chunk": 2}, {"kl_estimator": "exact"}),
        ({"logprob_chunk": 4}, {"kl_estimator": "sampled"}),
        ({"logprob_chunk": 1}, {"kl_estimator": "k3"}),
        ({"logprob_chunk": 2, "gradient_checkpointing": True}, {"name": "online_ipo"}),
    ],
)
def test_memory_options_give_the_plain_gradients(
    assets: dict[str, str],
    tmp_path: Path,
    plugins: Any,
    option: dict[str, Any],
    algorithm: dict[str, Any],
) -> None:
    algo = {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1, **algorithm}
    if algo["name"] == "online_ipo":
        algo = {"name": "online_ipo", "tau": 0.1}
    plain = make_spec(assets, tmp_path / "a", algorithm=algo)
    samples, pref = _samples(plain, plugins)
    expected = _grads(plain, plugins, samples, pref)
    spec = make_spec(
        assets,
        tmp_path / "b",
        algorithm=algo,
        training={**plain.training.model_dump(), **option},
    )
    got = _grads(spec, plugins, samples, pref)
    for name, g in expected.items():
        assert_close(got[name], g, what=name, scope="model")


def test_lora_policy_chunked_gradients(
    assets: dict[str, str], tmp_path: Path, plugins: Any
) -> None:
    lora = {"model": assets["model"], "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}
    plain = make_spec(assets, tmp_path / "a", policy=lora)
    samples, pref = _samples(plain, plugins)
    expected = _grads(plain, plugins, samples, pref)
    training = {**plain.training.model_dump(), "logprob_chunk": 2, "gradient_checkpointing": True}
    got = _grads(
        make_spec(assets, tmp_path / "b", policy=lora, training=training), plugins, samples, pref
    )
    assert any("lora" in n for n in expected)
    for name, g in expected.items():
        assert_close(got[name], g, what=name, scope="model")


def test_auto_chunk_size() -> None:
    tr = TrainingSpec()
    assert tr.logprob_chunk_size(4, 64, 1024) is None  # small vocabulary: full logits
    assert tr.logprob_chunk_size(4, 64, 49152) == 2**22 // (4 * 49152)  # 21 positions
    assert tr.logprob_chunk_size(1, 8, 256000) is None  # one chunk covers the sequence
    fixed = tr.model_copy(update={"logprob_chunk": 16})
    assert fixed.logprob_chunk_size(4, 64, 100) == 16


# ------------------------------------------------------------------- bf16-mixed
def test_bf16_mixed_keeps_float32_master_weights_and_state(
    assets: dict[str, str], tmp_path: Path, plugins: Any
) -> None:
    spec = make_spec(assets, tmp_path / "a")
    samples, pref = _samples(spec, plugins)
    training = {**spec.training.model_dump(), "precision": "bf16-mixed"}
    stepper = TorchStepper(make_spec(assets, tmp_path / "b", training=training), None, plugins)
    seen: list[torch.dtype] = []  # the MLP's matmuls run in bfloat16
    hook = stepper.policy.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda mod, args, out: seen.append(out.dtype)
    )
    stepper.accumulate(samples, pref, 0.1)
    hook.remove()
    assert seen == [torch.bfloat16]
    assert all(p.grad.dtype == torch.float32 for p in stepper.params)
    stepper.apply()
    assert all(p.dtype == torch.float32 for p in stepper.policy.parameters())
    state = stepper.optimizer.state_dict()["state"]
    assert state and all(
        v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step"
    )


def test_bf16_mixed_step_is_close_to_the_float32_step(
    assets: dict[str, str], tmp_path: Path, plugins: Any
) -> None:
    """One SGD step (update = −lr·g): the bf16-mixed update relative to the largest float32
    update is within the bfloat16 model tolerance, and differs from it (bf16 ran)."""
    sgd = {
        "steps": 1,
        "batch_size": 4,
        "lr": 0.5,
        "optimizer": {"name": "sgd"},
        "max_grad_norm": None,
        "logprob_chunk": "off",
        "generation": {"max_new_tokens": 6},
    }
    updates = []
    for precision in ("pure", "bf16-mixed"):
        spec = make_spec(assets, tmp_path / precision, training={**sgd, "precision": precision})
        trainer = nash_loop(spec, tmp_path / precision, backend="torch", plugins=plugins)
        before = {k: v.detach().clone() for k, v in trainer.stepper.policy.named_parameters()}
        trainer.step(1)
        after = dict(trainer.stepper.policy.named_parameters())
        updates.append({k: after[k].detach() - before[k] for k in before})
    full, mixed = updates
    scale = max(float(u.abs().max()) for u in full.values())
    assert scale > 1e-3
    for name in full:
        assert_close(mixed[name] / scale, full[name] / scale, "bfloat16", name, scope="model")
    assert any(not torch.equal(mixed[k], full[k]) for k in full)


@pytest.mark.slow
def test_bf16_mixed_resume_is_bit_exact(
    assets: dict[str, str], tmp_path: Path, plugins: Any, monkeypatch: Any
) -> None:
    training = {
        "steps": 3,
        "batch_size": 4,
        "grad_accum": 2,
        "lr": 1e-2,
        "precision": "bf16-mixed",
        "logprob_chunk": 2,
        "gradient_checkpointing": True,
        "generation": {"max_new_tokens": 5},
    }
    full = tmp_path / "full"
    train_nash(make_spec(assets, full, training=training), full, plugins=plugins)
    split = tmp_path / "split"
    spec = make_spec(
        assets, split, training=training, output={"dir": str(split), "checkpoint_every": 2}
    )
    original = NashLoop.step

    class Stop(Exception):
        pass

    def interrupted(self: NashLoop, step: int) -> dict[str, Any]:
        if step == 3:
            raise Stop
        return original(self, step)

    monkeypatch.setattr(NashLoop, "step", interrupted)
    with pytest.raises(Stop):
        train_nash(spec, split, plugins=plugins)
    monkeypatch.setattr(NashLoop, "step", original)
    train_nash(spec, split, resume=True, plugins=plugins)
    a = load_file(str(full / "checkpoints/step-3/model.safetensors"))
    b = load_file(str(split / "checkpoints/step-3/model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].dtype == torch.float32 for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


def test_bf16_mixed_needs_float32_policy(assets: dict[str, str], tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"training.precision: bf16-mixed .* float32"):
        make_spec(
            assets,
            tmp_path,
            policy={"model": assets["model"], "dtype": "bfloat16"},
            training={"precision": "bf16-mixed"},
        )


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"precision": "bf16-mixed"}, r"training.precision: under DeepSpeed.*policy.dtype: bf"),
        ({"logprob_chunk": 8}, r"training.logprob_chunk: the chunked .* DeepSpeed"),
    ],
)
def test_deepspeed_refuses_what_its_engine_does_itself(
    assets: dict[str, str], tmp_path: Path, training: dict[str, Any], message: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        make_spec(assets, tmp_path, training=training, distributed={"engine": "deepspeed"})
    make_spec(assets, tmp_path, distributed={"engine": "deepspeed"})  # auto / pure: fine


def test_spec_problems_are_located(assets: dict[str, str], tmp_path: Path) -> None:
    """`nlhf validate` reports the field with its file position (nlhf.spec.load)."""
    from nlhf.spec.load import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(
        f"policy: {{model: {assets['model']}, dtype: bfloat16}}\n"
        "preference: {name: oracle, function: length}\n"
        f"data: {{path: {assets['data']}}}\n"
        "algorithm: {name: nash_md_pg}\n"
        "training:\n  precision: bf16-mixed\n"
    )
    with pytest.raises(NLHFError) as info:
        load_spec(path)
    assert f"{path}:6:" in str(info.value) and "training.precision: bf16-mixed" in str(info.value)


def test_explicit_chunk_on_an_unknown_architecture_is_refused(
    tmp_path: Path, plugins: Any, assets: dict[str, str]
) -> None:
    gpt2 = build_tiny_model(tmp_path / "gpt2", "gpt2", tokenizer_dir=assets["model"])
    spec = make_spec(
        assets, tmp_path / "run", policy={"model": str(gpt2)}, training={"logprob_chunk": 4}
    )
    with pytest.raises(InputError, match=r"training.logprob_chunk: model_type 'gpt2'"):
        TorchStepper(spec, None, plugins)


# ------------------------------------------------------------ the run's static KV cache
@pytest.mark.parametrize("opponent", ["mixture", "policy"])
def test_kv_cache_pool_reuses_storage_across_calls(assets: dict[str, str], opponent: str) -> None:
    """Two generation calls with one KVCachePool decode on the same cache storage (equal
    data_ptr) and draw the tokens of a fresh cache; a longer prompt grows it once."""
    from nlhf_torch import fastdecode
    from nlhf_torch.generation import generate_pairs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(assets["model"])
    reference = AutoModelForCausalLM.from_pretrained(assets["model"])
    tok = AutoTokenizer.from_pretrained(assets["model"])
    seen: list[int] = []
    original = fastdecode.FastGroup.step

    def step(self: Any, tokens: torch.Tensor, n: int) -> None:
        seen.append(self.k_cache[0].data_ptr())
        original(self, tokens, n)

    def generate(prompts: list[str], pool: Any, seed: int) -> Any:
        ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id, "cpu")
        return generate_pairs(
            policy,
            reference,
            ids,
            mask,
            beta=0.25,
            max_new_tokens=5,
            temperature=0.9,
            eos_token_id=None,
            pad_token_id=tok.pad_token_id,
            opponent=opponent,
            return_reference_logits=True,
            generator=torch.Generator().manual_seed(seed),
            cache_pool=pool,
        )

    pool = fastdecode.KVCachePool()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastdecode.FastGroup, "step", step)
        first = generate(PROMPTS, pool, 0)
        storage = {k: [b.data_ptr() for b in v] for k, v in pool._buffers.items()}
        second = generate(PROMPTS[::-1], pool, 1)
    assert first.decode_path == "fused" and storage
    assert {k: [b.data_ptr() for b in v] for k, v in pool._buffers.items()} == storage
    assert len(set(seen)) == len(storage) // 2  # one K storage per group, both calls
    fresh = generate(PROMPTS[::-1], None, 1)
    for got, want in ((second.y, fresh.y), (second.y_prime, fresh.y_prime)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(second.reference_logits.numpy(), fresh.reference_logits.numpy())
    longer = generate([p + " and some more words" for p in PROMPTS], pool, 2)
    assert longer.decode_path == "fused"
    np.testing.assert_array_equal(
        longer.y.numpy(), generate([p + " and some more words" for p in PROMPTS], None, 2).y.numpy()
    )
