"""The quickstart: assets, the population oracle's summary, the spec, and (slow) the
full comparison Nash-MD-PG vs RLHF-PG."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from nlhf.spec.load import load_spec
from nlhf.tabular.games import population
from nlhf.tabular.metrics import duality_gap
from nlhf_torch.quickstart import (
    ANSWERS,
    SFT_PROBS,
    PopulationOracle,
    answer_probs,
    maybe_prepare,
    prepare_assets,
    run_quickstart,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[3]
SPEC = REPO / "specs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qs") / "quickstart-assets"
    prepare_assets(root, sft_steps=150)
    return root


def test_assets_sft_matches_mu(assets: Path) -> None:
    info = json.loads((assets / "policy" / "quickstart.json").read_text())
    assert info["answer_tokens"] == [1, 1, 1]  # each answer is one token (+ EOS)
    tok = AutoTokenizer.from_pretrained(assets / "policy")
    model = AutoModelForCausalLM.from_pretrained(assets / "policy")
    probs = answer_probs(model, tok, ["Pick a fruit:", "Which fruit?"], ANSWERS, 1.0)
    # soft-target SFT: π(answer EOS | x) ≈ μ, and nearly all mass on the answers
    np.testing.assert_allclose(probs, np.array([SFT_PROBS] * 2), atol=0.05)
    assert probs.sum(1).min() > 0.95
    lines = (assets / "prompts.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[0]) == {"prompt": "Pick a fruit:"}


def test_summary_reports_distances_to_the_regularised_nash(assets: Path) -> None:
    spec = load_spec(SPEC)
    tok = AutoTokenizer.from_pretrained(assets / "policy")
    model = AutoModelForCausalLM.from_pretrained(assets / "policy")
    oracle = PopulationOracle(eval_samples=32)
    prompts = ["Pick a fruit:", "Name a fruit:"]
    out = oracle.summary(policy=model, reference=model, tokenizer=tok, prompts=prompts, spec=spec)
    ne = np.array(list(out["regularized_nash"].values()))
    mu = np.array(list(out["reference"].values()))
    tau = spec.algorithm.tau
    # the reported NE is the regularised NE of the tabular population game: zero duality gap
    assert duality_gap(population().matrix, mu, ne, tau) < 1e-3  # rounded to 4 digits
    assert out["policy"] == out["reference"]  # policy = reference here
    assert out["tv_policy_to_nash"] == pytest.approx(out["tv_reference_to_nash"])
    assert out["tv_reference_to_nash"] == pytest.approx(0.5 * np.abs(mu - ne).sum(), abs=1e-3)
    assert sum(out["policy_sampled"].values()) == pytest.approx(1.0)


def test_spec_validates_and_points_at_assets() -> None:
    spec = load_spec(SPEC)
    assert spec.algorithm.name == "nash_md_pg"
    assert spec.preference.function == "population"
    assert Path(spec.policy.model).parent.name == "quickstart-assets"


def test_maybe_prepare_only_for_quickstart_assets(tmp_path: Path) -> None:
    spec = load_spec(SPEC, [f"policy.model={tmp_path / 'elsewhere' / 'policy'}"])
    assert maybe_prepare(spec) is None
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.slow
def test_quickstart_nash_approaches_ne_while_rlhf_collapses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the spec's relative asset paths land in tmp_path
    spec = load_spec(SPEC)
    report = run_quickstart(spec, tmp_path / "out")
    nash, rlhf = report["nash"], report["rlhf"]
    assert (tmp_path / "runs" / "quickstart-assets" / "policy" / "config.json").exists()
    # Nash-MD-PG moves toward π*_τ; RLHF-PG concentrates on one answer, away from it
    assert nash["tv_policy_to_nash"] < 0.5 * nash["tv_reference_to_nash"]
    assert rlhf["max_answer_prob"] > 0.8
    assert rlhf["tv_policy_to_nash"] > 2 * nash["tv_policy_to_nash"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["nash"] == nash
    if os.environ.get("NLHF_PRINT_QUICKSTART"):
        print(report)
