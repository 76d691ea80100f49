"""``output.report_to`` on a tiny torch Nash-MD-PG run (tiny Llama): every logged record of
``metrics.jsonl`` read back from TensorBoard's event files, the MLflow file store and the
offline W&B run, with the run's spec and summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest
import yaml
from nlhf.plugins import build_plugins
from nlhf.runio import read_metrics
from nlhf.spec import RunSpec
from nlhf.testing.tracking import mlflow_runs, read_tensorboard, read_wandb_offline
from nlhf.testing.trainer import LengthOracle
from nlhf_torch.tiny import build_tiny_model
from nlhf_torch.trainer import train_nash

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


@pytest.mark.slow
def test_nash_run_reports_to_all_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = build_tiny_model(tmp_path / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    spec = RunSpec.model_validate(
        {
            "seed": 3,
            "policy": {"model": str(model)},
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": str(data)},
            "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
            "training": {
                "steps": 3,
                "batch_size": 2,
                "lr": 1e-2,
                "generation": {"max_new_tokens": 4},
            },
            "output": {"dir": str(out), "report_to": ["tensorboard", "mlflow", "wandb"]},
        }
    )
    summary = train_nash(spec, out, plugins=build_plugins(extra=[_Plugin()]))
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    numeric = sorted(
        k
        for k, v in records[0].items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    )
    assert {"loss", "kl", "preference", "grad_norm", "lr"} <= set(numeric)

    acc = read_tensorboard(out / "tensorboard")
    for key in numeric:
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2, 3]
        np.testing.assert_array_equal(
            np.array([e.value for e in events], dtype=np.float32),
            np.array([r[key] for r in records], dtype=np.float32),
        )

    client, (run,) = mlflow_runs(out / "mlruns")
    assert run.info.status == "FINISHED"
    assert run.data.tags["nlhf.task"] == "nash"
    assert run.data.params["algorithm.name"] == "nash_md_pg"
    for key in numeric:
        history = client.get_metric_history(run.info.run_id, key)
        np.testing.assert_array_equal([m.value for m in history], [r[key] for r in records])
    assert run.data.metrics["summary/final/loss"] == summary["final"]["loss"]

    offline = read_wandb_offline(out / "wandb")
    assert offline.exit_code == 0
    assert [h["_step"] for h in offline.history] == [1, 2, 3]
    for key in numeric:
        np.testing.assert_array_equal([h[key] for h in offline.history], [r[key] for r in records])
    resolved = yaml.safe_load((out / "spec.resolved.yaml").read_text())
    assert offline.config["algorithm"] == resolved["algorithm"]
    assert offline.summary["final/loss"] == summary["final"]["loss"]


@pytest.mark.slow
def test_preference_fit_with_baseline_reports_both(tmp_path: Path) -> None:
    """``task: preference_model`` with ``compare_baseline``: the fit's records and the
    Bradley–Terry baseline's (``baseline/…``) reach TensorBoard with their values."""
    from nlhf_torch.preference.train import train_preference_model

    rows = [
        {"prompt": f"pick {i}", "chosen": f"apple {i}", "rejected": f"pear {i}"} for i in range(24)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = build_tiny_model(tmp_path / "lm", "llama", corpus=CORPUS, vocab_size=300, seed=2)
    out = tmp_path / "pm"
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(model)},
            "data": {"path": str(data), "eval_fraction": 0.25, "max_length": 256},
            "preference_training": {"kind": "pairwise", "compare_baseline": True},
            "training": {"steps": 2, "batch_size": 4, "lr": 1e-3, "eval_every": 1},
            "output": {"dir": str(out), "report_to": ["tensorboard"]},
        }
    )
    train_preference_model(spec, out)
    acc = read_tensorboard(out / "tensorboard")
    for directory, prefix in ((out, ""), (out / "baseline", "baseline/")):
        records = read_metrics(directory)
        assert records
        key = next(k for k, v in records[-1].items() if k != "step" and isinstance(v, float))
        logged = [r for r in records if isinstance(r.get(key), float)]
        events = acc.Scalars(prefix + key)
        np.testing.assert_array_equal(
            np.array([e.value for e in events], dtype=np.float32),
            np.array([r[key] for r in logged], dtype=np.float32),
        )
    assert "summary/baseline/kind" not in acc.Tags()["scalars"]  # strings stay text
    assert any(t.startswith("summary/baseline/") for t in acc.Tags()["scalars"])


@pytest.mark.slow
def test_llm_evaluation_reports_plot_and_summary(tmp_path: Path) -> None:
    """``task: evaluate`` on two tiny policies: the win-rate heatmap PNG reaches MLflow as
    an artifact with its bytes, and the summary's matrix reaches W&B's summary."""
    from nlhf_torch.evaluate import evaluate_spec

    base = build_tiny_model(tmp_path / "base", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    other = build_tiny_model(tmp_path / "other", "llama", tokenizer_dir=base, seed=2)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    out = tmp_path / "ev"
    spec = RunSpec.model_validate(
        {
            "task": "evaluate",
            "policy": {"model": str(base)},
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": str(data)},
            "training": {"generation": {"max_new_tokens": 3}},
            "eval": {"policies": ["reference", str(other)]},
            "output": {"dir": str(out), "report_to": ["mlflow", "wandb"]},
        }
    )
    summary = evaluate_spec(spec, plugins=build_plugins(extra=[_Plugin()]))
    client, (run,) = mlflow_runs(out / "mlruns")
    local = Path(client.download_artifacts(run.info.run_id, "plots/winrate.png", str(tmp_path)))
    assert local.read_bytes() == (out / "plots" / "winrate.png").read_bytes()
    assert run.data.tags["nlhf.task"] == "evaluate"
    offline = read_wandb_offline(out / "wandb")
    assert offline.summary["matrix"] == summary["matrix"]
    assert offline.exit_code == 0
