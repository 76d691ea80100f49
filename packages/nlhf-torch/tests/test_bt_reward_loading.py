"""``preference: {name: bradley_terry_reward}`` reads a trained reward model as it was
trained (its ``nlhf_preference.json``: mean pooling, training ``max_length``, the prompt
cut as training cut it), and never past the model's position limit: an encoder with 24
positions scores a longer text by its last 24 tokens instead of failing in the embedding
(a BERT's 512 positions against a long hh-rlhf prompt did). Both backends, and the rows
against training's: tests/test_cross_backend_bt_reward_as_trained.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig
from nlhf.spec.models import BradleyTerryPreference
from nlhf.testing.tiny_models import build_tokenizer
from nlhf.testing.tolerances import assert_close, tolerance
from nlhf_torch.preference.scorers import load_bradley_terry
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

POSITIONS = 24
LONG = "the quick brown fox jumps over the lazy dog " * 12


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-label BERT classifier with 24 positions, saved as ``task:
    preference_model`` saves a mean-pooled Bradley–Terry model trained at 64 tokens."""
    root = tmp_path_factory.mktemp("bt")
    tok_dir = build_tokenizer(root / "tok", corpus=[LONG] * 20, vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=POSITIONS,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = root / "model"
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    PreferenceConfig(
        kind="bradley_terry", head="classification", max_length=64, pooling="mean"
    ).save(path)
    return path


def _by_hand(path: Path, text: str, limit: int) -> float:
    """r = w·mean_t(h_t) + b over the text's last ``limit`` tokens, read with transformers
    directly."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path).eval()
    ids = tokenizer(text).input_ids[-limit:]
    with torch.no_grad():
        hidden = model.bert(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return float(model.classifier(hidden.mean(0))[0])


def test_trained_pooling_and_length_come_from_the_saved_config(encoder: Path) -> None:
    scorer = load_bradley_terry(BradleyTerryPreference(path=str(encoder)))
    model = scorer.model
    assert model.config.pooling == "mean"
    assert model.config.max_length == POSITIONS  # 64 from training, capped at 24 positions
    short = "a dog"
    assert_close(float(model.scores([short])[0]), _by_hand(encoder, short, POSITIONS), "float32")


def test_a_text_past_the_position_limit_is_read_by_its_last_tokens(encoder: Path) -> None:
    scorer = load_bradley_terry(BradleyTerryPreference(path=str(encoder), max_length=512))
    model = scorer.model
    assert model.config.max_length == POSITIONS
    assert len(model.tokenizer(LONG).input_ids) > POSITIONS
    got = float(model.scores([LONG])[0])
    assert_close(got, _by_hand(encoder, LONG, POSITIONS), "float32")


def test_a_long_prompt_is_cut_as_training_cut_it(encoder: Path) -> None:
    """The online row is the training row: the prompt's last tokens within the budget
    max_length − special tokens − 4 of slack (``nlhf.preference.run.LENGTH_SLACK``), the
    response whole — not the last 24 tokens of the whole text."""
    scorer = load_bradley_terry(BradleyTerryPreference(path=str(encoder)))
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    response = " over the lazy dog"
    p = tokenizer.encode(LONG, add_special_tokens=False)
    a = tokenizer.encode(response, add_special_tokens=False)
    budget = POSITIONS - len(tokenizer.encode("")) - 4
    cut = tokenizer.decode(p[len(p) - (budget - len(a)) :]) + response
    got = float(scorer.reward([LONG], [response])[0])
    assert_close(got, _by_hand(encoder, cut, POSITIONS), "float32", scope="model")
    old = _by_hand(encoder, LONG + response, POSITIONS)  # the last 24 tokens of it all
    assert abs(got - old) > 10 * tolerance("float32", "model").atol


def test_a_pairwise_model_is_refused_as_a_reward(encoder: Path, tmp_path: Path) -> None:
    other = tmp_path / "pairwise"
    other.mkdir()
    for f in encoder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    PreferenceConfig(kind="pairwise", head="classification").save(other)
    with pytest.raises(InputError, match=r"is a pairwise preference model .*pairwise_model"):
        load_bradley_terry(BradleyTerryPreference(path=str(other)))
