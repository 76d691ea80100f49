"""The framework-free tokenizer side of preference models (:mod:`nlhf.data.tokenizer`),
shared by the torch and jax preference models: scoring set-up, answer tokens, the tokens
a judge template adds; and the one tokenizer loader. Fake and word-level tokenizers,
hand-counted expectations."""

from __future__ import annotations

from pathlib import Path

import pytest
from nlhf.data.tokenizer import answer_ids, load_tokenizer, prepare_scoring_tokenizer, text_overhead
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig


class CharTokenizer:
    """One token per character (id = ord, so " 12" -> [32, 49, 50]), a BOS id 1 when
    ``add_special_tokens``; pad/EOS and padding/truncation sides as transformers' attributes."""

    def __init__(self, pad: str | None = None, eos: str | None = "</s>") -> None:
        self.pad_token, self.eos_token = pad, eos
        self.padding_side, self.truncation_side = "left", "right"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]


def test_prepare_sets_right_padding_left_truncation_and_eos_pad() -> None:
    tok = CharTokenizer()
    assert prepare_scoring_tokenizer(tok) is tok
    assert (tok.pad_token, tok.padding_side, tok.truncation_side) == ("</s>", "right", "left")
    kept = prepare_scoring_tokenizer(CharTokenizer(pad="<pad>"))
    assert kept.pad_token == "<pad>"
    with pytest.raises(InputError, match="neither a pad nor an EOS"):
        prepare_scoring_tokenizer(CharTokenizer(eos=None))


def test_answer_ids_shared_prefix_and_first_differing_tokens() -> None:
    tok = CharTokenizer()
    assert answer_ids(tok, (" 1", " 2")) == ([ord(" ")], ord("1"), ord("2"))
    assert answer_ids(tok, ("A", "B")) == ([], ord("A"), ord("B"))
    with pytest.raises(InputError, match="one is a prefix of the other"):
        answer_ids(tok, (" 1", " 12"))


def test_text_overhead_counts_specials_template_and_answer_prefix() -> None:
    tok = CharTokenizer()
    template = "Q{prompt}|{response_1}|{response_2}?"
    bt = PreferenceConfig(kind="bradley_terry", head="classification", template=template)
    assert text_overhead(tok, bt) == 1  # BOS only
    cls = PreferenceConfig(kind="pairwise", head="classification", template=template)
    assert text_overhead(tok, cls) == 1 + len("Q||?")
    lm = PreferenceConfig(kind="pairwise", head="lm", template=template)
    assert text_overhead(tok, lm) == 1 + len("Q||?") + 1  # + the shared " " of " 1"/" 2"


def _save_word_tokenizer(directory: Path) -> Path:
    """A word-level transformers tokenizer with an EOS but no pad token, saved with left
    padding and right truncation (the opposite of the scoring set-up)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "[UNK]": 1, "good": 2, "bad": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        unk_token="[UNK]",
        padding_side="left",
        truncation_side="right",
    )
    fast.save_pretrained(directory)
    return directory


def test_load_tokenizer_plain_and_for_scoring(tmp_path: Path) -> None:
    path = _save_word_tokenizer(tmp_path / "tok")
    plain = load_tokenizer(path)
    assert plain.encode("good bad") == [2, 3]
    assert plain.pad_token == "<eos>"  # pad falls back to EOS
    assert (plain.padding_side, plain.truncation_side) == ("left", "right")  # as saved
    scoring = load_tokenizer(str(path), "preference.path", scoring=True)
    assert scoring.pad_token_id == 0
    assert (scoring.padding_side, scoring.truncation_side) == ("right", "left")


def test_load_tokenizer_errors_name_the_field(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="without it load_tokenizer says to install it")
    with pytest.raises(InputError, match=r"preference\.tokenizer: model path not found"):
        load_tokenizer(tmp_path / "missing", "preference.tokenizer", scoring=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"preference\.path: .* has no tokenizer_config\.json"):
        load_tokenizer(tmp_path / "empty", "preference.path")
