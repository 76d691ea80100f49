"""What a Bradley–Terry reward reads online: ``PairBudget.reward_text`` is the training
cut of ``load_pairs`` applied to one response (character units, hand-computed
expectations), ``PreferenceConfig.for_reward`` gives a trained model a prompt budget and a
bare classifier none, and ``reward_texts_as_trained`` refuses a budget with no room."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nlhf.data.pairs import PairBudget, load_pairs
from nlhf.data.tokenizer import reward_texts_as_trained
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig
from nlhf.spec.models import BradleyTerryPreference, DataSpec


def _budget() -> PairBudget:
    return PairBudget(10, 4, joint=False)  # characters: 10 in all, 4 of prompt


def test_a_text_that_fits_is_read_whole() -> None:
    assert _budget().reward_text("abc", "xyz") == "abcxyz"


def test_the_prompt_keeps_its_last_max_prompt_length_units() -> None:
    assert _budget().reward_text("abcdefgh", "xyz") == "efgh" + "xyz"


def test_a_long_response_takes_the_prompt_room_then_is_cut_from_the_right() -> None:
    assert _budget().reward_text("abcdefgh", "0123456") == "fgh" + "0123456"  # 10 − 7 = 3
    assert _budget().reward_text("abcdefgh", "0123456789ab") == "0123456789"


def test_an_empty_response_keeps_the_cut_prompt() -> None:
    assert _budget().reward_text("abcdefgh", "") == "efgh"


def test_reward_text_is_the_training_cut_of_a_pair(tmp_path: Path) -> None:
    """``load_pairs`` (what ``task: preference_model`` trains on) cuts a pair's prompt and
    chosen response as ``reward_text`` cuts them, except where the (one unit longer)
    rejected response needed the prompt's room."""
    cases = [("abcdefgh", "xyz"), ("abcdefgh", "0123456"), ("abcdefgh", "0123456789ab")]
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": x, "chosen": y, "rejected": y + "!"} for x, y in cases]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DataSpec(path=str(path), shuffle=False, max_length=11, max_prompt_length=4)
    pairs = load_pairs(spec, joint=False, reserve=1).train  # 10 units after the reserve
    got = [PairBudget(10, 4, joint=False).reward_text(x, y) for x, y in cases]
    assert got == ["efghxyz", "fgh0123456", "0123456789"]
    assert [p.prompt + p.chosen for p in pairs] == ["efghxyz", "gh0123456", "0123456789"]
    # the middle pair's prompt was cut one unit more, for its longer rejected response: a
    # reward reads each response alone


def _saved(tmp_path: Path, **fields: object) -> str:
    PreferenceConfig(kind="bradley_terry", head="classification", **fields).save(tmp_path)
    return str(tmp_path)


def test_for_reward_gives_a_trained_model_its_prompt_budget(tmp_path: Path) -> None:
    path = _saved(tmp_path, max_length=64, max_prompt_length=16)
    config = PreferenceConfig.for_reward(BradleyTerryPreference(path=path))
    assert (config.max_length, config.max_prompt_length) == (64, 16)
    config = PreferenceConfig.for_reward(BradleyTerryPreference(path=path, max_length=32))
    assert (config.max_length, config.max_prompt_length) == (32, 16)


def test_for_reward_of_an_older_save_and_of_a_bare_classifier(tmp_path: Path) -> None:
    older = _saved(tmp_path, max_length=64)  # no max_prompt_length recorded
    config = PreferenceConfig.for_reward(BradleyTerryPreference(path=older))
    assert config.max_prompt_length == 64  # as nlhf preference-eval reads it
    bare = PreferenceConfig.for_reward(BradleyTerryPreference(path=str(tmp_path / "none")))
    assert bare.max_prompt_length is None and bare.max_length == 1024


class _Chars:
    """A character tokenizer with one special token (a BOS) added to every text."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
        return (["<s>"] if add_special_tokens else []) + list(text)

    def decode(self, ids: list[str]) -> str:
        return "".join(ids)


def test_reward_texts_as_trained_budget_counts_the_specials_and_the_slack() -> None:
    config = PreferenceConfig(kind="bradley_terry", max_length=15, max_prompt_length=4)
    texts = reward_texts_as_trained(_Chars(), config)  # 15 − 1 special − 4 slack = 10
    assert texts(["abcdefgh", "ab"], ["0123456", "c"]) == ["fgh0123456", "abc"]
    bare = reward_texts_as_trained(_Chars(), PreferenceConfig(kind="bradley_terry"))
    assert bare(["abcdefgh"], ["0123456"]) == ["abcdefgh0123456"]
    with pytest.raises(InputError, match=r"^preference\.max_length: 5 tokens leave no room"):
        reward_texts_as_trained(
            _Chars(), PreferenceConfig(kind="bradley_terry", max_length=5, max_prompt_length=4)
        )
