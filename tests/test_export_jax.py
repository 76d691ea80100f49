"""``nlhf export`` of jax runs: the jax backend saves transformers safetensors (full
fine-tuning) or a peft adapter (LoRA), so the torch backend merges and exports them; the
exported model's sequence log-probabilities, computed in torch, equal the jax policy's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest

pytest.importorskip("jax")
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from nlhf.export import export_model  # noqa: E402
from nlhf.plugins import build_plugins  # noqa: E402
from nlhf.spec import RunSpec  # noqa: E402
from nlhf.testing.tiny_models import build_tiny_model  # noqa: E402
from nlhf.testing.tolerances import assert_close  # noqa: E402
from nlhf.testing.trainer import LengthOracle  # noqa: E402
from nlhf.training import nash_loop  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


def _logprobs(model: Any, prompts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
    """Σ_t log p(y_t | x, y_<t) of each completion, one unpadded sequence at a time."""
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions, strict=True):
            ids = torch.tensor([p + c])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            out.append(sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(c)))
    return np.array(out)


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 32.0, "target_modules": ["q_proj"]}])
def test_exported_jax_policy_equals_the_run(tmp_path: Path, lora: dict[str, Any] | None) -> None:
    from transformers import AutoModelForCausalLM

    model = build_tiny_model(tmp_path / "policy", "llama", seed=11, std=0.3)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    policy: dict[str, Any] = {"model": str(model), "chat_template": False}
    if lora:
        policy["lora"] = lora
    spec = RunSpec.model_validate(
        {
            "seed": 3,
            "policy": policy,
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": str(data)},
            "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
            "training": {"steps": 2, "batch_size": 4, "lr": 0.05},
            "output": {"dir": str(out)},
        }
    )
    spec.training.generation.max_new_tokens = 4
    loop = nash_loop(spec, out, backend="jax", plugins=build_plugins(extra=[_Plugin()]))
    loop.run()
    saved = out / "checkpoints" / "step-2"
    assert (saved / ("adapter_config.json" if lora else "model.safetensors")).is_file()
    dest = tmp_path / "exported"
    found = export_model(out, dest)
    assert found.backend == "jax" and found.step == 2
    exported = AutoModelForCausalLM.from_pretrained(dest, trust_remote_code=False)
    initial = AutoModelForCausalLM.from_pretrained(model)
    prompts = [loop.tokenizer(p)["input_ids"] for p in PROMPTS]
    completions = [[5, 9, 17], [40, 41], [7], [100, 3, 8, 12]]
    expected = loop.stepper.sequence_logprobs(prompts, completions, model="policy", temperature=1.0)
    actual = _logprobs(exported, prompts, completions)
    assert_close(actual, np.asarray(expected), "float32", "exported log π(y|x)", scope="model")
    moved = np.abs(_logprobs(initial, prompts, completions) - actual).max()
    assert moved > 1e-3, moved  # the run trained the policy
