"""How a trained preference model's comparisons are cut online, in characters with
hand-computed expectations: ``PairBudget.cut`` is ``load_pairs``' cut of a pair, never
dropped; ``scoring_budget`` rebuilds the training budget from ``nlhf_preference.json``
(the tokens the model adds + 4 of slack, joint for pairwise models, the training
``truncation``); ``pairs_as_trained`` / ``reward_texts_as_trained`` apply it; and
``task: preference_model`` records ``data.truncation`` in the saved config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nlhf.data.pairs import PairBudget, load_pairs
from nlhf.data.tokenizer import pairs_as_trained, reward_texts_as_trained, scoring_budget
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig
from nlhf.preference.run import prepare_preference_run
from nlhf.spec.models import DataSpec, RunSpec

TEMPLATE = "{prompt}|{response_1}|{response_2}"
"""A judge template adding two characters ("||") around the texts."""


class _Chars:
    """A character tokenizer with one special token (a BOS) added to every text."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
        return (["<s>"] if add_special_tokens else []) + list(text)

    def decode(self, ids: list[str]) -> str:
        return "".join(ids)


def _pairwise(**fields: object) -> PreferenceConfig:
    return PreferenceConfig(kind="pairwise", head="classification", template=TEMPLATE, **fields)


# ------------------------------------------------------------------ PairBudget.cut
def test_cut_of_a_pair_that_fits_is_the_pair() -> None:
    assert PairBudget(12, 4).cut("abc", "xy", "z") == ("abc", "xy", "z")


def test_cut_shares_the_room_jointly_under_left() -> None:
    budget = PairBudget(12, 4)  # joint: prompt + both responses ≤ 12, prompt ≤ 4
    assert budget.cut("abcdefgh", "0123", "xyz") == ("efgh", "0123", "xyz")  # 4 + 7 ≤ 12
    assert budget.cut("abcdefgh", "012345", "xyz") == ("fgh", "012345", "xyz")  # 12 − 9 = 3
    # responses alone over the room: the prompt goes, the room of 12 is shared 6 / 6
    assert budget.cut("abcdefgh", "0123456789", "uvwxyz!") == ("", "012345", "uvwxyz")


def test_cut_under_right_keeps_the_prompt_and_cuts_the_responses() -> None:
    budget = PairBudget(12, 4, policy="right")
    # the prompt keeps its last 4 (room for a unit per response), the 8 left are shared
    assert budget.cut("abcdefgh", "0123456789", "xyz") == ("efgh", "01234", "xyz")
    assert budget.cut("abcdefgh", "0123456789", "uvwxyz!") == ("efgh", "0123", "uvwx")


def test_cut_of_one_response_each_under_a_reward_budget() -> None:
    budget = PairBudget(10, 4, joint=False)  # prompt + the longer response ≤ 10
    assert budget.cut("abcdefgh", "0123456", "xy") == ("fgh", "0123456", "xy")


def test_cut_never_drops_where_fit_does() -> None:
    budget = PairBudget(12, 4)
    assert budget.cut("abcdefgh", "", "0123456789abcdef") == ("", "", "0123456789ab")


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("truncation", ["left", "right"])
def test_cut_is_the_cut_load_pairs_trains_on(tmp_path: Path, truncation: str, joint: bool) -> None:
    """Every kept training pair is ``cut`` of its uncut (prompt, chosen, rejected)."""
    rows = [
        ("abcdefgh", "0123", "xyz"),
        ("abcdefgh", "012345", "xyz"),
        ("abcdefgh", "0123456789", "uvwxyz!"),
        ("ab", "0123456789", "u"),
        ("abcdefghijkl", "0", "uv"),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": x, "chosen": a, "rejected": b}) + "\n" for x, a, b in rows)
    )
    spec = DataSpec(
        path=str(path), shuffle=False, max_length=13, max_prompt_length=4, truncation=truncation
    )
    pairs = load_pairs(spec, reserve=1, joint=joint).train  # 12 units after the reserve
    assert len(pairs) == len(rows)
    budget = PairBudget(12, 4, policy=truncation, joint=joint)
    assert [budget.cut(*r) for r in rows] == [(q.prompt, q.chosen, q.rejected) for q in pairs]


