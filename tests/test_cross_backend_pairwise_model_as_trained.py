"""A preference model trained by ``task: preference_model`` and used as ``preference:
{name: pairwise_model}`` reads each comparison (x, y, y′) as training read its pairs
(x, chosen, rejected), on both backends, for a pairwise judge (``head: lm``, the two
responses budgeted jointly) and a Bradley–Terry directory (the longer response), under
``truncation: left`` and ``right``: the config training saves (``data.truncation``
included) decides the cut, and the scorer's token rows equal the training rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

from nlhf.preference.format import PreferenceConfig  # noqa: E402
from nlhf.spec.models import RunSpec  # noqa: E402
from nlhf.testing.tolerances import assert_close  # noqa: E402

TEMPLATE = "{prompt} | 1: {response_1} | 2: {response_2} | best:"
"""A short judge template (17 tokens of the tiny tokenizer, which adds no special tokens)."""
BUDGET, MAX_PROMPT = 24, 8
"""Tokens for prompt + responses after the template and the 4 of slack, and of prompt."""
MAX_LENGTH = {"pairwise": 17 + 4 + BUDGET, "bradley_terry": 4 + BUDGET}
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
    (  # a long chosen response: `left` cuts the prompt further, `right` the response
        "Which response is better, 1 or 2? The better response is",
        " rock paper scissors lizard spock apple banana cherry 0 1 2 3 4 5 6 7 8 9",
        " 2",
    ),
]
HEAD = {"pairwise": "lm", "bradley_terry": "classification"}
CHECKPOINT = {"pairwise": "llama", "bradley_terry": "llama_rm"}


def _training_spec(model: Path, data: Path, kind: str, truncation: str) -> RunSpec:
    return RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(model)},
            "data": {
                "path": str(data),
                "shuffle": False,
                "max_length": MAX_LENGTH[kind],
                "max_prompt_length": MAX_PROMPT,
                "truncation": truncation,
            },
            "preference_training": {"kind": kind, "head": HEAD[kind], "template": TEMPLATE},
        }
    )


@pytest.fixture(scope="module")
def trained(
    tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], tuple[Path, Any]]:
    """(kind, truncation) -> (a model directory saved with the config its training run
    saves, that run's prepared pairs and config)."""
    from nlhf.preference.run import prepare_preference_run

    root = tmp_path_factory.mktemp("pairwise-trained")
    data = root / "pairs.jsonl"
    keys = ("prompt", "chosen", "rejected")
    data.write_text("".join(json.dumps(dict(zip(keys, r, strict=True))) + "\n" for r in ROWS))
    out = {}
    for kind in ("pairwise", "bradley_terry"):
        for truncation in ("left", "right"):
            model = root / f"{kind}-{truncation}"
            shutil.copytree(tiny_ckpts[CHECKPOINT[kind]], model)
            run = prepare_preference_run(_training_spec(model, data, kind, truncation))
            assert run.data.report["truncated_prompts"] == len(ROWS)
            run.config.save(model)  # what the backend's fit saves beside the weights
            out[kind, truncation] = (model, run)
    return out


def _scorer(backend: str, path: Path) -> Any:
    if backend == "torch":
        from nlhf_torch.preference.scorers import build_scorer
    else:
        from nlhf_jax.preference.scorers import build_scorer
    spec = RunSpec.model_validate(
        {
            "policy": {"model": "unused"},
            "data": {"path": "unused.jsonl"},
            "algorithm": {"name": "nash_md_pg"},
            "preference": {"name": "pairwise_model", "path": str(path)},
        }
    ).preference
    return build_scorer(spec)


def _rows(ids: Any, mask: Any, n: int) -> list[list[int]]:
    """The unpadded token ids of the first ``n`` rows of a padded batch."""
    ids, mask = np.asarray(ids)[:n], np.asarray(mask)[:n]
    return [row[m == 1].tolist() for row, m in zip(ids, mask, strict=True)]


def _token_rows(backend: str, model: Any, texts: list[str]) -> list[list[int]]:
    batch = model._batch(texts) if backend == "torch" else model.encode(texts)
    return _rows(*batch[:2], len(texts))


def _training_model(backend: str, path: Path, config: PreferenceConfig) -> Any:
    if backend == "torch":
        from nlhf_torch.preference.model import build_preference_model
    else:
        from nlhf_jax.preference.model import build_preference_model
    return build_preference_model(path, config)  # the model training trains


@pytest.mark.parametrize("truncation", ["left", "right"])
@pytest.mark.parametrize("kind", ["pairwise", "bradley_terry"])
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_the_scorer_builds_the_rows_training_built(
    trained: dict[tuple[str, str], tuple[Path, Any]], backend: str, kind: str, truncation: str
) -> None:
    path, run = trained[kind, truncation]
    saved = json.loads((path / "nlhf_preference.json").read_text())
    assert (saved["max_prompt_length"], saved["truncation"]) == (MAX_PROMPT, truncation)
    pairs = run.data.train
    model = _training_model(backend, path, run.config)
    fwd, bwd = model.texts(
        [q.prompt for q in pairs], [q.chosen for q in pairs], [q.rejected for q in pairs]
    )
    trained_rows = _token_rows(backend, model, fwd + bwd)

    scorer = _scorer(backend, path)
    prompts, ys, y_primes = (list(c) for c in zip(*ROWS, strict=True))
    cut = scorer.pairs(prompts, ys, y_primes)
    fwd, bwd = scorer.model.texts(*cut)
    assert _token_rows(backend, scorer.model, fwd + bwd) == trained_rows
    fwd, bwd = scorer.model.texts(prompts, ys, y_primes)  # what it read before: longer
    before = _token_rows(backend, scorer.model, fwd + bwd)
    assert all(len(b) > len(t) for b, t in zip(before, trained_rows, strict=True))
    # the probabilities are the model's on the training rows
    expected = model.prob(
        [q.prompt for q in pairs], [q.chosen for q in pairs], [q.rejected for q in pairs]
    )
    assert_close(scorer.prob(prompts, ys, y_primes), expected, "float32", scope="model")


@pytest.mark.parametrize("kind", ["pairwise", "bradley_terry"])
def test_the_saved_truncation_decides_the_cut(
    trained: dict[tuple[str, str], tuple[Path, Any]], kind: str
) -> None:
    """The long-response row, cut by hand: ``left`` cuts the prompt to make room for the
    responses, ``right`` keeps the prompt's last MAX_PROMPT tokens and cuts the response
    from the right; rows with room are cut alike."""
    prompts, ys, y_primes = (list(c) for c in zip(*ROWS, strict=True))
    left = _scorer("torch", trained[kind, "left"][0])
    right = _scorer("torch", trained[kind, "right"][0])
    tok = left.model.tokenizer
    p, a, b = (tok.encode(t, add_special_tokens=False) for t in ROWS[2])
    other = len(b) if kind == "pairwise" else 0  # jointly, the rejected response's room
    keep = BUDGET - len(a) - other
    assert 0 < keep < MAX_PROMPT
    x_l, y_l, b_l = left.pairs(prompts, ys, y_primes)
    assert (x_l[2], y_l[2], b_l[2]) == (tok.decode(p[-keep:]), ys[2], y_primes[2])
    x_r, y_r, b_r = right.pairs(prompts, ys, y_primes)
    kept = tok.decode(a[: BUDGET - MAX_PROMPT - other])
    assert (x_r[2], y_r[2], b_r[2]) == (tok.decode(p[-MAX_PROMPT:]), kept, y_primes[2])
    assert (x_l[:2], y_l[:2]) == (x_r[:2], y_r[:2])
