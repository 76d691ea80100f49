"""The backend-agnostic part of a ``task: preference_model`` run: the
:class:`~nlhf.preference.format.PreferenceConfig` from the spec's
``preference_training``, the pairwise data truncated to the budget the model's template
leaves (:func:`nlhf.data.pairs.load_pairs`), the run outputs around the backend's
``fit`` (``spec.resolved.yaml``, ``summary.json``) and the optional Bradley–Terry
baseline under ``baseline/``; and the framework-free pieces of a backend's ``fit`` (the
guard against writing over checkpoints, the summary of one fit; the progress bar is
:class:`nlhf.training.progress.Progress`). Each
backend supplies its ``fit``; nothing here imports a framework.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from nlhf.data.pairs import PairData, load_pairs
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig
from nlhf.runio import latest_checkpoint, resume_checkpoint, write_resolved_spec, write_summary
from nlhf.spec.models import PreferenceTrainingSpec
from nlhf.tracking import track

LENGTH_SLACK = 4
"""Tokens kept free beyond the template: BPE merges across the pieces of a rendered text
may differ slightly from the pieces' separate token counts."""


class FitFn(Protocol):
    """A backend's trainer of one preference model on ``data`` under ``output``."""

    def __call__(self, spec: Any, output: Path, config: PreferenceConfig, data: PairData, *,
                 resume: bool, label: str) -> dict[str, Any]: ...  # fmt: skip


@dataclass(frozen=True)
class PreferenceRun:
    """What a backend's preference trainer starts from."""

    training: PreferenceTrainingSpec
    config: PreferenceConfig
    data: PairData


def check_preference_task(spec: Any) -> None:
    """The sections every ``task: preference_model`` run needs (the spec model checks them
    too; this guards specs built without validation)."""
    if spec.policy is None:
        raise InputError("policy: `task: preference_model` needs policy.model (the LM to train)")
    if spec.data is None:
        raise InputError("data: `task: preference_model` needs pairwise data (a data section)")


def prepare_preference_run(
    spec: Any,
    *,
    load_tokenizer: Callable[[str], Any] | None = None,
    text_overhead: Callable[[Any, PreferenceConfig], int] | None = None,
) -> PreferenceRun:
    """The model config from ``preference_training`` and the pairs of ``spec.data``,
    truncated so that prompt + responses fit ``max_length`` minus the tokens the model adds
    (``text_overhead`` of the tokenizer of the model being trained, + :data:`LENGTH_SLACK`);
    pairwise models truncate the two responses jointly (one judge text). The tokenizer
    loader and the overhead default to :mod:`nlhf.data.tokenizer`'s (every backend's)."""
    from nlhf.data import tokenizer as tokenizers

    if load_tokenizer is None:
        load_tokenizer = partial(tokenizers.load_tokenizer, scoring=True)
    text_overhead = text_overhead or tokenizers.text_overhead
    check_preference_task(spec)
    pt = spec.preference_training or PreferenceTrainingSpec()
    config = PreferenceConfig(
        kind=pt.kind,
        head=pt.head or "lm",
        template=pt.template,
        answer_tokens=tuple(pt.answer_tokens),
        max_length=spec.data.max_length,
        max_prompt_length=spec.data.max_prompt_length,
        truncation=spec.data.truncation,
        pooling=pt.pooling,
    )
    tokenizer = load_tokenizer(spec.policy.tokenizer or spec.policy.model)
    data = load_pairs(
        spec.data,
        seed=spec.seed,
        tokenizer=tokenizer,
        reserve=text_overhead(tokenizer, config) + LENGTH_SLACK,
        joint=config.kind == "pairwise",
    )
    return PreferenceRun(training=pt, config=config, data=data)


def run_preference_training(
    spec: Any,
    output: Path,
    *,
    fit: FitFn,
    load_tokenizer: Callable[[str], Any] | None = None,
    text_overhead: Callable[[Any, PreferenceConfig], int] | None = None,
    resume: bool = False,
    backend: str | None = None,
    write_outputs: bool = True,
) -> dict[str, Any]:
    """Run ``task: preference_model``: prepare (:func:`prepare_preference_run`), ``fit`` the
    model under ``output`` and, with ``preference_training.compare_baseline``, a
    Bradley–Terry classification baseline under ``output/baseline``; returns the summary
    (``task``, ``backend`` when given, ``data``, the fit's keys, ``baseline``,
    ``wall_time_s``). ``write_outputs=False`` (a non-zero rank) leaves
    ``spec.resolved.yaml`` and ``summary.json`` unwritten."""
    t0 = time.perf_counter()
    check_preference_task(spec)
    output = Path(output)
    if resume:  # before anything is written: the spec must be the run's
        resume_checkpoint(spec, output)
    if write_outputs:
        output.mkdir(parents=True, exist_ok=True)
        write_resolved_spec(output, spec)
    tracker = track(spec, output, "preference_model") if write_outputs else nullcontext()
    with tracker:  # output.report_to: the fit's metrics.jsonl records reach it
        run = prepare_preference_run(
            spec, load_tokenizer=load_tokenizer, text_overhead=text_overhead
        )
        summary: dict[str, Any] = {"task": "preference_model"}
        if backend is not None:
            summary["backend"] = backend
        summary["data"] = run.data.report
        summary.update(
            fit(spec, output, run.config, run.data, resume=resume, label=run.config.kind)
        )
        if run.training.compare_baseline:
            bt = PreferenceConfig(
                kind="bradley_terry",
                head="classification",
                max_length=run.config.max_length,
                max_prompt_length=run.config.max_prompt_length,
                truncation=run.config.truncation,
                pooling=run.config.pooling,
            )
            summary["baseline"] = fit(
                spec, output / "baseline", bt, run.data, resume=resume, label="bradley_terry"
            )
        summary["wall_time_s"] = time.perf_counter() - t0
        if write_outputs:
            write_summary(output, summary)
    return summary


# ------------------------------------------------------------- pieces of a backend's fit
def resumable_checkpoint(output: Path, resume: bool) -> tuple[int, Path] | None:
    """The latest checkpoint under ``output`` as ``(step, path)`` (None when there is
    none); a run that does not resume refuses to write over checkpoints."""
    found = latest_checkpoint(output)
    if found is not None and not resume:
        raise InputError(
            f"output.dir: {output} already holds checkpoints (latest {found[1].name}); "
            "resume with --resume, delete them with --overwrite, or choose a new output.dir"
        )
    return found


def fit_summary(
    spec: Any,
    output: Path,
    config: PreferenceConfig,
    *,
    steps: int,
    start: int,
    last_loss: float,
    final: dict[str, Any],
    started: float,
    extra: dict[str, Any] | None = None,
    zero_shot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary of one fit: what was trained (``config``, ``output/model``, the initial
    model), ``steps``, where it resumed from, the last training loss (None when no step
    ran), the final held-out metrics and the wall time since ``started``
    (``time.perf_counter()``); then a backend's ``extra`` keys and the zero-shot metrics."""
    summary: dict[str, Any] = {
        "kind": config.kind,
        "head": config.head,
        "model_path": str(output / "model"),
        "initial_model": spec.policy.model,
        "steps": steps,
        "resumed_from": start or None,
        "train_loss_last": last_loss if steps > start else None,
        "eval": final,
        "wall_time_s": time.perf_counter() - started,
    }
    summary.update(extra or {})
    if zero_shot is not None:
        summary["eval_zero_shot"] = zero_shot
    return summary
