"""The backend-agnostic ``task: preference_model`` set-up (:mod:`nlhf.preference.run`) with a
fake character tokenizer and a recording ``fit``: the model config from the spec, the data
budget (joint for pairwise, the longer response for Bradley–Terry), the baseline, the run
outputs; and the ``llm_judge`` answer-token checks of :mod:`nlhf.preference.format`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nlhf.errors import InputError
from nlhf.preference.format import judge_answer_ids
from nlhf.preference.run import run_preference_training
from nlhf.spec.models import LLMJudgePreference, RunSpec
from pydantic import ValidationError

OVERHEAD = {"pairwise": 7, "bradley_terry": 2}
SLACK = 4  # by design a few tokens are kept free beyond the template (LENGTH_SLACK)
MAX_LENGTH = 40


class CharTokenizer:
    """One token per character."""

    def __init__(self, source: str) -> None:
        self.source = source

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def rows() -> list[dict[str, str]]:
    """Pairs of growing length: some fit the joint budget, more fit the single one."""
    return [
        {"prompt": "p" * (2 + i % 5), "chosen": "a" * (3 + 2 * i), "rejected": "b" * (2 + i // 2)}
        for i in range(24)
    ]


def make_spec(tmp_path: Path, **training: Any) -> RunSpec:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    return RunSpec.model_validate({
        "task": "preference_model",
        "policy": {"model": "some/lm", "tokenizer": "some/tok"},
        "data": {"path": str(data), "max_length": MAX_LENGTH, "truncation": "drop",
                 "shuffle": False},
        "preference_training": {"template": "J {prompt}|{response_1}|{response_2}",
                                "answer_tokens": [" A", " B"], **training},
    })  # fmt: skip


def run(spec: RunSpec, out: Path, **kw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def fit(spec, output, config, data, *, resume, label):
        calls.append({"output": output, "config": config, "data": data, "resume": resume,
                      "label": label})  # fmt: skip
        return {"fitted": label, "steps": 3}

    def overhead(tokenizer: CharTokenizer, config: Any) -> int:
        assert tokenizer.source == "some/tok"  # policy.tokenizer wins over policy.model
        return OVERHEAD[config.kind]

    summary = run_preference_training(
        spec, out, fit=fit, load_tokenizer=CharTokenizer, text_overhead=overhead, **kw
    )
    return summary, calls


def expected_pairs(kind: str) -> int:
    budget = MAX_LENGTH - OVERHEAD[kind] - SLACK
    fits = 0
    for r in rows():
        p, a, b = len(r["prompt"]), len(r["chosen"]), len(r["rejected"])
        fits += (p + a + b if kind == "pairwise" else p + max(a, b)) <= budget
    return fits


@pytest.mark.parametrize("kind", ["pairwise", "bradley_terry"])
def test_config_budget_and_outputs(tmp_path: Path, kind: str) -> None:
    head = "lm" if kind == "pairwise" else "classification"
    summary, calls = run(make_spec(tmp_path, kind=kind, head=head), tmp_path / "out",
                         resume=True, backend="fake")  # fmt: skip
    assert len(calls) == 1
    (call,) = calls
    assert call["output"] == tmp_path / "out" and call["resume"] is True
    assert call["label"] == kind
    cfg = call["config"]
    assert (cfg.kind, cfg.head, cfg.max_length) == (kind, head, MAX_LENGTH)
    assert cfg.template == "J {prompt}|{response_1}|{response_2}"
    assert cfg.answer_tokens == (" A", " B")
    n = expected_pairs(kind)
    assert 0 < n < len(rows())
    assert len(call["data"].train) == n
    assert summary["data"]["dropped_too_long"] == len(rows()) - n
    assert list(summary)[:3] == ["task", "backend", "data"]
    assert summary["task"] == "preference_model" and summary["backend"] == "fake"
    assert summary["fitted"] == kind and "baseline" not in summary
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["fitted"] == kind
    assert (tmp_path / "out" / "spec.resolved.yaml").is_file()


def test_baseline_reuses_the_pairwise_data(tmp_path: Path) -> None:
    summary, calls = run(make_spec(tmp_path, compare_baseline=True), tmp_path / "out")
    assert [c["label"] for c in calls] == ["pairwise", "bradley_terry"]
    assert calls[1]["output"] == tmp_path / "out" / "baseline"
    bt = calls[1]["config"]
    assert (bt.kind, bt.head, bt.max_length) == ("bradley_terry", "classification", MAX_LENGTH)
    assert calls[1]["data"] is calls[0]["data"]
    assert len(calls[0]["data"].train) == expected_pairs("pairwise")
    assert summary["baseline"] == {"fitted": "bradley_terry", "steps": 3}
    assert "backend" not in summary


def test_non_writing_rank_leaves_no_files(tmp_path: Path) -> None:
    summary, calls = run(make_spec(tmp_path), tmp_path / "out", write_outputs=False)
    assert len(calls) == 1 and summary["fitted"] == "pairwise"
    assert not (tmp_path / "out").exists()


def test_missing_sections_are_reported_before_any_output(tmp_path: Path) -> None:
    spec = RunSpec.model_construct(task="preference_model", policy=None, data=None)
    with pytest.raises(InputError, match="policy"):
        run(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ judge answers
VOCAB = {
    " yes": [5],
    " no": [6],
    " maybe": [7, 8],
    " si": [5],
    " yes sir": [5, 9],
    " yes no": [5, 6],
}


class VocabTokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(VOCAB[text])


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"answer_tokens": [" yes", " si"]}, r"preference\.answer_tokens: .* one is a prefix"),
        ({"answer_tokens": [" yes", " yes sir"]}, r"preference\.answer_tokens: .* one is a prefix"),
    ],
)
def test_judge_answer_errors(fields: dict[str, Any], match: str) -> None:
    spec = LLMJudgePreference(**{"model": "m", "answer_tokens": (" yes", " no"), **fields})
    with pytest.raises(InputError, match=match):
        judge_answer_ids(spec, VocabTokenizer())


def test_judge_template_without_a_response_is_refused_by_the_spec() -> None:
    with pytest.raises(ValidationError, match=r"template: missing placeholder\(s\) \{response_2\}"):
        LLMJudgePreference(model="m", template="{prompt} {response_1} ?")
    with pytest.raises(ValidationError, match="the two answers must differ"):
        LLMJudgePreference(model="m", answer_tokens=(" 1", " 1"))


def test_judge_answer_ids() -> None:
    """One-token answers: no shared prefix; several tokens: the shared prefix, then the
    first differing tokens."""
    spec = LLMJudgePreference(model="m", answer_tokens=(" no", " yes"))
    assert judge_answer_ids(spec, VocabTokenizer()) == ([], 6, 5)
    spec = LLMJudgePreference(model="m", answer_tokens=(" yes sir", " yes no"))
    assert judge_answer_ids(spec, VocabTokenizer()) == ([5], 9, 6)
    spec = LLMJudgePreference(model="m", answer_tokens=(" maybe", " yes"))
    assert judge_answer_ids(spec, VocabTokenizer()) == ([], 7, 5)
