"""The framework-free pieces of the backends' preference ``fit`` (:mod:`nlhf.preference.run`):
the guard against writing over checkpoints, the progress bar, the summary of one fit."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig
from nlhf.preference.run import fit_summary, resumable_checkpoint


def test_resumable_checkpoint_guards_and_finds_the_latest(tmp_path: Path) -> None:
    assert resumable_checkpoint(tmp_path, resume=False) is None
    assert resumable_checkpoint(tmp_path, resume=True) is None
    for step in (2, 10):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    assert resumable_checkpoint(tmp_path, resume=True) == (10, tmp_path / "checkpoints/step-10")
    with pytest.raises(InputError, match=r"already holds checkpoints \(latest step-10\)"):
        resumable_checkpoint(tmp_path, resume=False)


def test_fit_summary_keys_in_order() -> None:
    spec = SimpleNamespace(policy=SimpleNamespace(model="some/lm"))
    config = PreferenceConfig(kind="bradley_terry", head="classification")
    started = time.perf_counter()
    out = fit_summary(spec, Path("run"), config, steps=5, start=2, last_loss=0.25,
                      final={"accuracy": 1.0}, started=started, extra={"lora": {"r": 4}},
                      zero_shot={"accuracy": 0.5})  # fmt: skip
    assert list(out) == ["kind", "head", "model_path", "initial_model", "steps", "resumed_from",
                         "train_loss_last", "eval", "wall_time_s", "lora", "eval_zero_shot"]  # fmt: skip
    assert out["kind"] == "bradley_terry" and out["head"] == "classification"
    assert out["model_path"] == str(Path("run") / "model") and out["initial_model"] == "some/lm"
    assert (out["steps"], out["resumed_from"], out["train_loss_last"]) == (5, 2, 0.25)
    assert out["eval"] == {"accuracy": 1.0} and out["eval_zero_shot"] == {"accuracy": 0.5}
    assert 0 <= out["wall_time_s"] <= time.perf_counter() - started
    fresh = fit_summary(spec, Path("run"), config, steps=3, start=0, last_loss=0.1, final={},
                        started=started)  # fmt: skip
    assert fresh["resumed_from"] is None and "eval_zero_shot" not in fresh
    done = fit_summary(spec, Path("run"), config, steps=3, start=3, last_loss=float("nan"),
                       final={}, started=started)  # fmt: skip
    assert done["train_loss_last"] is None  # resumed at the end: no step ran
