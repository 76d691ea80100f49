"""``nlhf eval`` of a LoRA run on torch and jax: its checkpoints hold a peft adapter (no
config.json); the evaluation loads the run's base model with the adapter, and the
log-probabilities it records for each sampled response equal those of peft's own
(unmerged) torch model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nlhf
import pytest
import torch
from nlhf.data.tokenizer import tokenize_prompts
from nlhf.evaluation.llm import _resolve
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf.testing.trainer import LengthOracle
from nlhf.training import nash_loop
from nlhf_torch.evaluate import Sampler
from nlhf_torch.tiny import build_tiny_model
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow  # a 2-step LoRA run and its evaluation: ~15 s per backend

PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


def _rows(backend: str, evaluation: RunSpec, entry: Any, ref_path: str) -> list[dict[str, Any]]:
    if backend == "jax":
        pytest.importorskip("nlhf_jax")
        from nlhf_jax.evaluate import JaxSampler

        return JaxSampler(evaluation, ref_path, PROMPTS).sample(entry, seed=11)
    reference = AutoModelForCausalLM.from_pretrained(ref_path).eval()
    return Sampler(evaluation, reference, PROMPTS, torch.device("cpu")).sample(entry, seed=11)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_lora_run_is_evaluated_with_its_adapter(tmp_path: Path, backend: str) -> None:
    model = build_tiny_model(tmp_path / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "lora"
    plugins = build_plugins(extra=[_Plugin()])
    spec = RunSpec.model_validate(
        {
            "seed": 3,
            "policy": {
                "model": str(model),
                "lora": {"r": 4, "alpha": 32.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": str(data)},
            "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.15},
            "training": {
                "steps": 2,
                "batch_size": 4,
                "lr": 0.05,
                "generation": {"max_new_tokens": 4},
            },
            "output": {"dir": str(out)},
        }
    )
    nash_loop(spec, out, backend="torch", plugins=plugins).run()
    checkpoint = out / "checkpoints" / "step-2"
    assert (checkpoint / "adapter_config.json").is_file()
    assert not (checkpoint / "config.json").exists()

    evaluation = RunSpec.model_validate(
        {
            "task": "evaluate",
            "eval": {"policies": [str(out), "reference"], "samples_per_prompt": 2},
            "output": {"dir": str(tmp_path / "eval")},
        }
    )
    evaluation, entries, ref_path = _resolve(evaluation)
    lora = entries[0]
    assert lora.path == checkpoint and lora.base_model == str(model)
    rows = _rows(backend, evaluation, lora, ref_path)
    assert len(rows) == 2 * len(PROMPTS)
    reference = AutoModelForCausalLM.from_pretrained(ref_path).eval()

    # the oracle: peft's adapter on the base, not merged, and a plain log-softmax
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(model)), str(checkpoint)
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    _, ids = tokenize_prompts(PROMPTS, tokenizer, evaluation.data, evaluation.policy.chat_template)
    temperature = evaluation.training.generation.temperature
    moved = 0.0
    for row in rows:
        prompt, tokens = ids[row["prompt_index"]], row["tokens"]
        full = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logits = peft_model(full).logits[0, len(prompt) - 1 : -1] / temperature
            base = reference(full).logits[0, len(prompt) - 1 : -1] / temperature
        picked = torch.tensor(tokens)[:, None]
        logp = torch.log_softmax(logits, -1).gather(1, picked).sum().item()
        logq = torch.log_softmax(base, -1).gather(1, picked).sum().item()
        assert_close(row["logp_policy"], logp, "float32", "logp_policy", scope="model")
        assert_close(row["logp_reference"], logq, "float32", "logp_reference", scope="model")
        moved = max(moved, abs(logp - logq))
    assert moved > 1e-3  # the adapter changed the policy: the check above has teeth
