"""The Nash training loop of ``task: nash`` on language models, written once for every
backend (paper §7; the algorithm table is :mod:`nlhf.training.algorithms`).

At optimiser step s = 1..``training.steps`` (0-based schedule step s − 1):

1. the ``batch_size`` prompts of the step are ``batch_indices((s − 1)·batch_size, …)``:
   a permutation seeded by (seed, epoch), a pure function of the step, so resume needs no
   prompt state; pairs are generated ``training.generation.batch_size`` prompts at a time
   (default: one micro-batch) and the loss runs in ``grad_accum`` micro-batches of equal
   size;
2. τ_s and β_s come from :func:`nlhf.algorithms.schedules.schedule_value`, the learning
   rate from :func:`nlhf.algorithms.schedules.lr_multiplier`;
3. for each micro-batch the stepper samples (y, y'); the loop decodes the completions
   (special tokens skipped; EOS was looked for in the completion only, TRL #6802), scores
   P(y≻y'|x) on the texts (rlhf_pg: P := r − r̄ + ½, r̄ the mean reward of the pairs
   generated together, over all ranks) and hands P to the stepper's loss;
4. the stepper applies one update; metrics are averaged over micro-batches and ranks into
   one record (:data:`RECORD_KEYS`), logged every ``training.log_every`` steps and at the
   end; a checkpoint every ``output.checkpoint_every`` steps and at the end, pruned to
   ``output.keep_last``; files are written by rank 0 only;
5. the summary (``summary.json``) adds the preference's own ``summary`` hook when it has
   one (e.g. an oracle comparing the policy with its exact Nash equilibrium).

A non-finite loss or gradient norm stops the run before anything is checkpointed. SIGTERM
or SIGINT finishes the current step, writes a checkpoint and exits with 128 + signal; a
second signal exits at once. A preference that gives no usable answer
(:class:`nlhf.errors.PreferenceUnavailableError`, e.g. a server down after its retries, on
any rank) abandons the step, checkpoints the last finished one and re-raises: ``--resume``
continues exactly once the preference answers again.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nlhf.algorithms.schedules import lr_multiplier, schedule_value
from nlhf.data.prompts import batch_indices, load_prompts
from nlhf.data.tokenizer import tokenize_prompts
from nlhf.errors import InputError, NLHFError, PreferenceUnavailableError
from nlhf.runio import (
    MetricsWriter,
    checkpoint_dir,
    prune_checkpoints,
    remove_temporaries,
    write_resolved_spec,
    write_summary,
)
from nlhf.spec.models import RunSpec
from nlhf.tracking import track
from nlhf.training.algorithms import has_reward, rule_for
from nlhf.training.progress import Progress
from nlhf.training.protocols import NashStepper, StepperFactory, Tokens
from nlhf.training.state import TrainerState, resume_point

RECORD_KEYS = (
    "step",
    "loss",
    "kl",
    "len_y",
    "tau",
    "kl_estimator",
    "grad_norm",
    "lr",
    "world_size",
    "generated_tokens",
    "tokens_per_s",
    "generation_seconds",
    "step_seconds",
)
"""Keys of every ``metrics.jsonl`` record; algorithms add theirs: ``beta``,
``preference`` and ``len_y_prime`` (those with an opponent), ``reward`` (rlhf_pg), and the
loss kernel's other metrics (Nash-MD-PG: ``score``, ``kl_surrogate``, ``logprob``; online IPO:
``margin``)."""
TIMING_KEYS = ("tokens_per_s", "step_seconds", "generation_seconds")
SUMMARY_KEYS = (
    "task",
    "backend",
    "algorithm",
    "steps",
    "resumed_from",
    "wall_seconds",
    "seconds_per_step",
    "generated_tokens",
    "tokens_per_s",
    "final",
    "checkpoint",
    "device",
    "decode_path",
    "distributed",
    "oracle",
)
"""Keys of every ``summary.json`` of a Nash LLM run (an oracle's headline scalars
``tv_policy_to_nash``, ``tv_reference_to_nash``, ``max_answer_prob`` join them when its
``summary`` hook reports them)."""
"""Record keys that measure time; left out of the summary's ``final`` (not reproducible)."""


