"""A preference model trains from each real backbone kind on real hh-rlhf harmless pairs
and reloads: the encoder all-MiniLM-L6-v2 as the Bradley–Terry reward model of
specs/real/preference-hh.yaml (its `preference_training` section: mean pooling, every block
trained) and the decoder
SmolLM2-135M-Instruct with an ``lm`` head (pairwise judge) and a score head (Bradley–Terry).
For each, ``nlhf preference-eval`` on the run's held-out pairs (a file of the split's rows)
gives the run's own ``eval`` numbers: the run scored them with the model in memory, the
command with the one reloaded from disk. Slow: real models (SmolLM2 is built from the
installed package once per test run, the ``smollm2`` fixture of conftest.py, about 30 s);
no network."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from nlhf import cli
from nlhf.packaged import MINILM, ensure_packaged_models
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.model import load_preference_model
from nlhf_torch.preference.train import train_preference_model
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "data" / "hh-rlhf" / "harmless-heldout-300.jsonl.gz"
ROWS, HELD = 8, 2  # the last HELD of the first ROWS rows are held out (no shuffling)
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hh")
    rows = gzip.decompress(DATA.read_bytes()).decode("utf-8").splitlines()[:ROWS]
    pairs, held = root / "pairs.jsonl", root / "heldout.jsonl"
    pairs.write_text("\n".join(rows) + "\n")
    held.write_text("\n".join(rows[-HELD:]) + "\n")
    return {"root": root, "pairs": pairs, "held": held}


def spec_for(model: Path, data: dict[str, Path], **training: Any) -> RunSpec:
    return RunSpec.model_validate(
        {
            "task": "preference_model",
            "seed": 0,
            "policy": {"model": str(model)},
            "data": {
                "path": str(data["pairs"]),
                "format": "hh_rlhf",
                "shuffle": False,
                "eval_fraction": HELD / ROWS,
                "max_length": 128,
                "max_prompt_length": 48,
                "truncation": "left",
            },
            "preference_training": training,
            "training": {"steps": 2, "batch_size": 3, "lr": 1e-4},
            "output": {"checkpoint_every": 2},
        }
    )


def preference_eval(model_dir: Path, held: Path) -> dict[str, Any]:
    args = ["preference-eval", str(model_dir), "--data", str(held), "--format", "hh_rlhf"]
    result = runner.invoke(cli.get_app(plugins=False), [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_run(spec: RunSpec, out: Path, data: dict[str, Path], arch: str) -> None:
    summary = train_preference_model(spec, out)
    final = summary["eval"]
    assert final["pairs"] == HELD
    assert summary["steps"] == 2 and summary["train_loss_last"] is not None
    model = load_preference_model(out / "model").eval()
    assert type(model.model).__name__ == arch
    assert model.config.kind == spec.preference_training.kind
    assert model.config.pooling == spec.preference_training.pooling
    got = preference_eval(out, data["held"])
    assert got["n"] == HELD and got["kind"] == spec.preference_training.kind
    assert_close(got["accuracy"], final["accuracy"], "float64", "accuracy")
    for key in ("log_loss", "ece"):
        assert_close(got[key], final[key], "float32", key, scope="model")


def test_minilm_bradley_terry_of_the_contract_spec(
    data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = tmp_path_factory.mktemp("enc") / "models" / MINILM.name
    contract = yaml.safe_load((REPO / "specs" / "real" / "preference-hh.yaml").read_text())
    spec = spec_for(model, data, **contract["preference_training"])
    ensure_packaged_models(spec)
    check_run(spec, data["root"] / "minilm-bt", data, "BertForSequenceClassification")


@pytest.mark.parametrize(
    ("training", "arch"),
    [
        ({"kind": "pairwise", "head": "lm"}, "LlamaForCausalLM"),
        ({"kind": "bradley_terry", "head": "classification"}, "LlamaForSequenceClassification"),
    ],
    ids=["lm-head-pairwise", "score-head-bradley-terry"],
)
def test_smollm2_preference_models(
    smollm2: Path, data: dict[str, Path], training: dict[str, str], arch: str
) -> None:
    spec = spec_for(smollm2, data, frozen_layers=28, **training)  # the top 2 of 30 blocks train
    check_run(spec, data["root"] / f"smollm2-{training['kind']}", data, arch)
