"""``output.report_to``: tabular runs and evaluations read back with TensorBoard's
``EventAccumulator``, MLflow's client on the file store and W&B's offline run records;
the expected values are the run's own ``metrics.jsonl`` / ``summary.json`` and the PNGs
on disk (independent of the trackers), compared bit for bit after the tracker's storage
type (TensorBoard stores float32)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from nlhf import tracking
from nlhf.errors import InputError, SpecError
from nlhf.runio import read_metrics
from nlhf.spec.load import load_spec
from nlhf.spec.models import RunSpec
from nlhf.spec.preflight import check_preflight
from nlhf.tabular.runner import train_spec
from nlhf.testing.tracking import mlflow_runs, read_tensorboard, read_wandb_offline

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def tabular_spec(out: Path, report_to: list[str], **algorithm: Any) -> RunSpec:
    return RunSpec.model_validate(
        {
            "preference": {"name": "tabular", "matrix": [[0.5, 0.7], [0.3, 0.5]]},
            "reference": {"probs": [0.5, 0.5]},
            "algorithm": {"name": "nash_md", "tau": 0.1, "steps": 40, "log_every": 10, **algorithm},
            "output": {"dir": str(out), "report_to": report_to},
        }
    )


def _metric_keys(records: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in records for k in r if k != "step"})


def test_tabular_run_to_tensorboard(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train_spec(tabular_spec(out, ["tensorboard"]), out)
    records = read_metrics(out)
    acc = read_tensorboard(out / "tensorboard")
    tags = acc.Tags()
    assert set(_metric_keys(records)) <= set(tags["scalars"])
    for key in _metric_keys(records):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in records]
        np.testing.assert_array_equal(
            np.array([e.value for e in events], dtype=np.float32),
            np.array([r[key] for r in records], dtype=np.float32),
        )
    # the summary: scalars at the last step and the JSON text
    last = records[-1]["step"]
    (gap,) = acc.Scalars("summary/duality_gap")
    assert gap.step == last
    assert gap.value == np.float32(summary["duality_gap"])
    text = acc.Tensors("summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n")) == json.loads((out / "summary.json").read_text())
    spec_text = acc.Tensors("spec")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(spec_text.strip("`\n")) == yaml.safe_load(
        (out / "spec.resolved.yaml").read_text()
    )


def test_tabular_run_to_mlflow(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train_spec(tabular_spec(out, ["mlflow"]), out)
    records = read_metrics(out)
    client, runs = mlflow_runs(out / "mlruns")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    assert run.data.tags["nlhf.task"] == "tabular"
    for key in _metric_keys(records):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [r["step"] for r in records]
        np.testing.assert_array_equal([m.value for m in history], [r[key] for r in records])
    # the spec: flattened params and the YAML artifact
    assert run.data.params["algorithm.name"] == "nash_md"
    assert json.loads(run.data.params["reference.probs"]) == [0.5, 0.5]
    local = Path(client.download_artifacts(run.info.run_id, "spec.resolved.yaml", str(tmp_path)))
    assert yaml.safe_load(local.read_text()) == yaml.safe_load(
        (out / "spec.resolved.yaml").read_text()
    )
    local = Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(local.read_text()) == json.loads((out / "summary.json").read_text())
    assert run.data.metrics["summary/kl_to_solution"] == summary["kl_to_solution"]


@pytest.mark.slow
def test_tabular_run_to_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    out = tmp_path / "run"
    summary = train_spec(tabular_spec(out, ["wandb"]), out)
    records = read_metrics(out)
    run = read_wandb_offline(out / "wandb")
    assert run.exit_code == 0
    assert [h["_step"] for h in run.history] == [r["step"] for r in records]
    for key in _metric_keys(records):
        np.testing.assert_array_equal([h[key] for h in run.history], [r[key] for r in records])
    resolved = yaml.safe_load((out / "spec.resolved.yaml").read_text())
    assert {k: run.config[k] for k in resolved} == resolved
    assert run.summary["duality_gap"] == summary["duality_gap"]
    assert run.summary["algorithm"] == "nash_md"


def test_evaluation_plots_reach_tensorboard_and_mlflow(tmp_path: Path) -> None:
    """A tabular ``task: evaluate`` (rps: three responses, so a simplex plot too): each PNG
    under plots/ arrives as a TensorBoard image with its bytes and size, and as an MLflow
    artifact."""
    from nlhf.evaluation.tabular import evaluate_tabular_spec

    out = tmp_path / "eval"
    spec = RunSpec.model_validate(
        {
            "task": "evaluate",
            "preference": {"name": "tabular", "game": "rps"},
            "eval": {"policies": ["reference", "maximal_lottery"]},
            "output": {"dir": str(out), "report_to": ["tensorboard", "mlflow"]},
        }
    )
    evaluate_tabular_spec(spec, out)
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.stem for p in pngs] == ["simplex", "winrate"]
    acc = read_tensorboard(out / "tensorboard")
    for png in pngs:
        (image,) = acc.Images(f"plots/{png.stem}")
        data = png.read_bytes()
        assert image.encoded_image_string == data
        width, height = struct.unpack(">II", data[16:24])  # the PNG's IHDR chunk
        assert (image.width, image.height) == (width, height)
    client, (run,) = mlflow_runs(out / "mlruns")
    listed = sorted(f.path for f in client.list_artifacts(run.info.run_id, "plots"))
    assert listed == ["plots/simplex.png", "plots/winrate.png"]
    assert run.data.tags["nlhf.task"] == "evaluate"


def test_records_of_a_subdirectory_get_its_prefix(tmp_path: Path) -> None:
    """A preference fit's Bradley–Terry ``baseline/metrics.jsonl`` reports as
    ``baseline/…`` on the run's step axis, its own step kept as ``baseline/step``."""
    from nlhf.runio import MetricsWriter, write_summary

    out = tmp_path / "run"
    spec = tabular_spec(out, ["mlflow"])
    with tracking.track(spec, out, "preference_model"):
        with MetricsWriter(out) as writer:
            writer.log({"step": 5, "loss": 0.25})
        with MetricsWriter(out / "baseline") as writer:
            writer.log({"step": 2, "loss": 0.5})
        write_summary(out / "baseline", {"eval": {"accuracy": 0.75}})
    client, (run,) = mlflow_runs(out / "mlruns")
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (5, 0.25)
    ]
    base = client.get_metric_history(run.info.run_id, "baseline/loss")
    assert [(m.step, m.value) for m in base] == [(2, 0.5)]
    assert run.data.metrics["baseline/step"] == 2
    assert run.data.metrics["summary/baseline/eval/accuracy"] == 0.75


