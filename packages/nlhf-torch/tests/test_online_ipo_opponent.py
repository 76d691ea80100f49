"""Online IPO with β = 0 samples y' from π_θ; with β > 0 it is IPO-MD (Calandriello et al.
2024) and samples y' from the geometric mixture π̃_β ∝ π_θ^(1−β)·μ^β. Checked through the
Nash loop: a spy on the pair sampler records what the torch stepper asks for, and the
recorded call is replayed with shared uniforms against the plain policy sampler."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nlhf
import pytest
import torch
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.training import nash_loop
from nlhf_torch import generation
from nlhf_torch.tiny import build_tiny_model

pytestmark = [pytest.mark.torch, pytest.mark.slow]  # two tiny models + two Nash steps: ~25 s

CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
TOKENS = 6


class LengthOracle:
    def __call__(self, prompts: list[str], ys: list[str], yps: list[str]) -> list[float]:
        return [1 / (1 + math.exp(-(len(a) - len(b)) / 4)) for a, b in zip(ys, yps, strict=True)]


class _Oracle:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("online_ipo")
    # policy and reference differ (seeds 1 and 2), so the β-mixture differs from π_θ
    policy = build_tiny_model(root / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    reference = build_tiny_model(root / "ref", "llama", corpus=CORPUS, vocab_size=300, seed=2)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"policy": str(policy), "reference": str(reference), "data": str(data)}


def _spec(assets: dict[str, str], out: Path, beta: float) -> RunSpec:
    return RunSpec.model_validate(
        {
            "seed": 0,
            "policy": {"model": assets["policy"]},
            "reference": {"model": assets["reference"]},
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": assets["data"]},
            "algorithm": {"name": "online_ipo", "beta": beta, "tau": 0.1},
            "training": {
                "steps": 1,
                "batch_size": 4,
                "generation": {"max_new_tokens": TOKENS, "temperature": 1.0},
            },
            "output": {"dir": str(out)},
        }
    )


def _y_prime(call: dict[str, Any], uniforms: torch.Tensor, **over: Any) -> torch.Tensor:
    kwargs = {k: v for k, v in call["kwargs"].items() if k not in ("generator", "uniforms")}
    kwargs.update(over)
    pairs = generation.generate_pairs(*call["args"], uniforms=uniforms, **kwargs)
    return pairs.y_prime


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_online_ipo_opponent_is_the_policy_at_beta_zero_and_the_mixture_above(
    assets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beta: float
) -> None:
    calls: list[dict[str, Any]] = []
    real = generation.generate_pairs

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append({"args": args, "kwargs": kwargs})
        return real(*args, **kwargs)

    import nlhf_torch.trainer as trainer_module

    monkeypatch.setattr(generation, "generate_pairs", spy)
    if hasattr(trainer_module, "generate_pairs"):  # imported by name into the trainer
        monkeypatch.setattr(trainer_module, "generate_pairs", spy)
    plugins = build_plugins(extra=[_Oracle()])
    loop = nash_loop(_spec(assets, tmp_path, beta), tmp_path, backend="torch", plugins=plugins)
    record = loop.step(1)
    monkeypatch.setattr(generation, "generate_pairs", real)

    assert len(calls) == 1 and math.isfinite(record["loss"])
    call = calls[0]
    assert call["kwargs"]["beta"] == beta
    assert call["kwargs"]["opponent"] == "mixture"  # π̃_β, which is π_θ itself at β = 0
    rows = call["args"][2].shape[0]
    uniforms = torch.rand(
        2 * rows, TOKENS, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    mixture = _y_prime(call, uniforms)
    policy = _y_prime(call, uniforms, opponent="policy", beta=0.0)
    if beta == 0.0:  # Online IPO: y' ~ π_θ, token for token the policy's own samples
        torch.testing.assert_close(mixture, policy, rtol=0, atol=0)
    else:  # IPO-MD: the mixture with a different reference samples other tokens
        assert not torch.equal(mixture, policy)