class NonFiniteError(NLHFError):
    """The loss or the gradient norm of a step is not finite."""


def decode(tokenizer: Any, rows: Tokens) -> list[str]:
    """Completion texts of token rows, special tokens skipped."""
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


class NashLoop:
    """One ``task: nash`` run on a backend's :class:`NashStepper`; :meth:`run` writes the
    outputs, :meth:`step` runs one optimiser step and returns its metrics record."""

    def __init__(
        self,
        spec: RunSpec,
        output: Path,
        make_stepper: StepperFactory,
        *,
        backend: str,
        resume: bool = False,
        plugins: Any = None,
    ) -> None:
        if spec.task != "nash" or spec.is_tabular:
            raise InputError(
                "task: the Nash loop runs `task: nash` specs on language models; tabular "
                "preferences run with `nlhf run` on any backend's tabular trajectory"
            )
        self.spec, self.output, self.backend = spec, Path(output), backend
        self.algo = spec.algorithm
        self.rule = rule_for(getattr(self.algo, "name", None))
        self.total = spec.training.steps
        spec.training.micro_batch_size()  # batch_size / grad_accum must divide exactly
        self.start_step, checkpoint, state = 0, None, None
        if resume:
            self.start_step, checkpoint = resume_point(spec, self.output)
            state = TrainerState.read(checkpoint)
            if state.algorithm != self.algo.name:
                raise InputError(
                    f"--resume: checkpoint {checkpoint} was written by algorithm "
                    f"{state.algorithm!r}, but algorithm.name is {self.algo.name!r}"
                )
        self.stepper: NashStepper = make_stepper(spec, checkpoint, plugins)
        self.tokenizer = self.stepper.tokenizer
        if self.tokenizer.eos_token_id is None:
            raise InputError("policy.tokenizer: the tokenizer has no EOS token")
        self.prompts, self.prompt_ids = tokenize_prompts(
            load_prompts(spec.data), self.tokenizer, spec.data, spec.policy.chat_template
        )
        self.preference = self.stepper.preference
        if self.rule.centred_reward and not has_reward(self.preference):
            raise InputError(
                f"algorithm.name: rlhf_pg needs a scalar reward r(x, y); preference "
                f"{spec.preference.name!r} has none (use bradley_terry_reward, or an oracle "
                "with `reward`)"
            )
        tr = spec.training
        self.lr_factor = lr_multiplier(tr.lr_schedule, tr.warmup_steps, self.total)
        self.elapsed = state.elapsed if state else 0.0
        self.generated_tokens = state.generated_tokens if state else 0
        self.last_checkpoint: Path | None = checkpoint
        self.is_main = self.stepper.rank == 0
        self._signal: int | None = None

    # ---------------------------------------------------------------- one step
    def step(self, step: int) -> dict[str, Any]:
        """Optimiser step ``step`` (1-based); returns its metrics record."""
        spec, tr, rule, stepper = self.spec, self.spec.training, self.rule, self.stepper
        t0 = time.perf_counter()
        idx = batch_indices(
            (step - 1) * tr.batch_size,
            tr.batch_size,
            len(self.prompts),
            spec.seed,
            spec.data.shuffle,
        )
        micro, per_call = tr.micro_batch_size(), tr.generation_batch_size()
        tau = schedule_value(getattr(self.algo, "tau", 0.0), step - 1, self.total)  # sppo: none
        beta = rule.beta(self.algo, step - 1, self.total)
        sums: dict[str, float] = {}
        gen_seconds, gen_tokens = 0.0, 0
        for offset in range(0, tr.batch_size, per_call):
            rows = idx[offset : offset + per_call]
            g0 = time.perf_counter()
            samples = stepper.sample(step, offset, [self.prompt_ids[i] for i in rows], beta)
            gen_seconds += time.perf_counter() - g0
            prompts = [self.prompts[rows[r]] for r in samples.rows]
            ys = decode(self.tokenizer, samples.y)
            len_y = np.array([len(t) for t in samples.y], dtype=np.float64)
            len_yp = None
            if rule.centred_reward:  # r̄: the pairs generated together, on every rank
                reward = self._score(self.preference.reward, (prompts, ys), "reward")
                total, count = stepper.all_reduce([float(reward.sum()), float(reward.size)])
                preference = reward - total / count + 0.5
            else:
                assert samples.y_prime is not None
                yps = decode(self.tokenizer, samples.y_prime)
                preference = self._score(self.preference.prob, (prompts, ys, yps), "prob")
                len_yp = np.array([len(t) for t in samples.y_prime], dtype=np.float64)
                report = getattr(self.preference, "pop_metrics", None)  # e.g. a judge's bias
                if callable(report):
                    for key, value in report().items():  # counted once per micro-batch
                        _add(sums, key, float(value) * (len(rows) // micro))
            if samples.generated_tokens is not None:  # sppo: each response in K − 1 pairs
                gen_tokens += samples.generated_tokens
            else:
                gen_tokens += int(len_y.sum() + (len_yp.sum() if len_yp is not None else 0))
            parts = len(rows) // micro  # micro-batches in this generation call
            per_part = len(samples.rows) // parts
            for j in range(parts):
                cut = slice(j * per_part, (j + 1) * per_part)
                part = samples if parts == 1 else stepper.select(samples, cut.start, cut.stop)
                _add(sums, "len_y", float(len_y[cut].mean()))
                if len_yp is not None:
                    _add(sums, "len_y_prime", float(len_yp[cut].mean()))
                if rule.centred_reward:
                    _add(sums, "reward", float(reward[cut].mean()))
                stepper.accumulate(part, preference[cut], tau)
        update = stepper.apply()
        if rule.opponent == "model":
            stepper.update_ema(self.algo.ema_decay)
        for metrics in update.metrics:
            for key, value in metrics.items():
                if not (rule.centred_reward and key == "preference"):  # P is synthetic there
                    _add(sums, key, float(value))
        keys = sorted(sums)
        reduced = stepper.all_reduce([sum(update.losses), gen_tokens, *(sums[k] for k in keys)])
        gen_seconds_max, seconds = stepper.all_reduce(
            [gen_seconds, time.perf_counter() - t0], "max"
        )
        world = stepper.world_size
        parts = tr.grad_accum * world
        loss = reduced[0] / parts
        gen_tokens = int(reduced[1])
        record: dict[str, Any] = {"step": step, "loss": loss}
        record.update({k: v / parts for k, v in zip(keys, reduced[2:], strict=True)})
        record["tau"] = tau
        if rule.needs_y_prime:
            record["beta"] = beta
        record.update(
            kl_estimator=getattr(self.algo, "kl_estimator", None),
            grad_norm=update.grad_norm,
            lr=tr.lr * self.lr_factor(step - 1),
            world_size=world,
            generated_tokens=gen_tokens,
            tokens_per_s=gen_tokens / gen_seconds_max if gen_seconds_max > 0 else None,
            generation_seconds=gen_seconds_max,
            step_seconds=seconds,
        )
        self._check_finite(step, loss, update.grad_norm)
        self.elapsed += seconds
        self.generated_tokens += gen_tokens
        return record

    def _score(
        self, call: Callable[..., Any], texts: tuple[list[str], ...], what: str
    ) -> np.ndarray:
        """``call(*texts)``, the preference's answer for this process's rows, as float64;
        when it is unavailable on any rank, every rank raises
        :class:`PreferenceUnavailableError` at the same point."""
        failure: PreferenceUnavailableError | None = None
        values = None
        try:
            values = call(*texts)
        except PreferenceUnavailableError as err:
            failure = err
        failed = self.stepper.all_reduce([float(failure is not None)], "max")[0]  # all ranks
        if failed and failure is None:
            failure = PreferenceUnavailableError(
                "the preference of another process gave no usable answer (see its log)"
            )
        if failure is not None:
            raise failure
        return _float64(values, len(texts[1]), what)

    def _check_finite(self, step: int, loss: float, grad_norm: float | None) -> None:
        bad = [
            f"{name} {value}"
            for name, value in (("loss", loss), ("gradient norm", grad_norm))
            if value is not None and not math.isfinite(value)
        ]
        if bad:
            pol = self.spec.policy
            raise NonFiniteError(
                f"step {step}: non-finite {', '.join(bad)}; nothing was checkpointed after "
                f"step {self.last_step_saved()}. Likely causes: a learning rate too large "
                f"(training.lr = {self.spec.training.lr}; try 10x smaller or set "
                f"training.max_grad_norm), a low-precision dtype (policy.dtype = {pol.dtype}; "
                "try float32), or a tiny sampling temperature "
                f"(training.generation.temperature = {self.spec.training.generation.temperature})"
            )

    def last_step_saved(self) -> int:
        return int(self.last_checkpoint.name.split("-")[-1]) if self.last_checkpoint else 0

    # ---------------------------------------------------------------- checkpoints
    def checkpoint(self, step: int) -> Path:
        """``checkpoints/step-N/``: the stepper's files plus core's ``trainer_state.json``
        and model card ``README.md`` (:mod:`nlhf.modelcard`), renamed into place atomically;
        then pruned to ``output.keep_last``."""
        state = TrainerState(
            step=step,
            position=step * self.spec.training.batch_size,
            elapsed=self.elapsed,
            generated_tokens=self.generated_tokens,
            algorithm=self.algo.name,
            backend=self.backend,
            distributed=self.stepper.describe(),
            spec=self.spec.model_dump(mode="json"),
        )
        final = checkpoint_dir(self.output, step)
        from nlhf.modelcard import checkpoint_files  # trainer state + README.md model card

        self.stepper.save(
            final, checkpoint_files(state.write, self.spec, self.output, step, self.backend)
        )
        if self.is_main:
            prune_checkpoints(self.output, self.spec.output.keep_last)
        self.last_checkpoint = final
        return final

    # ---------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        """Train from the resume point to ``training.steps``; return the summary (an empty
        dict on ranks > 0, which write no files). Rank 0 reports to the trackers of
        ``output.report_to`` (:mod:`nlhf.tracking`) while it runs."""
        if not self.is_main:
            return self._run()
        with track(self.spec, self.output, "nash", resumed_from=self.start_step or None):
            return self._run()

    def _run(self) -> dict[str, Any]:
        spec = self.spec
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            remove_temporaries(self.output)  # a killed run's half-written checkpoint
            write_resolved_spec(self.output, spec)
        every = spec.output.checkpoint_every
        last: dict[str, Any] = {}
        saved_at = self.start_step if self.last_checkpoint is not None else None
        writer = (
            MetricsWriter(self.output, truncate_after=self.start_step or None)
            if self.is_main
            else contextlib.nullcontext()
        )
        progress = Progress(
            self.total,
            self.algo.name,
            done=self.start_step,
            enabled=None if self.is_main else False,
        )
        with writer as log, progress, self._signals():
            for step in range(self.start_step + 1, self.total + 1):
                sampling = self.stepper.sampling_state()
                try:
                    last = self.step(step)
                except PreferenceUnavailableError as err:
                    err.args = (f"{err}\nnlhf: {self._abandon(step, sampling, saved_at)}",)
                    raise
                if log is not None and (step % spec.training.log_every == 0 or step == self.total):
                    log.log(last)
                progress.advance(loss=last["loss"], kl=last.get("kl"))
                if every is not None and step % every == 0:
                    self.checkpoint(step)
                    saved_at = step
                if self._stop_requested() is not None:
                    return self._stop(step, saved_at == step)
        if saved_at != self.total:
            self.checkpoint(self.total)
        return self._summary(last)

    def _abandon(self, step: int, sampling: Any, saved_at: int | None) -> str:
        """Undo step ``step``, checkpoint step − 1 (unless saved already or nothing ran) and
        say where the run can resume."""
        self.stepper.abandon_step(sampling)
        done = step - 1
        if done > self.start_step and saved_at != done:
            self.checkpoint(done)
        if self.last_checkpoint is None:
            return (
                f"step {step} was abandoned; no step finished, so there is nothing to resume: "
                "rerun once the preference answers again"
            )
        return (
            f"step {step} was abandoned; checkpoint {self.last_checkpoint} holds step {done}; "
            "continue with `nlhf run SPEC --resume` once the preference answers again"
        )

    def _summary(self, last: dict[str, Any]) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "task": "nash",
            "backend": self.backend,
            "algorithm": self.algo.name,
            "steps": self.total,
            "resumed_from": self.start_step or None,
            "wall_seconds": self.elapsed,
            "seconds_per_step": self.elapsed / self.total,
            "generated_tokens": self.generated_tokens,
            "tokens_per_s": self.generated_tokens / self.elapsed if self.elapsed else None,
            "final": {k: v for k, v in last.items() if k not in TIMING_KEYS},
            "checkpoint": str(self.last_checkpoint),
            "device": self.stepper.device,
            "decode_path": self.stepper.decode_path,
            "distributed": self.stepper.describe(),
            "oracle": None,
        }
        hook = getattr(getattr(self.preference, "fn", None), "summary", None)
        if callable(hook):  # every rank calls it: it may run the policy (ZeRO-3 collectives)
            extra = hook(probe=self.stepper, prompts=self.prompts, spec=self.spec)
            summary["oracle"] = extra
            for key in ("tv_policy_to_nash", "tv_reference_to_nash", "max_answer_prob"):
                if isinstance(extra, dict) and isinstance(extra.get(key), float):
                    summary[key] = extra[key]  # headline scalars for `nlhf run`
        if not self.is_main:
            return {}
        write_summary(self.output, summary)
        return summary

    # ---------------------------------------------------------------- signals
    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT: finish the step, checkpoint, exit 128 + signal; a second one
        exits at once. Only the main thread of the main interpreter can install handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                os._exit(128 + signum)
            self._signal = signum
            name = signal.Signals(signum).name
            print(
                f"nlhf: {name} received; finishing the current step and writing a checkpoint "
                "(send it again to exit at once)",
                file=sys.stderr,
                flush=True,
            )

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _stop_requested(self) -> int | None:
        # every process stops at the same step (one process: the max is its own value)
        return int(self.stepper.all_reduce([float(self._signal or 0)], "max")[0]) or None

    def _stop(self, step: int, saved: bool) -> dict[str, Any]:
        signum = self._stop_requested() or signal.SIGTERM
        path = self.last_checkpoint if saved else self.checkpoint(step)
        if self.is_main:
            print(
                f"nlhf: stopped after step {step} by {signal.Signals(signum).name}; checkpoint "
                f"{path}; continue with `nlhf run SPEC --resume`",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(128 + signum)


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def _float64(values: Any, rows: int, what: str) -> np.ndarray:
    """A preference's output as float64 (rows,), or a clear error naming the mismatch."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape != (rows,):
        raise NLHFError(
            f"preference.{what} returned {array.size} values for {rows} responses; a "
            "preference must return one value per (prompt, response) row"
        )
    return array


def nash_loop(
    spec: RunSpec,
    output: Path,
    *,
    backend: str,
    make_stepper: StepperFactory | None = None,
    resume: bool = False,
    plugins: Any = None,
) -> NashLoop:
    """The loop of a ``task: nash`` LLM spec on ``backend``, ready to ``run()`` or
    ``step(n)``, after the capability check ``nlhf validate`` runs
    (:func:`nlhf.spec.capabilities.require`). ``make_stepper`` defaults to the registered
    backend's ``make_nash_stepper``; ``plugins`` overrides the process-wide plugin set."""
    from nlhf.spec.capabilities import require

    require(spec, backend, plugins=plugins)
    if make_stepper is None:
        from nlhf.plugins import get_backend

        make_stepper = get_backend(backend).make_nash_stepper
    return NashLoop(
        spec, Path(output), make_stepper, backend=backend, resume=resume, plugins=plugins
    )


def run_nash(spec: RunSpec, output: Path, *, backend: str, **options: Any) -> dict[str, Any]:
    """Run a ``task: nash`` LLM spec (:func:`nash_loop` with the same options): write
    ``spec.resolved.yaml``, ``metrics.jsonl``, ``summary.json`` and ``checkpoints/step-N/``
    under ``output`` and return the summary."""
    return nash_loop(spec, output, backend=backend, **options).run()