def test_failed_task_marks_the_run_failed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    spec = tabular_spec(out, ["mlflow"])
    with pytest.raises(RuntimeError, match="boom"), tracking.track(spec, out, "nash"):
        raise RuntimeError("boom")
    _, (run,) = mlflow_runs(out / "mlruns")
    assert run.info.status == "FAILED"
    assert tracking.active(out) is None


def test_no_report_to_writes_no_tracker_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_spec(tabular_spec(out, []), out)
    assert not any((out / d).exists() for d in tracking.TRACKING_DIRS.values())


def test_resumed_tensorboard_run_purges_the_redone_steps(tmp_path: Path) -> None:
    """A resume writes SessionLog.START at its first step: TensorBoard's reader drops the
    first attempt's events from that step on, so each step appears once."""
    out = tmp_path / "run"
    spec = tabular_spec(out, ["tensorboard"])
    with tracking.track(spec, out, "nash"):
        for step in (1, 2, 3):
            tracking.report_metrics(out, {"step": step, "loss": float(step)})
    with tracking.track(spec, out, "nash", resumed_from=2):
        for step in (3, 4):
            tracking.report_metrics(out, {"step": step, "loss": 10.0 * step})
    events = read_tensorboard(out / "tensorboard").Scalars("loss")
    assert [(e.step, e.value) for e in events] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


# ------------------------------------------------------------------ checks and errors
def test_missing_library_is_a_located_spec_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tracker whose module is not importable (a name no distribution provides stands in
    for an uninstalled wandb) is reported at its list entry with the install command."""
    monkeypatch.setitem(tracking.MODULES, "wandb", "nlhf_no_such_module_for_tests")
    path = tmp_path / "spec.yaml"
    path.write_text(
        "preference: {name: tabular, game: rps}\n"
        "algorithm: {name: nash_md, tau: 0.1, steps: 10}\n"
        "output:\n"
        f"  dir: {tmp_path / 'out'}\n"
        "  report_to: [tensorboard, wandb]\n"
    )
    spec = load_spec(path)
    with pytest.raises(SpecError) as err:
        check_preflight(spec, path)
    message = str(err.value)
    assert f"{path}:5:" in message
    assert "output.report_to.1" in message
    assert "pip install 'nlhf-core[wandb]'" in message
    assert "tensorboard" not in message.split("output.report_to.1")[0].split(str(path))[-1]
    with pytest.raises(InputError, match=r"nlhf-core\[wandb\]"):
        tracking.open_trackers(spec, tmp_path / "out", "nash")


def test_unknown_tracker_name_is_a_located_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "preference: {name: tabular, game: rps}\n"
        "algorithm: {name: nash_md, tau: 0.1}\n"
        "output: {report_to: [tensorbord]}\n"
    )
    with pytest.raises(SpecError, match=r"spec.yaml:3:\d+: output\.report_to\.0"):
        load_spec(path)


def test_report_to_may_change_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_spec(tabular_spec(out, []), out)
    summary = train_spec(tabular_spec(out, ["tensorboard"]), out, resume=True)
    assert summary["steps"] == 40
    assert read_tensorboard(out / "tensorboard").Tags()["scalars"]


def test_a_tracker_that_fails_later_is_dropped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    spec = tabular_spec(out, ["tensorboard"])
    with tracking.track(spec, out, "nash") as trackers:
        assert trackers is not None
        trackers.trackers[0]._writer.close()  # the event file writer is gone
        tracking.report_metrics(out, {"step": 1, "loss": 1.0})
        assert trackers.trackers == []
    assert "output.report_to: tensorboard failed" in capsys.readouterr().err


def test_mlflow_honours_a_given_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.resolve().as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    train_spec(tabular_spec(out, ["mlflow"]), out)
    assert not (out / "mlruns").exists()
    _, runs = mlflow_runs(store)
    assert len(runs) == 1
    assert os.environ["MLFLOW_TRACKING_URI"] == store.resolve().as_uri()


def test_mlflow_writes_nothing_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``MLFLOW_TRACKING_URI`` the store is ``RUN/mlruns`` alone: MLflow's own
    defaults in the working directory (``./mlruns``, ``./mlflow.db``) are never created."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    train_spec(tabular_spec(out, ["mlflow"]), out)
    _, runs = mlflow_runs(out / "mlruns")
    assert len(runs) == 1
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_a_tracker_that_cannot_start_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow pointed at a store URI it has no store for: the run stops before anything
    trains, naming the tracker; the trackers opened before it are closed."""
    from nlhf.errors import NLHFError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    out = tmp_path / "run"
    with pytest.raises(NLHFError, match=r"output\.report_to: mlflow could not start"):
        train_spec(tabular_spec(out, ["tensorboard", "mlflow"]), out)
    assert read_metrics(out) == []
    assert tracking.active(out) is None
