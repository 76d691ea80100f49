"""A Bradley–Terry reward trained by ``task: preference_model`` and used as
``preference: {name: bradley_terry_reward}`` reads each ``prompt + response`` as training
read it, on both backends: the saved ``nlhf_preference.json`` (training ``max_length``,
``max_prompt_length``, ``pooling``) decides the rows, the rows equal the training rows of
the same pairs, jax and torch give the same rewards, and a mean-pooled model (torch only)
is refused by jax with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("jax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

from nlhf.errors import InputError  # noqa: E402
from nlhf.preference.format import PreferenceConfig  # noqa: E402
from nlhf.spec.models import RunSpec  # noqa: E402
from nlhf.testing.tolerances import assert_close, tolerance  # noqa: E402

MAX_LENGTH, MAX_PROMPT = 32, 6
"""The training budget saved with the model (the tiny tokenizer adds no special tokens, so
prompt + response get MAX_LENGTH − 4 tokens: nlhf.preference.run.LENGTH_SLACK)."""
ROWS = [  # (prompt, chosen, rejected): every prompt is longer than MAX_PROMPT tokens
    (
        "The quick brown fox jumps over the lazy dog. Human: How do I bake bread?",
        " Mix flour, water, yeast and salt.",
        " I cannot help with that.",
    ),
    (
        "Nash learning from human feedback finds the policy preferred to any other. Why not?",
        " It is unsafe.",
        " rock paper scissors",
    ),
    (
        "Which response is better, 1 or 2? The better response is",
        " 1",
        " 2",
    ),
]
LONG = (  # a response that leaves the prompt less than MAX_PROMPT tokens of room
    " rock paper scissors lizard spock apple banana cherry 0 1 2 3 4 5 6 7 8 9 rock paper scissors lizard"
)


def _copy(src: Path, dst: Path, config: PreferenceConfig) -> Path:
    shutil.copytree(src, dst)
    config.save(dst)
    return dst


@pytest.fixture(scope="module")
def trained(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama classifier saved as ``task: preference_model`` saves a Bradley–Terry
    model trained at max_length 32, max_prompt_length 6 (last-token read-out)."""
    root = tmp_path_factory.mktemp("bt-trained")
    config = PreferenceConfig(
        kind="bradley_terry",
        head="classification",
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_PROMPT,
    )
    return _copy(tiny_ckpts["llama_rm"], root / "bt", config)


def _spec(path: Path, **options: Any) -> Any:
    return RunSpec.model_validate(
        {
            "policy": {"model": "unused"},
            "data": {"path": "unused.jsonl"},
            "algorithm": {"name": "nash_md_pg"},
            "preference": {"name": "bradley_terry_reward", "path": str(path), **options},
        }
    ).preference


def _scorer(backend: str, path: Path, **options: Any) -> Any:
    if backend == "torch":
        from nlhf_torch.preference.scorers import build_scorer
    else:
        from nlhf_jax.preference.scorers import build_scorer
    return build_scorer(_spec(path, **options))


def _scorers(path: Path, **options: Any) -> tuple[Any, Any]:
    return _scorer("torch", path, **options), _scorer("jax", path, **options)


