"""Pairwise data loading: formats, the hh-rlhf splitter on real rows, soft
labels, truncation policies, held-out splits and clear errors for bad data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from nlhf.data.pairs import Pair, load_pairs, split_hh_dialogue
from nlhf.errors import InputError
from nlhf.spec.models import DataSpec, RunSpec

ROOT = Path(__file__).resolve().parents[3]
HH = ROOT / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"


def hh_rows() -> list[dict[str, str]]:
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def spec(path: str, **kw) -> DataSpec:
    kw.setdefault("max_length", 10_000)
    kw.setdefault("max_prompt_length", 10_000)
    kw.setdefault("shuffle", False)
    return DataSpec(path=path, **kw)


# ------------------------------------------------------------------------ hh-rlhf
def test_pairs_hh_split_reconstructs_real_dialogues() -> None:
    rows = hh_rows()
    assert len(rows) == 200
    multi_turn = 0
    for row in rows:
        prompt, a, b = split_hh_dialogue(row["chosen"], row["rejected"])
        assert prompt + a == row["chosen"]
        assert prompt + b == row["rejected"]
        assert prompt.endswith("\n\nAssistant:")
        assert prompt.startswith("\n\nHuman:")
        # the prompt is the whole shared context: the last turn is the assistant's answer
        assert "\n\nHuman:" not in a or "\n\nHuman:" not in b or a != b
        multi_turn += prompt.count("\n\nAssistant:") > 1
    assert multi_turn > 20  # the slice has multi-turn dialogues, not only single turns


def test_pairs_hh_split_hand_example() -> None:
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: Fine thanks"
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: Fine, go away"
    assert split_hh_dialogue(c, r) == (
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:",
        " Fine thanks",
        " Fine, go away",
    )
    with pytest.raises(ValueError, match="Assistant"):
        split_hh_dialogue("Human: a", "Human: b")


def test_pairs_hh_load_auto_detects_and_splits(tmp_path: Path) -> None:
    data = load_pairs(spec(str(HH), limit=50))
    assert data.report["format"] == "hh_rlhf"
    assert data.report["rows"] == 50
    assert len(data.train) == 50 and data.eval == []
    rows = hh_rows()[:50]
    for pair, row in zip(data.train, rows, strict=True):  # shuffle off: same order
        assert pair.prompt + pair.chosen == row["chosen"]
        assert pair.prompt + pair.rejected == row["rejected"]
        assert pair.label == 1.0


def test_pairs_eval_fraction_is_seeded_and_disjoint() -> None:
    a = load_pairs(spec(str(HH), eval_fraction=0.2, shuffle=True), seed=3)
    b = load_pairs(spec(str(HH), eval_fraction=0.2, shuffle=True), seed=3)
    c = load_pairs(spec(str(HH), eval_fraction=0.2, shuffle=True), seed=4)
    assert (len(a.train), len(a.eval)) == (160, 40)
    assert a.eval == b.eval and a.train == b.train
    assert a.eval != c.eval
    assert not set(a.eval) & set(a.train)
    assert a.report["eval_pairs"] == 40


# --------------------------------------------------------------- formats, labels
def test_pairs_trl_format_with_column_mapping_and_soft_labels(tmp_path: Path) -> None:
    rows = [
        {"q": "x1", "good": "a", "bad": "b", "p": 0.9},
        {"q": "x2", "good": "c", "bad": "d", "p": 0.25},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cols = {"prompt": "q", "chosen": "good", "rejected": "bad", "label": "p"}
    data = load_pairs(spec(path, columns=cols))
    assert data.report["format"] == "preference"
    assert data.train == [Pair("x1", "a", "b", 0.9), Pair("x2", "c", "d", 0.25)]


def test_pairs_bad_label_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b", "label": 1.5}]
    )
    with pytest.raises(InputError, match=r"row 0.*\[0, 1\]"):
        load_pairs(spec(path))


def test_pairs_missing_columns_name_the_columns_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "x", "answer": "a"}])
    with pytest.raises(InputError) as err:
        load_pairs(spec(path))
    assert "question" in str(err.value) and "answer" in str(err.value)
    assert "data.columns" in str(err.value)
    with pytest.raises(InputError, match=r"lacks column.*'prompt'.*columns found: chosen"):
        path2 = write_jsonl(tmp_path / "e.jsonl", [{"chosen": "a", "rejected": "b"}])
        load_pairs(spec(path2, format="preference"))


def test_pairs_empty_rows_are_an_error_naming_rows(tmp_path: Path) -> None:
    rows = [
        {"prompt": "x", "chosen": "a", "rejected": "b"},
        {"prompt": "x", "chosen": "", "rejected": "b"},
        {"prompt": "x", "chosen": "a", "rejected": None},
    ]
    with pytest.raises(InputError, match=r"2 row\(s\).*rows 1, 2"):
        load_pairs(spec(write_jsonl(tmp_path / "d.jsonl", rows)))


def test_pairs_identical_pairs_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [{"prompt": "x", "chosen": "a", "rejected": "b"}] + [
        {"prompt": "x", "chosen": "same", "rejected": "same"}
    ] * 3
    data = load_pairs(spec(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert data.report["dropped_identical"] == 3
    assert data.train == [Pair("x", "a", "b")]
    only_identical = write_jsonl(tmp_path / "e.jsonl", rows[1:])
    with pytest.raises(InputError, match=r"no usable pairs.*3 identical"):
        load_pairs(spec(only_identical))


def test_pairs_wrong_format_and_conversational_values(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"}])
    with pytest.raises(InputError, match="not a pairwise format"):
        load_pairs(spec(path, format="prompt"))
    conv = [{"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}]
    with pytest.raises(InputError, match=r"chosen.*list.*plain strings"):
        load_pairs(spec(write_jsonl(tmp_path / "c.jsonl", conv)))


def test_pairs_eval_split_on_local_file_and_too_large_fraction(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"}] * 2)
    with pytest.raises(InputError, match="eval_fraction"):
        load_pairs(spec(path, eval_split="test"))
    with pytest.raises(InputError, match="leaves none to train"):
        load_pairs(spec(path, eval_fraction=0.9))


# -------------------------------------------------------------------- truncation
ROW = {"prompt": "P" * 30, "chosen": "a" * 20, "rejected": "b" * 10}


def test_pairs_truncation_left_cuts_the_prompt_start(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [ROW])
    # budget 50 - reserve 5 = 45 characters for prompt + both responses (30 of them)
    data = load_pairs(spec(path, max_length=50, truncation="left"), reserve=5)
    (pair,) = data.train
    assert pair == Pair("P" * 15, "a" * 20, "b" * 10)
    assert data.report["truncated_prompts"] == 1 and data.report["truncated_responses"] == 0
    # max_prompt_length applies on its own too
    (pair,) = load_pairs(spec(path, max_prompt_length=4)).train
    assert pair.prompt == "PPPP"


def test_pairs_truncation_left_falls_back_to_responses(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [ROW])
    data = load_pairs(spec(path, max_length=20, truncation="left"))
    (pair,) = data.train
    assert pair.prompt == ""
    assert len(pair.chosen) + len(pair.rejected) == 20
    assert pair.chosen == "a" * 10 and pair.rejected == "b" * 10  # equal shares
    assert data.report["truncated_responses"] == 1


def test_pairs_truncation_right_keeps_prompt_cuts_responses(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [ROW])
    data = load_pairs(spec(path, max_length=50, max_prompt_length=30, truncation="right"))
    (pair,) = data.train
    assert pair.prompt == "P" * 30
    assert (pair.chosen, pair.rejected) == ("a" * 10, "b" * 10)
    # a reward model reads one response at a time: prompt + longer response must fit
    single = load_pairs(
        spec(path, max_length=45, max_prompt_length=30, truncation="right"), joint=False
    )
    assert single.train == [Pair("P" * 30, "a" * 15, "b" * 10)]


def test_pairs_truncation_drop_and_error(tmp_path: Path) -> None:
    short = {"prompt": "x", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "d.jsonl", [ROW, short])
    data = load_pairs(spec(path, max_length=50, truncation="drop"))
    assert data.train == [Pair("x", "a", "b")]
    assert data.report["dropped_too_long"] == 1
    with pytest.raises(InputError, match=r"row 0.*too long.*data.truncation"):
        load_pairs(spec(path, max_length=50, truncation="error"))
    with pytest.raises(InputError, match="leaves no room"):
        load_pairs(spec(path, max_length=8), reserve=8)


class WordCodec:
    """A whitespace 'tokenizer': one token per word, to check budgets in tokens."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return text.split(" ")

    def decode(self, ids: list[str]) -> str:
        return " ".join(ids)


