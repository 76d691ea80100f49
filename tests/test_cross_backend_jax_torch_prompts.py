"""The torch and jax backends feed the same prompt token ids to a Nash run, with and
without the tokenizer's chat template, on a Qwen2 directory (whose tokenizer class adds its
own pre-tokenizer). (jax against transformers itself: test_jax_trainer_algorithms.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
from nlhf.spec.models import RunSpec

pytest.importorskip("torch")
pytest.importorskip("jax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

PROMPTS = ["Fruit?", "Pick one:", "A", "Tell me a story about a cat", "B", "Why?"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize("template", [None, False])
def test_torch_and_jax_tokenize_prompts_alike(tiny_ckpts, tmp_path, template):
    from nlhf.training import nash_loop
    from transformers import AutoTokenizer

    ckpt = tmp_path / "qwen2_chat"
    shutil.copytree(tiny_ckpts["qwen2"], ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(ckpt)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    spec = RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 5,
            "policy": {"model": str(ckpt), "chat_template": template},
            "preference": {"name": "bradley_terry_reward", "path": str(tiny_ckpts["llama_rm"])},
            "data": {"path": str(data), "format": "prompt", "shuffle": False},
            "algorithm": {"name": "nash_md_pg", "tau": 0.05, "beta": 0.3},
            "training": {"steps": 1, "batch_size": 2, "generation": {"max_new_tokens": 2}},
            "output": {"dir": str(tmp_path / "out")},
        }
    )
    jax_ids = nash_loop(spec, tmp_path / "j", backend="jax").prompt_ids
    torch_ids = nash_loop(spec, tmp_path / "t", backend="torch").prompt_ids
    assert len(jax_ids) == len(PROMPTS) and all(jax_ids)
    assert torch_ids == jax_ids
    if template is None:
        assert tok.decode(jax_ids[0]).startswith("<|user|>")