# ------------------------------------------------------------------ the saved budget
def test_scoring_budget_of_a_pairwise_model_counts_its_template() -> None:
    budget = scoring_budget(_Chars(), _pairwise(max_length=19, max_prompt_length=4))
    assert budget is not None  # 19 − (1 BOS + 2 template characters) − 4 slack = 12
    assert (budget.max_length, budget.max_prompt, budget.joint, budget.policy) == (
        12,
        4,
        True,
        "left",
    )


def test_scoring_budget_follows_the_saved_truncation() -> None:
    def policy(truncation: str) -> str:
        config = _pairwise(max_length=19, max_prompt_length=4, truncation=truncation)
        budget = scoring_budget(_Chars(), config)
        assert budget is not None
        return budget.policy

    # drop / error trained on no over-long pair; a comparison online cannot be dropped
    assert [policy(t) for t in ("left", "right", "drop", "error")] == [
        "left",
        "right",
        "left",
        "left",
    ]


def test_no_budget_without_a_recorded_training_budget() -> None:
    assert scoring_budget(_Chars(), PreferenceConfig(kind="pairwise")) is None
    pairs = pairs_as_trained(_Chars(), PreferenceConfig(kind="pairwise"))
    assert pairs(["abcdefgh" * 200], ["0"], ["1"]) == (["abcdefgh" * 200], ["0"], ["1"])


def test_pairs_as_trained_cuts_each_comparison() -> None:
    pairs = pairs_as_trained(_Chars(), _pairwise(max_length=19, max_prompt_length=4))
    got = pairs(["abcdefgh", "ab"], ["012345", "0"], ["xyz", "1"])
    assert got == (["fgh", "ab"], ["012345", "0"], ["xyz", "1"])
    right = pairs_as_trained(
        _Chars(), _pairwise(max_length=19, max_prompt_length=4, truncation="right")
    )
    assert right(["abcdefgh"], ["0123456789"], ["xyz"]) == (["efgh"], ["01234"], ["xyz"])


def test_reward_texts_follow_the_saved_truncation() -> None:
    def bt(truncation: str) -> PreferenceConfig:
        return PreferenceConfig(
            kind="bradley_terry", max_length=15, max_prompt_length=4, truncation=truncation
        )  # 15 − 1 special − 4 slack = 10 characters

    assert reward_texts_as_trained(_Chars(), bt("left"))(["abcdefgh"], ["0123456"]) == [
        "fgh0123456"  # the response whole, the prompt what is left
    ]
    assert reward_texts_as_trained(_Chars(), bt("right"))(["abcdefgh"], ["0123456"]) == [
        "efgh012345"  # the prompt's last 4, the response cut from the right
    ]


def test_a_budget_with_no_room_is_refused() -> None:
    with pytest.raises(InputError, match=r"^preference\.max_length: 7 tokens leave no room"):
        scoring_budget(_Chars(), _pairwise(max_length=7, max_prompt_length=4))


# ------------------------------------------------------------------ training records it
@pytest.mark.parametrize("truncation", ["left", "right", "drop"])
def test_training_records_its_truncation(tmp_path: Path, truncation: str) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "ab", "chosen": "0", "rejected": "1"}) + "\n")
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": "some/lm"},
            "data": {"path": str(data), "max_length": 19, "truncation": truncation},
            "preference_training": {"head": "classification", "template": TEMPLATE},
        }
    )
    config = prepare_preference_run(spec, load_tokenizer=lambda _: _Chars()).config
    assert config.truncation == truncation
    config.save(tmp_path)
    saved = json.loads((tmp_path / "nlhf_preference.json").read_text())
    assert saved["truncation"] == truncation
    assert PreferenceConfig.load(tmp_path).truncation == truncation
