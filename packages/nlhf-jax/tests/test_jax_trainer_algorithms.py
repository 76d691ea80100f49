"""The jax trainer's gradient accumulation, online IPO and prompt tokenization.

Oracles: ``grad_accum: 2`` is checked against the same run with ``grad_accum: 1`` (the
same rows draw the same uniforms, so the same tokens; with SGD and per-row mean losses
the update is the same); prompt token ids against ``transformers`` itself
(``apply_chat_template``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from nlhf.runio import read_metrics
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close, tolerance

pytestmark = [pytest.mark.jax]

PROMPTS = ["Fruit?", "Pick one:", "A", "Tell me a story about a cat", "B", "Why?"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _spec(ckpt, prompts, out, reward=None, **over):
    pref = ({"name": "bradley_terry_reward", "path": str(reward)} if reward is not None
            else {"name": "oracle", "function": "population"})  # fmt: skip
    doc = {
        "task": "nash", "seed": 5, "policy": {"model": str(ckpt)},
        "preference": pref,
        "data": {"path": str(prompts), "format": "prompt", "shuffle": False},
        "algorithm": {"name": "nash_md_pg", "tau": 0.05, "beta": 0.3},
        "training": {"steps": 2, "batch_size": 4, "lr": 0.05, "optimizer": {"name": "sgd"},
                     "generation": {"max_new_tokens": 4}},
        "output": {"dir": str(out)},
    }  # fmt: skip
    for key, value in over.items():
        section, _, field = key.partition(".")
        if field:
            doc[section][field] = value
        else:
            doc[section] = value
    return RunSpec.model_validate(doc)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("jax_algo_prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def _params(out):
    from safetensors.numpy import load_file

    return load_file(out / "checkpoints/step-2/model.safetensors")


@pytest.mark.slow
def test_grad_accum_takes_the_same_step_as_one_batch(tiny_ckpts, prompts, tmp_path, monkeypatch):
    from nlhf_jax.trainer import JaxStepper, train_nash
    from safetensors.numpy import load_file

    sizes: list[int] = []
    sample = JaxStepper.sample

    def spy(self, step, micro, prompt_ids, beta):
        sizes.append(len(prompt_ids))
        return sample(self, step, micro, prompt_ids, beta)

    monkeypatch.setattr(JaxStepper, "sample", spy)
    ckpt = tiny_ckpts["llama"]
    runs = {}
    for accum, per_call in ((1, None), (2, None), (2, 4)):
        out = tmp_path / f"accum{accum}-{per_call}"
        generation = {"max_new_tokens": 4, "batch_size": per_call}
        over = {"training.grad_accum": accum, "training.generation": generation}
        spec = _spec(ckpt, prompts, out, tiny_ckpts["llama_rm"], **over)
        train_nash(spec, out)
        runs[accum, per_call] = (read_metrics(out), _params(out))
    # 2 steps of one batch; of two micro-batches; of one generation call of the whole batch
    assert sizes == [4, 4, 2, 2, 2, 2, 4, 4]
    (m1, p1), (m2, p2) = runs[1, None], runs[2, None]
    m3, p3 = runs[2, 4]  # generation decoupled from the micro-batches: the same step again
    for a, c in zip(m1, m3, strict=True):
        for key in ("loss", "kl", "preference", "score", "len_y", "len_y_prime"):
            assert_close(c[key], a[key], what=key, scope="model")
    for k in p1:
        assert_close(p3[k], p1[k], what=k, scope="model")
    start = load_file(ckpt / "model.safetensors")
    assert max(np.abs(p1[k] - start[k]).max() for k in p1) > 1e-3  # the step did move θ
    for a, b in zip(m1, m2, strict=True):
        assert a["len_y"] == b["len_y"] and a["len_y_prime"] == b["len_y_prime"]
        assert 0.0 < a["preference"] < 1.0 and a["preference"] != 0.5
        for key in ("loss", "kl", "preference", "score"):
            assert_close(b[key], a[key], what=key, scope="model")
    for k in p1:
        assert_close(p2[k], p1[k], what=k, scope="model")


@pytest.mark.slow
def test_online_ipo_trains(tiny_ckpts, prompts, tmp_path):
    from nlhf_jax.trainer import train_nash

    out = tmp_path / "ipo"
    algo = {"name": "online_ipo", "tau": 0.5, "beta": 0.25}
    spec = _spec(tiny_ckpts["qwen2"], prompts, out, tiny_ckpts["llama_rm"], algorithm=algo)
    summary = train_nash(spec, out)
    records = read_metrics(out)
    assert summary["algorithm"] == "online_ipo" and len(records) == 2
    first = records[0]
    assert {"margin", "preference", "kl", "len_y_prime", "beta"} <= set(first)
    # step 1 starts at π = μ: every log-ratio h (and the margin) is 0, so the loss
    # mean_b (h_b − (P_b − ½)/τ)² is mean_b (P_b − ½)²/τ², between (mean P − ½)²/τ²
    # (Jensen) and 1/(4τ²) = 1 (|P − ½| ≤ ½); both sides from the run
    atol = tolerance("float32").atol
    assert_close(first["margin"], 0.0, what="margin at π = μ", scope="model")
    assert (first["preference"] - 0.5) ** 2 / 0.25 - atol <= first["loss"] <= 1.0 + atol
    assert records[1]["margin"] != 0.0  # the policy moved


def _with_template(src, dst):
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(dst)
    return dst


@pytest.mark.parametrize("template", [None, False])
def test_prompt_ids_match_transformers(tiny_ckpts, prompts, tmp_path, template):
    """Default: a tokenizer with a chat template wraps every prompt in it (no extra
    special tokens); ``chat_template: false`` tokenizes the raw text. jax == transformers
    on a Qwen2 directory (whose tokenizer class adds its own pre-tokenizer); torch == jax:
    tests/test_cross_backend_jax_torch_prompts.py."""
    from nlhf.training import nash_loop
    from transformers import AutoTokenizer

    ckpt = _with_template(tiny_ckpts["qwen2"], tmp_path / "qwen2_chat")
    rm, over = tiny_ckpts["llama_rm"], {"policy.chat_template": template}  # no torch needed
    spec = _spec(ckpt, prompts, tmp_path / "out", rm, **over)
    tok = AutoTokenizer.from_pretrained(ckpt)
    if template is None:
        expected = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}],
                tokenize=True,
                add_generation_prompt=True,
                return_dict=False,
            )
            for p in PROMPTS
        ]
    else:
        expected = [tok(p)["input_ids"] for p in PROMPTS]
    expected = [list(e) for e in expected]
    jax_ids = nash_loop(spec, tmp_path / "j", backend="jax").prompt_ids
    assert jax_ids == expected
    if template is None:
        assert tok.decode(jax_ids[0]).startswith("<|user|>")


def test_chat_template_without_template_is_a_clear_error(tiny_ckpts, prompts, tmp_path):
    from nlhf.errors import InputError
    from nlhf.training import nash_loop

    over = {"policy.chat_template": True}
    spec = _spec(tiny_ckpts["llama"], prompts, tmp_path, tiny_ckpts["llama_rm"], **over)
    with pytest.raises(InputError, match=r"policy\.chat_template: the tokenizer has no chat"):
        nash_loop(spec, tmp_path, backend="jax")


@pytest.mark.slow
def test_lora_run_saves_a_peft_adapter_and_resumes(tiny_ckpts, prompts, tmp_path):
    """policy.lora: only A/B train; μ = the policy with its adapter off (its KL to the policy
    grows after step 1, which it could not if μ were the adapted model); the checkpoint is
    a peft adapter that peft loads onto the base model; resume == uninterrupted."""
    import torch
    from nlhf_jax.trainer import train_nash
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    ckpt = tiny_ckpts["llama"]
    lora_spec = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}

    def spec(out, steps):
        over = {"policy": {"model": str(ckpt), "lora": lora_spec}, "training.steps": steps,
                "training.optimizer": {"name": "adamw"}, "training.lr": 0.02}  # fmt: skip
        return _spec(ckpt, prompts, out, tiny_ckpts["llama_rm"], **over)

    train_nash(spec(tmp_path / "full", 3), tmp_path / "full")
    records = read_metrics(tmp_path / "full")
    assert_close(records[0]["kl"], 0.0, what="KL at B = 0", scope="model")
    assert records[2]["kl"] > 1e-6
    step3 = tmp_path / "full/checkpoints/step-3"
    assert (step3 / "adapter_config.json").is_file() and not (step3 / "model.safetensors").exists()
    adapter = load_file(step3 / "adapter_model.safetensors")
    b_keys = [k for k in adapter if "lora_B" in k]
    assert len(b_keys) == 4 and max(np.abs(adapter[k]).max() for k in b_keys) > 1e-4

    train_nash(spec(tmp_path / "part", 1), tmp_path / "part")
    train_nash(spec(tmp_path / "part", 3), tmp_path / "part", resume=True)
    resumed = load_file(tmp_path / "part/checkpoints/step-3/adapter_model.safetensors")
    for k in adapter:
        np.testing.assert_array_equal(resumed[k], adapter[k], err_msg=k)

    base = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.no_grad():
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, str(step3))(ids).logits
    assert (peft_logits - base_logits).abs().max() > 1e-4  # the adapter changes the model


def test_lora_with_a_reference_model_is_a_clear_error(tiny_ckpts, prompts, tmp_path):
    from nlhf.errors import SpecError
    from nlhf.training import nash_loop

    over = {"policy": {"model": str(tiny_ckpts["llama"]), "lora": {"r": 2}},
            "reference": {"model": str(tiny_ckpts["llama_tied"])}}  # fmt: skip
    spec = _spec(tiny_ckpts["llama"], prompts, tmp_path, **over)
    with pytest.raises(SpecError, match=r"reference\.model: with policy\.lora"):
        nash_loop(spec, tmp_path, backend="jax")


def test_rlhf_pg_without_a_reward_fails_before_loading_models(tiny_ckpts, prompts, tmp_path):
    from nlhf.errors import SpecError
    from nlhf.training import nash_loop

    judge = {"name": "llm_judge", "model": str(tmp_path / "not-loaded")}
    spec = _spec(tiny_ckpts["llama"], prompts, tmp_path, preference=judge,
                 algorithm={"name": "rlhf_pg", "tau": 0.1})  # fmt: skip
    with pytest.raises(
        SpecError, match="rlhf_pg needs a scalar reward r\\(x, y\\), and preference 'llm_judge'"
    ):
        nash_loop(spec, tmp_path, backend="jax")
