"""The torch preferences of ``task: nash`` and ``task: evaluate``
(:mod:`nlhf_torch.preference.scorers`), each checked against an unbatched hand
computation or an independent closed form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest
import torch
from nlhf.errors import InputError, NLHFError, UnknownNameError
from nlhf.plugins import build_plugins
from nlhf.preference.scorers import BradleyTerryScorer, JudgeScorer
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.model import BradleyTerryModel, PairwiseModel, load_preference_model
from nlhf_torch.preference.scorers import build_scorer
from nlhf_torch.tiny import build_tiny_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

PROMPTS = ["Pick a fruit:", "Which is better?", "Hello"]
YS = [" apple", " a long answer here", " 1"]
YPS = [" banana", " 2", " short"]


def _spec(preference: dict[str, Any]) -> Any:
    """The validated ``preference`` section of a ``task: nash`` spec."""
    return RunSpec.model_validate(
        {
            "policy": {"model": "unused"},
            "preference": preference,
            "data": {"path": "unused.jsonl"},
            "algorithm": {"name": "nash_md_pg"},
        }
    ).preference


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pref")


@pytest.fixture(scope="module")
def reward_model(root: Path) -> Path:
    # its own tokenizer (different corpus and size from any policy's)
    corpus = ["Reward models read text: apple banana long answer short 1 2 Hello"]
    return build_tiny_model(
        root / "rm", "qwen2", head="sequence_classification", corpus=corpus, vocab_size=280
    )


def test_bradley_terry_matches_unbatched_rewards(reward_model: Path) -> None:
    pref = build_scorer(_spec({"name": "bradley_terry_reward", "path": str(reward_model)}))
    assert isinstance(pref, BradleyTerryScorer)
    tok = AutoTokenizer.from_pretrained(reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()

    def r(text: str) -> float:
        with torch.no_grad():
            return float(model(**tok(text, return_tensors="pt")).logits[0, 0])

    expected = [
        1 / (1 + np.exp(-(r(x + y) - r(x + yp)))) for x, y, yp in zip(PROMPTS, YS, YPS, strict=True)
    ]
    got = pref.prob(PROMPTS, YS, YPS)
    assert got.dtype == np.float64  # float64 NumPy, whatever the device
    assert_close(got, expected, "float32", "P", scope="model")
    assert_close(
        pref.reward(PROMPTS, YS),
        [r(x + y) for x, y in zip(PROMPTS, YS, strict=True)],
        "float32",
        "reward",
        scope="model",
    )
    swapped = pref.prob(PROMPTS, YPS, YS)
    assert_close(got + swapped, 1.0, "float64", "P(y≻y') + P(y'≻y)")
    # one implementation: the trained/served Bradley–Terry model's scoring
    assert isinstance(pref.model, BradleyTerryModel)
    served = load_preference_model(reward_model).scores(
        [x + y for x, y in zip(PROMPTS, YS, strict=True)]
    )
    np.testing.assert_array_equal(pref.reward(PROMPTS, YS), served.double().detach().numpy())


def test_bradley_terry_rejects_multi_label(root: Path) -> None:
    path = build_tiny_model(root / "rm3", "llama", head="sequence_classification", num_labels=3)
    with pytest.raises(InputError, match="has 3"):
        build_scorer(_spec({"name": "bradley_terry_reward", "path": str(path)}))


@pytest.fixture(scope="module")
def judge_model(root: Path) -> Path:
    corpus = ["Which response is better, 1 or 2? The better response is 1 or 2"] * 2
    return build_tiny_model(root / "judge", "llama", corpus=corpus, vocab_size=300, seed=4)


def test_llm_judge_both_orders(judge_model: Path) -> None:
    spec = _spec({"name": "llm_judge", "model": str(judge_model)})
    pref = build_scorer(spec)
    assert isinstance(pref, JudgeScorer)
    tok = AutoTokenizer.from_pretrained(judge_model)
    model = AutoModelForCausalLM.from_pretrained(judge_model).eval()
    one = tok.encode(" 1", add_special_tokens=False)[0]
    two = tok.encode(" 2", add_special_tokens=False)[0]
    template = spec.template

    def first(x: str, a: str, b: str) -> float:
        text = template.format(prompt=x, response_1=a, response_2=b)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logits = model(**ids).logits[0, -1].double()
        return float(torch.softmax(logits[[one, two]], -1)[0])

    expected = [
        0.5 * (first(x, y, yp) + 1 - first(x, yp, y))
        for x, y, yp in zip(PROMPTS, YS, YPS, strict=True)
    ]
    got = pref.prob(PROMPTS, YS, YPS)
    assert_close(got, expected, "float32", "P", scope="model")
    assert_close(got + pref.prob(PROMPTS, YPS, YS), 1.0, "float64", "P(y≻y') + P(y'≻y)")
    assert_close(pref.prob(PROMPTS[:1], YS[:1], YS[:1]).item(), 0.5, "float64", "P(y≻y)")
    assert isinstance(pref.model, PairwiseModel)  # one implementation of the judge's v


def test_llm_judge_multi_token_answer(judge_model: Path) -> None:
    """Answers of several tokens: v is read at their first differing token, after the
    judge text and their shared prefix (computed here from plain transformers logits);
    answers of which one is a prefix of the other are refused."""
    answers = (" 1 zzqxj", " 1 2")
    spec = _spec({"name": "llm_judge", "model": str(judge_model), "answer_tokens": answers})
    pref = build_scorer(spec)
    tok = AutoTokenizer.from_pretrained(judge_model)
    a, b = (tok.encode(t, add_special_tokens=False) for t in answers)
    k = next(i for i, (u, w) in enumerate(zip(a, b, strict=False)) if u != w)
    assert len(a) > 1 and len(b) > 1 and k >= 1  # a shared prefix, then a difference
    model = AutoModelForCausalLM.from_pretrained(judge_model).eval()

    def first(x: str, r1: str, r2: str) -> float:
        text = spec.template.format(prompt=x, response_1=r1, response_2=r2)
        ids = tok.encode(text, add_special_tokens=False) + a[:k]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        return float(torch.softmax(logits[[a[k], b[k]]], -1)[0])

    expected = [
        0.5 * (first(x, y, yp) + 1 - first(x, yp, y))
        for x, y, yp in zip(PROMPTS, YS, YPS, strict=True)
    ]
    assert_close(pref.prob(PROMPTS, YS, YPS), expected, "float32", "P", scope="model")
    prefix = _spec(
        {"name": "llm_judge", "model": str(judge_model), "answer_tokens": [" 1", " 1 2"]}
    )
    with pytest.raises(InputError, match=r"preference\.answer_tokens: .* one is a prefix"):
        build_scorer(prefix)


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("half", lambda scale=1.0: lambda x, y, yp: [0.5 * scale] * len(y))
        register("bad", lambda: lambda x, y, yp: [2.0] * len(y))


def test_oracle_from_plugin() -> None:
    plugins = build_plugins(extra=[_Plugin()])
    spec = _spec({"name": "oracle", "function": "half", "options": {"scale": 0.5}})
    pref = build_scorer(spec, plugins=plugins)
    assert pref.prob(PROMPTS, YS, YPS).tolist() == [0.25] * 3
    with pytest.raises(InputError, match="no `reward`"):
        pref.reward(PROMPTS, YS)
    with pytest.raises(NLHFError, match=r"outside \[0, 1\]"):
        build_scorer(_spec({"name": "oracle", "function": "bad"}), plugins=plugins).prob(
            PROMPTS, YS, YPS
        )
    with pytest.raises(UnknownNameError, match="did you mean 'half'"):
        build_scorer(_spec({"name": "oracle", "function": "hlaf"}), plugins=plugins)
    with pytest.raises(InputError, match=r"preference\.options"):
        build_scorer(
            _spec({"name": "oracle", "function": "half", "options": {"nope": 1}}), plugins=plugins
        )


def test_tabular_preference_is_rejected() -> None:
    spec = RunSpec.model_validate(
        {"preference": {"name": "tabular", "game": "rps"}, "algorithm": {"name": "nash_md"}}
    )
    with pytest.raises(InputError, match="numpy backend"):
        build_scorer(spec.preference)
