"""``nlhf serve`` of a model trained by ``task: preference_model`` (a real server process
on 127.0.0.1, as tests/test_serve.py) reads its rows as training read them, so that
``preference: {name: remote}`` equals the in-process scorer of the same directory for
prompts longer than the saved ``max_prompt_length``: ``/v1/reward`` and
``/v1/preference`` of a Bradley–Terry reward equal ``bradley_terry_reward``'s r and P,
``/v1/preference`` of a pairwise judge (saved ``truncation: right``) equals
``pairwise_model``'s P."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from nlhf.preference.format import PreferenceConfig
from nlhf.preference.remote import RemoteScorer
from nlhf.spec.models import RemotePreference, RunSpec
from nlhf.testing.servers import ServerProcess, free_port
from nlhf.testing.tolerances import assert_close, tolerance
from nlhf_torch.preference.scorers import build_scorer

NLHF = str(Path(sys.executable).with_name("nlhf"))
TEMPLATE = "{prompt} | 1: {response_1} | 2: {response_2} | best:"
"""A short judge template (17 tokens of the tiny tokenizer, which adds no special tokens)."""
MAX_PROMPT = 8
PROMPTS = [  # each longer than MAX_PROMPT tokens
    "The quick brown fox jumps over the lazy dog. Human: How do I bake bread?",
    "Nash learning from human feedback finds the policy preferred to any other. Why not?",
    "Which response is better, 1 or 2? The better response is",
]
YS = [
    " Mix flour, water, yeast and salt.",
    " It is unsafe.",
    " rock paper scissors lizard spock apple banana cherry 0 1 2 3 4 5 6 7 8 9",
]
YPS = [" I cannot help with that.", " rock paper scissors", " 2"]


def _trained(src: Path, dst: Path, config: PreferenceConfig) -> Path:
    shutil.copytree(src, dst)
    config.save(dst)  # as task: preference_model saves it beside the weights
    return dst


def _serve(model: Path, tmp: Path) -> Any:
    port = free_port()
    argv = [NLHF, "serve", str(model), "--port", str(port)]
    return ServerProcess(argv, port, log=tmp / f"serve-{port}.log").start()


@pytest.fixture(scope="module")
def reward(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Bradley–Terry reward saved with max_length 28 (24 tokens of text after the 4 of
    slack), max_prompt_length 8, truncation left; and its server."""
    tmp = tmp_path_factory.mktemp("serve-bt-trained")
    config = PreferenceConfig(
        kind="bradley_terry", head="classification", max_length=28, max_prompt_length=MAX_PROMPT
    )
    path = _trained(tiny_ckpts["llama_rm"], tmp / "bt", config)
    proc = _serve(path, tmp)
    yield path, proc
    proc.stop()


@pytest.fixture(scope="module")
def judge(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A pairwise judge (``head: lm``) saved with max_length 45 (24 tokens after the
    template and the slack), max_prompt_length 8, truncation right; and its server."""
    tmp = tmp_path_factory.mktemp("serve-judge-trained")
    config = PreferenceConfig(
        kind="pairwise",
        head="lm",
        template=TEMPLATE,
        max_length=45,
        max_prompt_length=MAX_PROMPT,
        truncation="right",
    )
    path = _trained(tiny_ckpts["llama"], tmp / "judge", config)
    proc = _serve(path, tmp)
    yield path, proc
    proc.stop()


def _in_process(name: str, path: Path) -> Any:
    spec = RunSpec.model_validate(
        {
            "policy": {"model": "unused"},
            "data": {"path": "unused.jsonl"},
            "algorithm": {"name": "nash_md_pg"},
            "preference": {"name": name, "path": str(path)},
        }
    ).preference
    return build_scorer(spec)


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_served_reward_equals_the_in_process_reward(reward: Any) -> None:
    path, server = reward
    local = _in_process("bradley_terry_reward", path)
    expected = local.reward(PROMPTS, YS)
    items = [{"prompt": x, "response": y} for x, y in zip(PROMPTS, YS, strict=True)]
    got = httpx.post(server.url + "/v1/reward", json={"items": items}, timeout=60)
    assert_close(got.json()["rewards"], expected, "float32", "served r", scope="model")
    remote = RemoteScorer(RemotePreference(url=server.url))
    assert_close(remote.reward(PROMPTS, YS), expected, "float32", "remote r", scope="model")
    p = local.prob(PROMPTS, YS, YPS)
    assert_close(remote.prob(PROMPTS, YS, YPS), p, "float32", "remote P", scope="model")
    # the whole prompt + response (what /v1/reward read before) scores differently
    whole = local.model.scores([x + y for x, y in zip(PROMPTS, YS, strict=True)])
    gap = np.abs(whole.double().numpy() - expected).min()
    assert gap > 100 * tolerance("float32", "model").atol
    info = httpx.get(server.url + "/v1/model", timeout=10).json()
    assert (info["max_prompt_length"], info["truncation"]) == (MAX_PROMPT, "left")


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_served_judge_equals_the_in_process_pairwise_model(judge: Any) -> None:
    path, server = judge
    local = _in_process("pairwise_model", path)
    expected = local.prob(PROMPTS, YS, YPS)
    remote = RemoteScorer(RemotePreference(url=server.url))
    assert_close(remote.prob(PROMPTS, YS, YPS), expected, "float32", "remote P", scope="model")
    whole = local.model.prob(PROMPTS, YS, YPS)  # the uncut comparisons, as served before
    assert np.abs(np.asarray(whole) - expected).max() > 100 * tolerance("float32", "model").atol
    info = httpx.get(server.url + "/v1/model", timeout=10).json()
    assert (info["max_prompt_length"], info["truncation"]) == (MAX_PROMPT, "right")