def test_pairs_truncation_counts_tokens_with_a_tokenizer(tmp_path: Path) -> None:
    row = {"prompt": "w1 w2 w3 w4 w5", "chosen": "c1 c2", "rejected": "r1"}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    data = load_pairs(spec(path, max_length=6), tokenizer=WordCodec())
    assert data.train == [Pair("w3 w4 w5", "c1 c2", "r1")]
    assert data.report["length_unit"] == "tokens"


# --------------------------------------------------------------------------- spec
def test_pairs_preference_training_spec_section() -> None:
    base = {
        "task": "preference_model",
        "policy": {"model": "m"},
        "data": {"path": "d.jsonl"},
    }
    s = RunSpec.model_validate(base)
    assert s.preference_training is None
    s = RunSpec.model_validate({**base, "preference_training": {"kind": "bradley_terry"}})
    assert s.preference_training.head == "classification"
    s = RunSpec.model_validate({**base, "preference_training": {"kind": "pairwise"}})
    assert s.preference_training.head == "lm"
    bad = [
        {"kind": "bradley_terry", "head": "lm"},
        {"kind": "bradley_terry", "compare_baseline": True},
        {"template": "no placeholders"},
        {"answer_tokens": [" 1", " 1"]},
        {"kind": "pairwise", "typo": 1},
    ]
    for section in bad:
        with pytest.raises(ValueError):
            RunSpec.model_validate({**base, "preference_training": section})
    nash = {
        "task": "nash",
        "preference": {"name": "tabular", "game": "rps"},
        "algorithm": {"name": "nash_md"},
        "preference_training": {},
    }
    with pytest.raises(ValueError, match="only to `task: preference_model`"):
        RunSpec.model_validate(nash)
