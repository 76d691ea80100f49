"""The torch Nash trainer: one step against a hand-written oracle, bit-exact resume,
run outputs and clear errors (tiny Llama: hidden 32, 2 layers)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nlhf
import pytest
import torch
from nlhf.algorithms.schedules import lr_multiplier
from nlhf.errors import InputError, NLHFError
from nlhf.plugins import build_plugins
from nlhf.runio import list_checkpoints, read_metrics
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close, tolerance
from nlhf.training import NashLoop, nash_loop
from nlhf_torch.generation import generate_pairs
from nlhf_torch.tiny import build_tiny_model
from nlhf_torch.trainer import left_pad, train_nash
from pydantic import ValidationError
from safetensors.torch import load_file

CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]


class LengthOracle:
    """P(y≻y') = σ((len y − len y')/4) on characters; reward = len(y)/4."""

    def __call__(self, prompts: list[str], ys: list[str], yps: list[str]) -> list[float]:
        return [1 / (1 + math.exp(-(len(a) - len(b)) / 4)) for a, b in zip(ys, yps, strict=True)]

    def reward(self, prompts: list[str], ys: list[str]) -> list[float]:
        return [len(y) / 4 for y in ys]


class NoRewardOracle:
    def __call__(self, prompts: list[str], ys: list[str], yps: list[str]) -> list[float]:
        return [0.5] * len(ys)


class _TestPlugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())
        register("no_reward", lambda **kw: NoRewardOracle())


@pytest.fixture(scope="module")
def plugins() -> Any:
    return build_plugins(extra=[_TestPlugin()])


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("trainer")
    model = build_tiny_model(root / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"model": str(model), "data": str(data), "root": str(root)}


def make_spec(assets: dict[str, str], out: Path, **over: Any) -> RunSpec:
    raw: dict[str, Any] = {
        "seed": 3,
        "policy": {"model": assets["model"]},
        "preference": {"name": "oracle", "function": "length"},
        "data": {"path": assets["data"]},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {
            "steps": 4,
            "batch_size": 4,
            "grad_accum": 2,
            "lr": 1e-2,
            "generation": {"max_new_tokens": 5},
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


TIMING = {"tokens_per_s", "step_seconds", "generation_seconds"}


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


# ------------------------------------------------------------------ one step oracle
@pytest.mark.parametrize("algorithm", ["nash_md_pg", "rlhf_pg"])
def test_one_sgd_step_matches_hand_computation(
    assets: dict[str, str], tmp_path: Path, plugins: Any, algorithm: str
) -> None:
    """Re-derive step 1 by hand: same prompts, same generator draws, the loss written
    from the paper's formula with plain torch ops, one SGD update."""
    temp, tau, beta, lr = 0.7, 0.2, 0.25, 0.5
    algo = {"name": algorithm, "tau": tau}
    if algorithm == "nash_md_pg":
        algo["beta"] = beta
    spec = make_spec(
        assets,
        tmp_path / "run",
        algorithm={**algo, "kl_estimator": "sampled"},
        training={
            "steps": 1,
            "batch_size": 4,  # four samples: the rlhf_pg baseline r − mean r is not all zero
            "lr": lr,
            "optimizer": {"name": "sgd"},
            "max_grad_norm": None,
            "generation": {"max_new_tokens": 4, "temperature": temp},
        },
        data={"path": assets["data"], "shuffle": False},
    )
    trainer = nash_loop(spec, tmp_path / "run", backend="torch", plugins=plugins)
    before = {k: v.detach().clone() for k, v in trainer.stepper.policy.named_parameters()}
    reference = trainer.stepper.reference
    tok = trainer.tokenizer
    record = trainer.step(1)

    # --- independent re-computation
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(assets["model"])
    ids_list = [tok(p)["input_ids"] for p in PROMPTS]  # shuffle off: the prompts in order
    ids, mask = left_pad(ids_list, tok.pad_token_id, torch.device("cpu"))
    gen = torch.Generator().manual_seed(spec.seed)
    pairs = generate_pairs(
        policy,
        reference,
        ids,
        mask,
        beta=beta if algorithm == "nash_md_pg" else 0.0,
        max_new_tokens=4,
        temperature=temp,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        opponent="mixture" if algorithm == "nash_md_pg" else "policy",
        generator=gen,
    )
    y, m = pairs.y, pairs.y_mask.double()
    texts = [
        tok.decode(r[mk.bool()].tolist(), skip_special_tokens=True)
        for r, mk in zip(y, m, strict=True)
    ]
    full = torch.cat([ids, y], 1)
    fmask = torch.cat([mask, pairs.y_mask], 1)
    pos = (fmask.cumsum(-1) - 1).clamp(min=0)
    t = y.shape[1]
    logits = policy(input_ids=full, attention_mask=fmask, position_ids=pos).logits[:, -t - 1 : -1]
    with torch.no_grad():
        ref = reference(input_ids=full, attention_mask=fmask, position_ids=pos).logits
        ref = ref[:, -t - 1 : -1]
    lp_all = torch.log_softmax(logits.double() / temp, -1)
    lq_all = torch.log_softmax(ref.double() / temp, -1)
    lp = lp_all.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    lq = lq_all.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    ratio = ((lp - lq) * m).detach()
    to_go = ratio.flip(-1).cumsum(-1).flip(-1)
    kl_sur = (lp * m * to_go).sum(-1)
    seq_lp = (lp * m).sum(-1)
    if algorithm == "nash_md_pg":
        yp_texts = [
            tok.decode(r[mk.bool()].tolist(), skip_special_tokens=True)
            for r, mk in zip(pairs.y_prime, pairs.y_prime_mask, strict=True)
        ]
        weight = torch.tensor(LengthOracle()(PROMPTS, texts, yp_texts), dtype=torch.float64)
        weight = weight - 0.5
        assert_close(record["preference"], float(weight.mean() + 0.5), what="preference")
    else:
        r = torch.tensor([len(s) / 4 for s in texts], dtype=torch.float64)
        weight = r - r.mean()
        assert_close(record["reward"], float(r.mean()), what="reward")
    loss = (-weight * seq_lp + tau * kl_sur).mean()
    loss.backward()
    # through the whole network (float32 forward, float64 loss here): model scope
    assert_close(record["loss"], float(loss.detach()), what="loss", scope="model")
    assert_close(record["kl"], float(ratio.sum(-1).mean()), what="kl", scope="model")
    for name, p in policy.named_parameters():
        expected = before[name] - lr * (p.grad if p.grad is not None else 0)
        got = dict(trainer.stepper.policy.named_parameters())[name].detach()
        assert_close(got, expected.float(), what=name, scope="model")
    moved = max(
        (v.detach() - before[k]).abs().max() for k, v in trainer.stepper.policy.named_parameters()
    )
    assert moved > 1e-2  # lr = 0.5: the step is far above the tolerance


