"""``preference_training.pooling: mean`` on torch: a ``classification`` head reads the
masked mean of the last hidden states h̄ = Σₜ mₜ hₜ / Σₜ mₜ (sentence encoders' pooling).
The oracle is an unbatched transformers forward of each text alone, averaged in NumPy and
multiplied by the score head's weights in NumPy."""

from __future__ import annotations

import json
import random
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from nlhf.errors import InputError
from nlhf.preference.format import CONFIG_NAME, PreferenceConfig
from nlhf.spec.models import PreferenceTrainingSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.model import build_preference_model, load_preference_model, score_head
from nlhf_torch.tiny import build_tiny_model
from pydantic import ValidationError

WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "the", "a", "is", "good", "bad"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(30)]
    return build_tiny_model(tmp_path_factory.mktemp("lm"), "llama", corpus=corpus, vocab_size=200)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 10))) for _ in range(n)]


def mean_pool_oracle(model, batch: list[str]) -> np.ndarray:
    """Each text alone (no padding): mean over its tokens of the last hidden state, then
    the score head's weight (and bias, if any) applied in NumPy."""
    head = model.model.score
    w = head.weight.detach().double().numpy()
    b = 0.0 if head.bias is None else head.bias.detach().double().numpy()
    out = []
    with torch.no_grad():
        for text in batch:
            ids = model.tokenizer(text, add_special_tokens=model.add_special_tokens).input_ids
            hidden = model.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state
            mean = hidden[0].double().numpy().mean(axis=0)
            out.append(float((w @ mean + b)[0]))
    return np.array(out)


def test_mean_pooling_is_the_masked_mean_through_the_score_head(lm_dir: Path) -> None:
    config = PreferenceConfig(
        kind="bradley_terry", head="classification", max_length=64, pooling="mean"
    )
    model = build_preference_model(lm_dir, config).eval()
    batch = texts(6)  # different lengths: the batch is right-padded
    with torch.no_grad():
        got = model.scores(batch).numpy()
    assert_close(got, mean_pool_oracle(model, batch), "float32", "mean-pooled r", scope="model")
    # not the model's own read-out (last non-pad token): the option changes the function
    with torch.no_grad():
        own = (
            build_preference_model(
                lm_dir, PreferenceConfig(kind="bradley_terry", head="classification", max_length=64)
            )
            .eval()
            .scores(batch)
        )
    assert np.abs(own.numpy() - got).max() > 1e-3


def test_mean_pooling_survives_save_and_load(lm_dir: Path, tmp_path: Path) -> None:
    config = PreferenceConfig(
        kind="bradley_terry", head="classification", max_length=64, pooling="mean"
    )
    model = build_preference_model(lm_dir, config).eval()
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / CONFIG_NAME).read_text())["pooling"] == "mean"
    back = load_preference_model(tmp_path / "m").eval()
    assert back.config.pooling == "mean"
    batch = texts(5, seed=1)
    with torch.no_grad():
        np.testing.assert_array_equal(back.scores(batch).numpy(), model.scores(batch).numpy())


def test_a_config_file_without_pooling_reads_as_the_models_own(tmp_path: Path) -> None:
    record = {
        "kind": "bradley_terry",
        "head": "classification",
        "template": "{prompt}",
        "answer_tokens": [" 1", " 2"],
        "max_length": 32,
        "format_version": 1,
    }
    (tmp_path / CONFIG_NAME).write_text(json.dumps(record))
    assert PreferenceConfig.load(tmp_path).pooling == "model"


def test_mean_pooling_needs_a_classification_head() -> None:
    with pytest.raises(ValidationError, match="pooling: `mean` applies to `head: classification`"):
        PreferenceTrainingSpec(kind="pairwise", head="lm", pooling="mean")
    assert PreferenceTrainingSpec(kind="bradley_terry", pooling="mean").pooling == "mean"


def test_a_head_that_pools_by_itself_is_refused() -> None:
    model = types.SimpleNamespace(
        config=types.SimpleNamespace(hidden_size=8),
        classifier=torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)),
    )
    with pytest.raises(InputError, match="pooling: `mean` needs a linear score head"):
        score_head(model)
