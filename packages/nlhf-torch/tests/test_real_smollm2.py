"""SmolLM2-135M-Instruct, the packaged real chat model (docs/real-models.md), as a Nash
policy: the ``runs/models/<name>`` directory is built from the installed GGUF by the
``nlhf_prepare_spec`` hook's builder, prompts get its ChatML template, and one short
Nash-MD-PG run (2 steps, 2 prompts, 8 new tokens) with full fine-tuning and with LoRA
leaves a checkpoint that plain transformers (and peft) load with the trained policy's
log-probabilities; a LoRA run resumed from its step-2 checkpoint ends bit-identical to the
uninterrupted one. Slow: about a minute of CPU per run on 2 cores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest
import torch
from nlhf.data.tokenizer import load_tokenizer, tokenize_prompts
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.trainer import train_nash

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"
PROBE_PROMPTS = ["What is the capital of France?", "Give me one tip for sleeping better."]
PROBE_COMPLETIONS = [" The capital of France is Paris.", " Keep a regular bedtime."]


class ProbeOracle:
    """P(y≻y') = σ((len y − len y')/4); its summary hook records log π_θ(y|x) of fixed
    completions under the *trained, in-memory* policy (through the loop's PolicyProbe)."""

    def __call__(self, prompts: list[str], ys: list[str], yps: list[str]) -> list[float]:
        return [1 / (1 + math.exp(-(len(a) - len(b)) / 4)) for a, b in zip(ys, yps, strict=True)]

    def summary(self, probe: Any, prompts: list[str], spec: RunSpec) -> dict[str, Any]:
        _, prompt_ids = tokenize_prompts(PROBE_PROMPTS, probe.tokenizer, spec.data, None)
        completion_ids = [
            probe.tokenizer.encode(c, add_special_tokens=False) for c in PROBE_COMPLETIONS
        ]
        logp = probe.sequence_logprobs(prompt_ids, completion_ids, model="policy", temperature=1.0)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logp": logp.tolist()}


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("probe", lambda **kw: ProbeOracle())


def _spec(model: Path, out: Path, lora: bool) -> RunSpec:
    policy: dict[str, Any] = {"model": str(model)}
    if lora:
        policy["lora"] = {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}
    return RunSpec.model_validate(
        {
            "seed": 0,
            "policy": policy,
            "preference": {"name": "oracle", "function": "probe"},
            "data": {
                "path": str(DATA),
                "format": "hh_rlhf",
                "limit": 2,
                "max_prompt_length": 64,
            },
            "algorithm": {"name": "nash_md_pg", "beta": 0.125, "tau": 0.05},
            "training": {
                "steps": 2,
                "batch_size": 2,
                "lr": 1e-4 if lora else 1e-5,
                "generation": {"max_new_tokens": 8},
            },
            "output": {"dir": str(out), "checkpoint_every": 2, "plots": False},
        }
    )


def test_chat_template_is_applied(smollm2: Path) -> None:
    """The built directory carries SmolLM2's ChatML template, and nlhf's prompt
    tokenization (the one both backends use) wraps prompts in it by default."""
    tok = load_tokenizer(smollm2)
    assert "<|im_start|>" in tok.chat_template
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(smollm2)},
            "data": {"path": str(DATA), "format": "hh_rlhf"},
        }
    )
    _, ids = tokenize_prompts(["Hi"], tok, spec.data, None)
    text = tok.decode(ids[0])
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_nash_md_pg_steps_and_checkpoint_loads_in_transformers(
    smollm2: Path, tmp_path: Path, lora: bool
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    summary = train_nash(_spec(smollm2, out, lora), out, plugins=build_plugins(extra=[_Plugin()]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
        assert 0 < r["preference"] < 1
        assert r["generated_tokens"] > 0
    print("step_seconds", [r["step_seconds"] for r in records], summary.get("decode_path"))

    ckpt = out / "checkpoints" / "step-2"
    assert (ckpt / ("adapter_config.json" if lora else "model.safetensors")).is_file()
    # plain transformers (peft's integration for the adapter), not nlhf's loader
    if lora:
        from nlhf_torch.models import peft_quietly
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
        with peft_quietly():  # peft itself reads a deprecated transformers property
            model = PeftModel.from_pretrained(base, ckpt)
    else:
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.eval()
    probe = summary["oracle"]
    logps = []
    with torch.no_grad():
        for prompt, completion in zip(probe["prompt_ids"], probe["completion_ids"], strict=True):
            ids = torch.tensor([prompt + completion])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
            logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])
            logps.append(float(logp.sum()))
    assert_close(
        torch.tensor(logps), torch.tensor(probe["logp"]), "float32", "log π(y|x)", scope="model"
    )
    # and training moved the policy away from the packaged model
    base_model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([probe["prompt_ids"][0] + probe["completion_ids"][0]])
        assert not torch.equal(base_model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_smollm2_judge_multi_token_answers_chat_template_both_orders(smollm2: Path) -> None:
    """SmolLM2 as an ``llm_judge`` with the default answers " 1" / " 2", which are two
    tokens each for its tokenizer ("Ġ" + digit; refused before): P ∈ (0, 1), antisymmetric
    by construction, and P equal to ½·(σ(v₁₂) + 1 − σ(v₂₁)) with v read by hand from plain
    transformers logits after the ChatML-wrapped judge text and the shared "Ġ"."""
    from nlhf.preference.format import render_judge
    from nlhf.spec.models import DEFAULT_JUDGE_TEMPLATE
    from nlhf_torch.preference.scorers import build_scorer
    from transformers import AutoModelForCausalLM

    spec = RunSpec.model_validate(
        {
            "policy": {"model": str(smollm2)},
            "preference": {"name": "llm_judge", "model": str(smollm2), "batch_size": 4},
            "data": {"path": str(DATA), "format": "hh_rlhf"},
            "algorithm": {"name": "nash_md_pg"},
        }
    )
    judge = build_scorer(spec.preference)
    tok = load_tokenizer(smollm2)
    ids = [tok.encode(a, add_special_tokens=False) for a in (" 1", " 2")]
    assert len(ids[0]) == len(ids[1]) == 2 and ids[0][0] == ids[1][0]
    prompts = PROBE_PROMPTS
    ys = [" Paris.", " Go to bed at the same time every night."]
    yps = [" London is the capital.", " Drink coffee before bed."]
    p = judge.prob(prompts, ys, yps)
    p_swapped = judge.prob(prompts, yps, ys)
    assert ((p > 0) & (p < 1)).all()
    assert_close(p + p_swapped, np.ones(2), "float32", "P(y≻y') + P(y'≻y)", scope="model")
    metrics = judge.pop_metrics()
    assert -0.5 <= metrics["judge_position_bias"] <= 0.5
    print("judge P", p.tolist(), metrics)

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()

    def v(x: str, a: str, b: str) -> float:
        text = tok.apply_chat_template(
            [{"role": "user", "content": render_judge(DEFAULT_JUDGE_TEMPLATE, x, a, b)}],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert text.startswith("<|im_start|>system") and text.endswith("assistant\n")
        row = tok.encode(text, add_special_tokens=False) + ids[0][:1]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row])).logits[0, -1].double()
        return float(logits[ids[0][1]] - logits[ids[1][1]])

    def sigma(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    x, a, b = prompts[0], ys[0], yps[0]
    expected = 0.5 * (sigma(v(x, a, b)) + 1 - sigma(v(x, b, a)))
    assert_close(p[0], expected, "float32", "judge P from plain transformers", scope="model")


def test_lora_resume_on_smollm2_is_bit_exact(smollm2: Path, tmp_path: Path) -> None:
    """3 steps straight, and 2 steps then a resume for the third (checkpoint every step):
    the same metrics (timings aside) and bit-identical adapter weights, on the real
    tokenizer, vocabulary and fused decode."""
    from nlhf.training.loop import TIMING_KEYS
    from safetensors.numpy import load_file

    def run(out: Path, steps: int, resume: bool) -> list[dict[str, Any]]:
        spec = _spec(smollm2, out, lora=True).model_copy(deep=True)
        spec.training.steps = steps
        spec.output.checkpoint_every = 1
        train_nash(spec, out, plugins=build_plugins(extra=[_Plugin()]), resume=resume)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    straight = run(tmp_path / "straight", 3, resume=False)
    run(tmp_path / "split", 2, resume=False)
    resumed = run(tmp_path / "split", 3, resume=True)
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert resumed == straight
    adapter = "checkpoints/step-3/adapter_model.safetensors"
    a, b = load_file(tmp_path / "straight" / adapter), load_file(tmp_path / "split" / adapter)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