# ------------------------------------------------------------------- resume
class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "algorithm", ["nash_md_pg", pytest.param("nash_ema_pg", marks=pytest.mark.slow)]
)
def test_resume_is_bit_exact(
    assets: dict[str, str], tmp_path: Path, plugins: Any, algorithm: str, monkeypatch: Any
) -> None:
    algo: dict[str, Any] = {"name": algorithm, "tau": {"kind": "linear", "start": 0.2, "end": 0.05}}
    if algorithm == "nash_md_pg":
        algo["beta"] = {"kind": "cosine", "start": 0.5, "end": 0.1}
    else:
        algo["ema_decay"] = 0.5
    common = dict(
        algorithm=algo,
        training={
            "steps": 4,
            "batch_size": 4,
            "grad_accum": 2,
            "lr": 1e-2,
            "lr_schedule": "cosine",
            "warmup_steps": 1,
            "generation": {"max_new_tokens": 5},
        },
    )
    full = tmp_path / "full"
    train_nash(make_spec(assets, full, output={"dir": str(full)}, **common), full, plugins=plugins)

    split = tmp_path / "split"
    spec = make_spec(assets, split, output={"dir": str(split), "checkpoint_every": 2}, **common)
    original = NashLoop.step

    def interrupted(self: NashLoop, step: int) -> dict[str, Any]:
        if step == 3:
            raise _Interrupt
        return original(self, step)

    monkeypatch.setattr(NashLoop, "step", interrupted)
    with pytest.raises(_Interrupt):
        train_nash(spec, split, plugins=plugins)
    monkeypatch.setattr(NashLoop, "step", original)
    assert [s for s, _ in list_checkpoints(split)] == [2]
    assert len(read_metrics(split)) == 2
    summary = train_nash(spec, split, resume=True, plugins=plugins)
    assert summary["resumed_from"] == 2

    a = load_file(str(full / "checkpoints/step-4/model.safetensors"))
    b = load_file(str(split / "checkpoints/step-4/model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = load_file(str(Path(assets["model"]) / "model.safetensors"))
    assert not all(torch.equal(a[k], initial[k]) for k in a)  # training moved something
    ma, mb = _strip(read_metrics(full)), _strip(read_metrics(split))
    assert [r["step"] for r in mb] == [1, 2, 3, 4]
    assert ma == mb


# --------------------------------------------------------------- run outputs
def test_outputs_metrics_and_checkpoints(
    assets: dict[str, str], tmp_path: Path, plugins: Any
) -> None:
    out = tmp_path / "run"
    spec = make_spec(
        assets,
        out,
        algorithm={"name": "best_response", "tau": 0.1, "kl_estimator": "k3"},
        output={"dir": str(out), "checkpoint_every": 1, "keep_last": 2},
        training={
            "steps": 3,
            "batch_size": 2,
            "lr": 1e-3,
            "lr_schedule": "linear",
            "generation": {"max_new_tokens": 3},
        },
    )
    summary = train_nash(spec, out, plugins=plugins)
    assert (out / "spec.resolved.yaml").exists()
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    assert summary["algorithm"] == "best_response"
    assert summary["decode_path"] == "fused"  # a float32 Llama: the fused decoder
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]  # keep_last = 2
    ckpt = out / "checkpoints/step-3"
    for name in (
        "model.safetensors",
        "config.json",
        "trainer_state.json",
        "torch_state.pt",
        "tokenizer.json",
    ):
        assert (ckpt / name).exists(), name
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    need = {"loss", "score", "kl", "kl_estimator", "preference", "len_y", "len_y_prime"}
    need |= {"tokens_per_s", "step_seconds", "lr", "beta", "tau"}
    assert need <= records[0].keys()
    assert records[0]["kl_estimator"] == "k3"
    assert records[0]["beta"] == 1.0  # best response: y' ~ μ
    # linear schedule, no warmup: lr_s = lr·(1 − s/steps)
    assert_close([r["lr"] for r in records], [1e-3, 1e-3 * 2 / 3, 1e-3 / 3], "float64", "lr")
    assert 1 <= records[0]["len_y"] <= 3


def test_lr_multiplier_warmup_and_cosine() -> None:
    fn = lr_multiplier("cosine", 2, 10)
    assert [fn(0), fn(1)] == [0.5, 1.0]
    assert_close(fn(2), 1.0, "float64", "lr factor at warmup end")
    assert_close(fn(6), 0.5 * (1 + math.cos(math.pi * 0.5)), "float64", "lr factor mid-cosine")
    assert_close(fn(10), 0.0, "float64", "lr factor at the end")


# --------------------------------------------------------------------- errors
def test_missing_model_path(assets: dict[str, str], tmp_path: Path, plugins: Any) -> None:
    spec = make_spec(assets, tmp_path, policy={"model": str(tmp_path / "nope")})
    with pytest.raises(InputError, match=r"policy\.model: model path not found"):
        train_nash(spec, tmp_path / "o", plugins=plugins)


def test_empty_dataset(assets: dict[str, str], tmp_path: Path, plugins: Any) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    spec = make_spec(assets, tmp_path, data={"path": str(empty)})
    with pytest.raises(InputError, match=r"empty\.jsonl is empty \(no rows\)"):
        train_nash(spec, tmp_path / "o", plugins=plugins)


def test_missing_prompt_column(assets: dict[str, str], tmp_path: Path, plugins: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x", "id": 1}) + "\n")
    spec = make_spec(assets, tmp_path, data={"path": str(bad), "format": "prompt"})
    with pytest.raises(InputError, match="columns found: question, id"):
        train_nash(spec, tmp_path / "o", plugins=plugins)


@pytest.mark.parametrize(
    ("algorithm", "field"),
    [
        ({"name": "nash_md_pg", "beta": 1.5}, "beta"),
        ({"name": "nash_md_pg", "tau": -0.1}, "tau"),
        ({"name": "nash_md_pg", "beta": {"kind": "linear", "start": 0.5, "end": -0.2}}, "beta"),
        ({"name": "rlhf_pg", "tau": -1.0}, "tau"),
    ],
)
def test_beta_tau_out_of_range(assets: dict[str, str], algorithm: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} must lie in"):
        make_spec(assets, Path("o"), algorithm=algorithm)


def test_rlhf_needs_reward(assets: dict[str, str], tmp_path: Path, plugins: Any) -> None:
    spec = make_spec(
        assets,
        tmp_path,
        algorithm={"name": "rlhf_pg"},
        preference={"name": "oracle", "function": "no_reward"},
    )
    with pytest.raises(InputError, match="rlhf_pg needs a scalar reward"):
        train_nash(spec, tmp_path / "o", plugins=plugins)


def test_resume_without_checkpoint(assets: dict[str, str], tmp_path: Path, plugins: Any) -> None:
    spec = make_spec(assets, tmp_path)
    with pytest.raises(NLHFError, match="no checkpoint"):
        train_nash(spec, tmp_path / "empty-run", resume=True, plugins=plugins)


def test_unknown_oracle(assets: dict[str, str], tmp_path: Path, plugins: Any) -> None:
    spec = make_spec(assets, tmp_path, preference={"name": "oracle", "function": "lenght"})
    with pytest.raises(NLHFError, match="did you mean 'length'"):
        train_nash(spec, tmp_path / "o", plugins=plugins)


def test_float16_adamw_on_cpu_is_refused_before_a_step(
    assets: dict[str, str], tmp_path: Path, plugins: Any
) -> None:
    """float16 AdamW turns zero-gradient weights into NaN at step 1 (ε rounds to 0 in
    float16): refused with the reason, nothing written."""
    spec = make_spec(
        assets,
        tmp_path,
        policy={"model": assets["model"], "dtype": "float16"},
        training={"steps": 1, "batch_size": 2, "optimizer": {"name": "adamw"}},
    )
    with pytest.raises(InputError, match="float16 training with adamw on cpu"):
        train_nash(spec, tmp_path / "o", plugins=plugins)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_lora_policy_reference_is_adapter_disabled(
    assets: dict[str, str], tmp_path: Path, plugins: Any, monkeypatch: Any
) -> None:
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "alpha": 8.0}
    common = dict(
        policy={"model": assets["model"], "lora": lora},
        training={"steps": 2, "batch_size": 2, "lr": 5e-2, "generation": {"max_new_tokens": 3}},
    )
    full = tmp_path / "full"
    summary = train_nash(
        make_spec(assets, full, output={"dir": str(full)}, **common), full, plugins=plugins
    )
    assert summary["decode_path"] == "fused"  # LoRA policy and adapter-off μ, fused
    ckpt = full / "checkpoints" / "step-2"
    assert (ckpt / "adapter_model.safetensors").exists()

    trainer = nash_loop(
        make_spec(assets, full, output={"dir": str(full)}, **common),
        full,
        backend="torch",
        resume=True,
        plugins=plugins,
    )
    base = AutoModelForCausalLM.from_pretrained(assets["model"]).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = trainer.stepper.reference(input_ids=ids).logits
        pol = trainer.stepper.policy.eval()(input_ids=ids).logits
        expected = base(input_ids=ids).logits
    assert torch.equal(ref, expected)  # adapter off = the base model, bit for bit
    # the trained adapter is on: π differs from μ by more than any float32 noise
    assert not torch.allclose(pol, expected, **tolerance("float32", "model").kwargs())

    # K + resume + K == 2K with a LoRA policy too
    split = tmp_path / "split"
    spec = make_spec(assets, split, output={"dir": str(split), "checkpoint_every": 1}, **common)
    original = NashLoop.step

    def interrupted(self: NashLoop, step: int) -> dict[str, Any]:
        if step == 2:
            raise _Interrupt
        return original(self, step)

    monkeypatch.setattr(NashLoop, "step", interrupted)
    with pytest.raises(_Interrupt):
        train_nash(spec, split, plugins=plugins)
    monkeypatch.setattr(NashLoop, "step", original)
    train_nash(spec, split, resume=True, plugins=plugins)
    a = load_file(str(ckpt / "adapter_model.safetensors"))
    b = load_file(str(split / "checkpoints/step-2/adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_generation_call_then_micro_batches_takes_the_grad_accum_1_step(
    assets: dict[str, str], tmp_path: Path, plugins: Any, monkeypatch: Any
) -> None:
    """training.generation.batch_size = batch_size: one generate_pairs call of 4 prompts
    per step, the loss in 2 micro-batches; the same draws, losses and SGD step as
    grad_accum 1 (the generator stream no longer depends on the micro-batch split)."""
    from nlhf_torch import trainer as torch_trainer

    calls: list[int] = []
    original = torch_trainer.generate_pairs

    def spy(policy: Any, reference: Any, input_ids: torch.Tensor, *a: Any, **k: Any) -> Any:
        calls.append(input_ids.shape[0])
        return original(policy, reference, input_ids, *a, **k)

    monkeypatch.setattr(torch_trainer, "generate_pairs", spy)
    training = {
        "steps": 2,
        "batch_size": 4,
        "lr": 0.05,
        "optimizer": {"name": "sgd"},
        "max_grad_norm": None,
        "generation": {"max_new_tokens": 4},
    }
    runs = {}
    for accum, per_call in ((1, None), (2, 4)):
        out = tmp_path / f"accum{accum}"
        tr = {**training, "grad_accum": accum}
        tr["generation"] = {**training["generation"], "batch_size": per_call}
        spec = make_spec(assets, out, training=tr, output={"dir": str(out)})
        train_nash(spec, out, plugins=plugins)
        runs[accum] = (read_metrics(out), load_file(out / "checkpoints/step-2/model.safetensors"))
    assert calls == [4, 4, 4, 4]  # one call of the whole batch per step, both runs
    (m1, w1), (m2, w2) = runs[1], runs[2]
    for a, b in zip(m1, m2, strict=True):
        assert (a["len_y"], a["len_y_prime"]) == (b["len_y"], b["len_y_prime"])
        for key in ("loss", "kl", "preference", "score", "grad_norm"):
            assert_close(b[key], a[key], "float32", key, scope="model")
    for name, value in w1.items():
        assert_close(w2[name], value, "float32", name, scope="model")