def _by_hand(path: Path, texts: list[str]) -> np.ndarray:
    """r of each text: one unpadded row through transformers' own classifier."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return np.array(
            [float(model(torch.tensor([tok(t).input_ids])).logits[0, 0]) for t in texts]
        )


def _trained_text(tok: Any, prompt: str, response: str) -> str:
    """The training cut, written out: the prompt's last MAX_PROMPT tokens, fewer if the
    response needs the room of the MAX_LENGTH − 4 budget (``truncation: left``)."""
    p = tok.encode(prompt, add_special_tokens=False)
    a = tok.encode(response, add_special_tokens=False)
    budget = MAX_LENGTH - 4
    assert len(a) <= budget
    keep = min(len(p), MAX_PROMPT, budget - len(a))
    return tok.decode(p[len(p) - keep :]) + response


def test_jax_and_torch_read_the_saved_budget(trained: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained)
    prompts = [x for x, _, _ in ROWS] * 2
    ys = [a for _, a, _ in ROWS] + [LONG] * len(ROWS)
    assert len(tok.encode(LONG)) > MAX_LENGTH - 4 - MAX_PROMPT  # the prompt gets less room
    expected = _by_hand(
        trained, [_trained_text(tok, x, y) for x, y in zip(prompts, ys, strict=True)]
    )
    t, j = _scorers(trained)
    r_torch, r_jax = t.reward(prompts, ys), j.reward(prompts, ys)
    assert_close(r_torch, expected, what="torch rewards", scope="model")
    assert_close(r_jax, expected, what="jax rewards", scope="model")
    assert_close(r_jax, r_torch, what="jax vs torch", scope="model")
    # the whole text (what both read before, at the spec's default max_length 1024)
    # scores differently: the budget is what the test sees
    whole = _by_hand(trained, [x + y for x, y in zip(prompts, ys, strict=True)])
    assert np.abs(whole - expected).min() > 100 * tolerance("float32", "model").atol
    p = j.prob(prompts[:3], ys[:3], ys[3:])
    assert_close(p, t.prob(prompts[:3], ys[:3], ys[3:]), what="P", scope="model")


def test_an_explicit_max_length_overrides_the_saved_one(trained: Path) -> None:
    prompts, ys = [x for x, _, _ in ROWS], [a for _, a, _ in ROWS]
    t, j = _scorers(trained, max_length=14)
    assert t.model.config.max_length == j.model.max_length == 14
    assert_close(j.reward(prompts, ys), t.reward(prompts, ys), what="rewards", scope="model")
    rows = j.model.encode(j.texts(prompts, ys))[1].sum(1)[: len(ROWS)]
    assert rows.max() <= 14


def _rows(ids: Any, mask: Any, n: int) -> list[list[int]]:
    """The unpadded token ids of the first ``n`` rows of a padded batch (jax pads the row
    count to a power of two)."""
    ids, mask = np.asarray(ids)[:n], np.asarray(mask)[:n]
    return [row[m == 1].tolist() for row, m in zip(ids, mask, strict=True)]


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_the_scorer_builds_the_rows_training_built(
    trained: Path, tmp_path: Path, backend: str
) -> None:
    """Training's pairs (``prepare_preference_run``: every prompt cut to 6 tokens) through
    the trained model's own tokenization give, token for token, the rows the reward scorer
    builds from the uncut (prompt, response)."""
    from nlhf.preference.run import prepare_preference_run
    from nlhf.preference.scorers import reward_texts

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps(dict(zip(("prompt", "chosen", "rejected"), r, strict=True))) + "\n"
            for r in ROWS
        )
    )
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(trained)},
            "data": {
                "path": str(data),
                "shuffle": False,
                "max_length": MAX_LENGTH,
                "max_prompt_length": MAX_PROMPT,
            },
            "preference_training": {"kind": "bradley_terry", "head": "classification"},
        }
    )
    run = prepare_preference_run(spec)
    assert run.data.report["truncated_prompts"] == len(ROWS)
    pairs = run.data.train
    assert [q.chosen for q in pairs] == [a for _, a, _ in ROWS]
    scorer = _scorer(backend, trained)
    if backend == "torch":
        from nlhf_torch.preference.model import build_preference_model

        def rows(model: Any, texts: list[str]) -> list[list[int]]:
            return _rows(*model._batch(texts)[:2], len(texts))
    else:
        from nlhf_jax.preference.model import build_preference_model

        def rows(model: Any, texts: list[str]) -> list[list[int]]:
            return _rows(*model.encode(texts)[:2], len(texts))

    model = build_preference_model(trained, run.config)  # the model training trains
    prompts = [x for x, _, _ in ROWS]
    for k, column in ((1, "chosen"), (2, "rejected")):
        ys = [r[k] for r in ROWS]
        trained_rows = rows(
            model,
            reward_texts([q.prompt for q in pairs], [(q.chosen, q.rejected)[k - 1] for q in pairs]),
        )
        scored_rows = rows(scorer.model, scorer.texts(prompts, ys))
        assert scored_rows == trained_rows, column
        whole_rows = rows(scorer.model, reward_texts(prompts, ys))  # what it read before
        assert all(len(w) > len(r) for w, r in zip(whole_rows, trained_rows, strict=True)), column


def test_jax_refuses_a_mean_pooled_reward(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    config = PreferenceConfig(
        kind="bradley_terry", head="classification", max_length=32, pooling="mean"
    )
    path = _copy(tiny_ckpts["llama_rm"], tmp_path / "mean", config)
    refused = r"^preference\.path: .* was trained with pooling 'mean', which the jax backend "
    with pytest.raises(InputError, match=refused + r"does not implement.*--backend torch"):
        _scorer("jax", path)
    assert _scorer("torch", path).model.config.pooling == "mean"  # torch reads it
