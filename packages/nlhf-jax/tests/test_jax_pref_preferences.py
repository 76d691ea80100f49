"""Preferences of the jax Nash trainer (``bradley_terry_reward``, ``llm_judge``,
``pairwise_model``): closed forms against an unbatched, unpadded forward, clear errors,
and short ``task: nash`` runs with each. (Agreement with torch: tests/test_cross_backend_
jax_torch_preferences.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nlhf.errors import InputError, NLHFError
from nlhf.preference.scorers import check_supported
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close
from pydantic import ValidationError

pytestmark = pytest.mark.jax

from nlhf.data.tokenizer import load_tokenizer  # noqa: E402
from nlhf_jax.models import load_model  # noqa: E402
from nlhf_jax.preference.scorers import SUPPORTED, build_scorer  # noqa: E402

PROMPTS = ["Pick a fruit:", "Which is better?", "Hello"]
YS = [" apple", " a long answer here", " 1"]
YPS = [" banana", " 2", " short"]


def _pref(preference: dict[str, Any]) -> Any:
    return RunSpec.model_validate({
        "policy": {"model": "unused"}, "preference": preference,
        "data": {"path": "unused.jsonl"}, "algorithm": {"name": "nash_md_pg"},
    }).preference  # fmt: skip


def _sigmoid(z: Any) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def test_supported_names() -> None:
    assert set(SUPPORTED) == {
        "oracle",
        "bradley_terry_reward",
        "llm_judge",
        "pairwise_model",
        "remote",
        "openai_judge",
    }


def test_bradley_terry_is_sigmoid_of_unbatched_rewards(tiny_ckpts: dict[str, Path]) -> None:
    path = tiny_ckpts["llama_rm"]
    pref = build_scorer(_pref({"name": "bradley_terry_reward", "path": str(path),
                                   "batch_size": 2}))  # fmt: skip
    tok, model = load_tokenizer(path), load_model(path)
    forward = nnx.jit(lambda m, ids: m(ids))

    def r(text: str) -> float:  # one unpadded row through the model's own __call__
        return float(forward(model, jnp.asarray([tok.encode(text)]))[0, 0])

    rewards = [r(x + y) for x, y in zip(PROMPTS, YS, strict=True)]
    # batched + padded vs one unpadded row through the network: model scope
    assert_close(pref.reward(PROMPTS, YS), rewards, what="rewards", scope="model")
    expected = [_sigmoid(r(x + a) - r(x + b)) for x, a, b in zip(PROMPTS, YS, YPS, strict=True)]
    p = pref.prob(PROMPTS, YS, YPS)
    assert_close(p, expected, what="P(y ≻ y')", scope="model")
    # swapped texts may land in another length bucket: equal up to float32 noise
    assert_close(p + pref.prob(PROMPTS, YPS, YS), 1.0, what="P + P swapped", scope="model")


def test_llm_judge_averages_both_orders(tiny_ckpts: dict[str, Path]) -> None:
    path = tiny_ckpts["llama"]
    template = "Q: {prompt} A1: {response_1} A2: {response_2} Better:"
    answers = ("1", "2")
    pref = build_scorer(_pref({"name": "llm_judge", "model": str(path), "template": template,
                                   "answer_tokens": list(answers)}))  # fmt: skip
    tok, model = load_tokenizer(path), load_model(path)
    a1, a2 = (tok.encode(a, add_special_tokens=False)[0] for a in answers)
    forward = nnx.jit(lambda m, ids: m(ids, last_only=True)[0])

    def first(x: str, a: str, b: str) -> float:
        ids = tok.encode(
            template.format(prompt=x, response_1=a, response_2=b), add_special_tokens=False
        )
        logits = forward(model, jnp.asarray([ids]))
        return float(_sigmoid(float(logits[0, a1]) - float(logits[0, a2])))

    expected = [0.5 * (first(x, a, b) + 1 - first(x, b, a))
                for x, a, b in zip(PROMPTS, YS, YPS, strict=True)]  # fmt: skip
    np.testing.assert_allclose(pref.prob(PROMPTS, YS, YPS), expected, atol=1e-6)
    with pytest.raises(InputError, match="rlhf_pg"):
        pref.reward(PROMPTS, YS)


@pytest.mark.parametrize(
    ("preference", "error", "match"),
    [
        ({"name": "bradley_terry_reward", "path": "/nonexistent"}, InputError, "not found"),
        ({"name": "bradley_terry_reward", "path": "{llama}"}, InputError, "sequence-classif"),
        ({"name": "llm_judge", "model": "{llama}", "answer_tokens": [" 2", " 2 2"]},
         InputError, r"preference\.answer_tokens: .* one is a prefix"),
        ({"name": "llm_judge", "model": "{llama}", "template": "{prompt} {response_1}"},
         ValidationError, "response_2"),
        ({"name": "pairwise_model", "path": "{llama_rm}/nope"}, InputError, "not found"),
    ],
)  # fmt: skip
def test_clear_errors(tiny_ckpts: dict[str, Path], preference: dict, error, match) -> None:
    preference = {k: v.format(**tiny_ckpts) if isinstance(v, str) and "{" in v and k != "template"
                  else v for k, v in preference.items()}  # fmt: skip
    with pytest.raises(error, match=match):
        build_scorer(_pref(preference))


def test_tabular_and_plugin_preferences_are_refused_early() -> None:
    from nlhf.spec.models import PluginPreference, TabularPreference

    with pytest.raises(NLHFError, match="numpy backend"):
        check_supported(TabularPreference(game="rps"), SUPPORTED, "jax")
    with pytest.raises(NLHFError, match=r"not supported by the jax backend.*another --backend"):
        build_scorer(PluginPreference(name="my_plugin_pref"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preference", "algorithm"),
    [
        ({"name": "bradley_terry_reward", "path": "llama_rm"}, "rlhf_pg"),
        ({"name": "llm_judge", "model": "qwen2", "answer_tokens": ["1", "2"]}, "nash_md_pg"),
        ({"name": "pairwise_model", "path": "llama_rm"}, "self_play"),
    ],
)
def test_nash_runs_with_each_preference(
    tiny_ckpts: dict[str, Path], tmp_path: Path, preference: dict, algorithm: str
) -> None:
    from nlhf_jax.backend import JaxBackend

    preference = {k: (str(tiny_ckpts[v]) if k in ("path", "model") else v)
                  for k, v in preference.items()}  # fmt: skip
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    spec = RunSpec.model_validate({
        "task": "nash", "seed": 0, "policy": {"model": str(tiny_ckpts["llama"])},
        "preference": preference, "data": {"path": str(data), "format": "prompt"},
        "algorithm": {"name": algorithm, "tau": 0.05},
        "training": {"steps": 1, "batch_size": 2, "generation": {"max_new_tokens": 3}},
    })  # fmt: skip
    summary = JaxBackend().train(spec, tmp_path / "run")
    final = summary["final"]
    assert np.isfinite(final["loss"])
    if algorithm == "rlhf_pg":
        assert np.isfinite(final["reward"])
    else:
        assert 0.0 <= final["preference"] <= 1.0


NO_TORCH = """
import importlib.machinery, sys

class _NoTorch(importlib.machinery.PathFinder):
    # torch, as if it were not installed: find_spec answers None (transformers' check)
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchgen", "functorch"):
            return None
        return super().find_spec(name, path, target)

sys.meta_path = [_NoTorch if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def test_scoring_without_torch(tiny_ckpts: dict[str, Path]) -> None:
    """With torch not installed, the jax preference code loads tokenizers (transformers)
    and scores without importing torch; the guard itself makes ``import torch`` fail."""
    import subprocess
    import sys

    code = NO_TORCH + (
        "from nlhf.spec.models import PairwiseModelPreference\n"
        "from nlhf_jax.preference.scorers import build_scorer\n"
        "import nlhf_jax.preference.train\n"
        f"p = build_scorer(PairwiseModelPreference(path={str(tiny_ckpts['llama_rm'])!r}))\n"
        "assert 0 < p.prob(['x'], [' a'], [' b'])[0] < 1\n"
        "assert 'transformers' in sys.modules and 'torch' not in sys.modules\n"
        "try:\n    import torch\nexcept ImportError:\n    pass\n"
        "else:\n    raise AssertionError('torch was importable')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
