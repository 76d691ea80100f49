"""The quickstart assets: which specs the prepare hook builds them for, and the SFT policy
reproducing μ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nlhf.plugins import build_plugins
from nlhf.spec.load import load_spec
from nlhf_quickstart import assets as assets_mod
from nlhf_quickstart.measure import answer_probs
from nlhf_quickstart.task import ANSWERS, PROMPTS, SFT_PROBS

SPEC = Path(__file__).resolve().parents[3] / "specs" / "quickstart.yaml"
SFT_ACCURACY = 0.05
"""How close 150 full-batch Adam steps of soft-target SFT bring π(answer | x) to μ: a
property of the build's optimisation, not a floating-point tolerance."""


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, int]]:
    """Record ``prepare_assets`` calls instead of building (each would take ~40 s)."""
    calls: list[tuple[Path, int]] = []

    def fake(assets: Path, *, seed: int = 0) -> dict[str, int]:
        calls.append((Path(assets), seed))
        return {"seed": seed}

    monkeypatch.setattr(assets_mod, "prepare_assets", fake)
    return calls


def test_spec_validates_and_points_at_assets() -> None:
    spec = load_spec(SPEC)
    assert spec.algorithm.name == "nash_md_pg"
    assert spec.preference.function == "population"
    assert assets_mod.assets_dir(spec) == Path("runs/quickstart-assets")


def test_hook_builds_missing_quickstart_assets(
    tmp_path: Path, builds: list[tuple[Path, int]]
) -> None:
    assets = tmp_path / "quickstart-assets"
    spec = load_spec(SPEC, [f"policy.model={assets / 'policy'}", "seed=7"])
    hook = build_plugins().manager.hook
    hook.nlhf_prepare_spec(spec=spec)  # through the installed entry point, as `nlhf run`
    assert builds == [(assets, 7)]


def test_hook_leaves_other_specs_and_finished_builds_alone(
    tmp_path: Path, builds: list[tuple[Path, int]]
) -> None:
    for model in (tmp_path / "elsewhere" / "policy", tmp_path / "quickstart-assets" / "model"):
        assert assets_mod.ensure_assets(load_spec(SPEC, [f"policy.model={model}"])) is None
    done = tmp_path / "done" / "quickstart-assets"
    (done / "policy").mkdir(parents=True)
    (done / "policy" / "config.json").write_text("{}")
    spec = load_spec(SPEC, [f"policy.model={done / 'policy'}"])
    assert assets_mod.ensure_assets(spec) == {"seed": 0}  # no prompts yet: not finished
    (done / "prompts.jsonl").write_text("")
    assert assets_mod.ensure_assets(spec) is None
    assert builds == [(done, 0)]
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.slow
def test_assets_sft_matches_mu(quickstart_assets: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((quickstart_assets / "policy" / "quickstart.json").read_text())
    assert info["answer_tokens"] == [1, 1, 1]  # each answer is one token (+ EOS)
    tok = AutoTokenizer.from_pretrained(quickstart_assets / "policy")
    model = AutoModelForCausalLM.from_pretrained(quickstart_assets / "policy")
    probs = answer_probs(model, tok, list(PROMPTS), ANSWERS, 1.0)
    # soft-target SFT: π(answer EOS | x) ≈ μ for every prompt, nearly all mass on the answers
    np.testing.assert_allclose(probs, np.array([SFT_PROBS] * len(PROMPTS)), atol=SFT_ACCURACY)
    assert probs.sum(1).min() > 1 - SFT_ACCURACY
    lines = (quickstart_assets / "prompts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"prompt": p} for p in PROMPTS]
