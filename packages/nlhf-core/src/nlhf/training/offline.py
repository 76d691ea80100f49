"""``task: offline``: DPO and IPO on fixed preference pairs, written once for every backend
(docs/algorithms.md, "Offline DPO and IPO").

With h = log π_θ/μ(y_w|x) − log π_θ/μ(y_l|x) (sequence log-probs at
``training.generation.temperature``, the temperature the policy is later sampled at):

- ``dpo`` (Rafailov et al. 2023, eq. 7): loss = mean −log σ(τ·h) (τ is DPO's β);
- ``ipo`` (Azar et al. 2023): loss = mean (h − 1/(2τ))².

The run:

1. the pairs (x, y_w, y_l) come from ``data`` through :func:`nlhf.data.pairs.load_pairs`
   (any pairwise format: ``preference``, ``hh_rlhf``, ``auto``; ``eval_fraction`` holds
   some out) and are tokenized once (:func:`tokenize_pairs`): the prompt as the Nash loop
   tokenizes it (chat template included), each response followed by EOS, as a sampled
   completion ends;
2. the reference log-probs log μ(y_w|x), log μ(y_l|x) are computed once per pair and cached
   in memory and in ``reference_logprobs.json`` of the run directory, keyed by the
   reference model's identity (path and weight files), the data file's sha256, the token
   ids and the backend (:func:`reference_cache_key`), so a resumed run computes none;
3. optimiser step s = 1..total takes the pairs :func:`nlhf.data.pairs.pair_batch_indices`
   gives it (epoch e visits the pairs in a permutation seeded by (seed, e); resume needs no
   data state), in ``grad_accum`` micro-batches, each micro-batch's mean loss weighted by
   its share of the batch (the last batch of an epoch may be shorter);
   total = min(``training.steps``, ``training.epochs`` × ⌈pairs / batch_size⌉);
4. logging, checkpoint cadence, ``keep_last``, signals and the metrics truncation on resume
   are the Nash loop's (:class:`OfflineLoop` is a :class:`~nlhf.training.loop.NashLoop`
   with its own step and summary); checkpoints hold the same files as a Nash run's, so
   ``nlhf eval`` takes an offline run directory as a policy;
5. at the end the held-out pairs (if any) are scored with the float64 NumPy loss
   (:mod:`nlhf.algorithms.numpy_oracle`) on the backend's log-probs.

A backend supplies an :class:`OfflineStepper` (torch: :mod:`nlhf_torch.offline`, jax:
:mod:`nlhf_jax.offline`) through ``Backend.make_offline_stepper(spec, checkpoint, total)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from nlhf.algorithms.schedules import lr_multiplier
from nlhf.data.pairs import Pair, PairData, load_pairs, pair_batch_indices
from nlhf.errors import InputError
from nlhf.runio import atomic_write_text, write_summary
from nlhf.spec.models import RunSpec
from nlhf.tracking import track
from nlhf.training.loop import NashLoop
from nlhf.training.protocols import Tokens, Update
from nlhf.training.state import TrainerState, resume_point

CACHE_FILE = "reference_logprobs.json"
"""The reference log-prob cache of a run directory (:func:`load_reference_cache`)."""
LENGTH_SLACK = 4
"""Tokens kept free beyond the template and EOS: BPE merges across the pieces of a
truncated text may differ slightly from the pieces' separate token counts."""
RECORD_KEYS = (
    "step",
    "epoch",
    "loss",
    "margin",
    "accuracy",
    "chosen_ratio",
    "rejected_ratio",
    "tau",
    "grad_norm",
    "lr",
    "pairs",
    "step_seconds",
)
"""Keys of every ``metrics.jsonl`` record of an offline run: ``margin`` (mean h),
``accuracy`` (mean 1[h > 0]), ``chosen_ratio`` / ``rejected_ratio`` (mean log π/μ of y_w,
y_l), ``epoch`` (passes over the pairs so far, fractional), ``pairs`` (in this step)."""
TIMING_KEYS = ("step_seconds",)
SUMMARY_KEYS = (
    "task",
    "backend",
    "algorithm",
    "tau",
    "steps",
    "epochs",
    "resumed_from",
    "wall_seconds",
    "seconds_per_step",
    "data",
    "final",
    "eval",
    "reference_cache",
    "checkpoint",
    "device",
    "distributed",
)
"""Keys of every ``summary.json`` of an offline run. ``eval``: the loss and metrics of the
held-out pairs under the final policy (None without held-out pairs); ``reference_cache``:
its file, key and whether this run computed it (``computed``) or read it."""

_MEMORY: OrderedDict[str, ReferenceLogprobs] = OrderedDict()
_MEMORY_ENTRIES = 4


# ------------------------------------------------------------------------ pair tokens
@dataclass(frozen=True)
class PairTokens:
    """Token ids of pairs: ``prompt`` (chat template applied when the policy uses one),
    ``chosen`` and ``rejected`` (each ending with EOS unless cut to ``data.max_length``)."""

    prompt: Tokens
    chosen: Tokens
    rejected: Tokens

    def __len__(self) -> int:
        return len(self.prompt)

    def take(self, rows: Sequence[int]) -> PairTokens:
        return PairTokens(
            [self.prompt[i] for i in rows],
            [self.chosen[i] for i in rows],
            [self.rejected[i] for i in rows],
        )

    def digest(self) -> str:
        """sha256 of the token ids (what the reference scores)."""
        text = json.dumps([self.prompt, self.chosen, self.rejected], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReferenceLogprobs:
    """log μ(y_w|x) and log μ(y_l|x), float64 (pairs,), of the train and held-out pairs."""

    chosen: np.ndarray
    rejected: np.ndarray
    eval_chosen: np.ndarray
    eval_rejected: np.ndarray

    def take(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        index = np.asarray(rows, dtype=np.int64)
        return self.chosen[index], self.rejected[index]


def _prompt_overhead(tokenizer: Any, chat_template: bool | None) -> int:
    from nlhf.data.tokenizer import format_prompt, uses_chat_template

    text = format_prompt(tokenizer, "", chat_template)
    templated = uses_chat_template(tokenizer, chat_template)
    return len(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def tokenize_pairs(
    pairs: Sequence[Pair], tokenizer: Any, data: Any, chat_template: bool | None
) -> PairTokens:
    """Token ids of ``pairs``: the prompt rendered and tokenized as the Nash loop does
    (:func:`nlhf.data.tokenizer.format_prompt`; its last ``data.max_prompt_length``
    tokens; an empty one, e.g. cut away by ``data.truncation: left`` to fit a long
    response, becomes the BOS token, else EOS, so the first response token has a context),
    each response without special tokens followed by EOS, cut on the right so that
    prompt + response ≤ ``data.max_length`` (a cut response keeps no EOS: it did not end
    there)."""
    from nlhf.data.tokenizer import format_prompt, uses_chat_template

    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("policy.tokenizer: the tokenizer has no EOS token")
    templated = uses_chat_template(tokenizer, chat_template)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    prompts, chosen, rejected = [], [], []
    for pair in pairs:
        text = format_prompt(tokenizer, pair.prompt, chat_template)
        prompt = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        prompt = prompt[-data.max_prompt_length :] or [start]
        room = max(1, data.max_length - len(prompt))
        ids = []
        for response in (pair.chosen, pair.rejected):
            tokens = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
            ids.append(tokens[:room])
        prompts.append(list(prompt))
        chosen.append(ids[0])
        rejected.append(ids[1])
    return PairTokens(prompts, chosen, rejected)


def hard_labels(pairs: Sequence[Pair], where: str) -> list[Pair]:
    """The pairs with y_w first: label 1 keeps the order, label 0 swaps it; a soft label
    is refused (DPO and IPO train on hard preferences)."""
    out = []
    soft = [p.label for p in pairs if p.label not in (0.0, 1.0)]
    if soft:
        raise InputError(
            f"data: {len(soft)} pair(s) of {where} have a soft label (e.g. {soft[0]}); "
            "`task: offline` trains on hard preferences: label 1 (chosen ≻ rejected) or 0. "
            "Round the labels, or drop the label column"
        )
    for p in pairs:
        out.append(p if p.label == 1.0 else Pair(p.prompt, p.rejected, p.chosen, 1.0))
    return out


def load_offline_pairs(spec: RunSpec, tokenizer: Any) -> tuple[PairData, PairTokens, PairTokens]:
    """The train and held-out pairs of ``spec.data`` (y_w first, :func:`hard_labels`),
    truncated to the budget the prompt template and EOS leave, and their token ids."""
    data = spec.data
    assert data is not None and spec.policy is not None
    local = Path(data.path).expanduser()
    if local.is_file() and local.stat().st_size == 0:
        raise InputError(f"data.path: {data.path} is empty (no pairs); add pairs to it")
    reserve = _prompt_overhead(tokenizer, spec.policy.chat_template) + 1 + LENGTH_SLACK
    pairs = load_pairs(data, seed=spec.seed, tokenizer=tokenizer, reserve=reserve, joint=False)
    train = hard_labels(pairs.train, data.path)
    held = hard_labels(pairs.eval, data.path)
    pairs = PairData(train, held, pairs.report)
    chat = spec.policy.chat_template
    return (
        pairs,
        tokenize_pairs(train, tokenizer, data, chat),
        tokenize_pairs(held, tokenizer, data, chat),
    )


# ------------------------------------------------------------------------ the stepper
@runtime_checkable
class OfflineStepper(Protocol):
    """A backend's side of :class:`OfflineLoop`, built by ``make(spec, checkpoint, total)``
    (``total``: optimiser steps of the whole run, for the learning-rate schedule); it loads
    the policy (from ``checkpoint`` on resume, with its optimizer state), the reference μ
    (``reference.model``, else the initial policy) and the tokenizer."""

    rank: int
    world_size: int
    device: str
    tokenizer: Any

    def pair_logprobs(
        self, pairs: PairTokens, *, model: Literal["policy", "reference"]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(log π(y_w|x), log π(y_l|x)) of ``model``, float64 (rows,), at the spec's
        generation temperature, without gradient."""
        ...

    def accumulate(
        self,
        pairs: PairTokens,
        reference: tuple[np.ndarray, np.ndarray],
        tau: float,
        weight: float,
    ) -> None:
        """Add ``weight`` × ∇ of the algorithm's loss kernel (``dpo_loss`` or
        ``offline_ipo_loss``) on this micro-batch, with the cached reference log-probs."""
        ...

    def apply(self) -> Update:
        """Clip, take one optimiser and schedule step; the micro-batches' losses, kernel
        metrics and the gradient norm before clipping."""
        ...

    def all_reduce(
        self, values: Sequence[float], op: Literal["sum", "max"] = "sum"
    ) -> list[float]: ...

    def describe(self) -> dict[str, Any] | None: ...

    def sampling_state(self) -> None:
        """The Nash loop's seam for undoing a step's sampling: offline steps sample
        nothing, so None."""
        ...

    def abandon_step(self, state: None) -> None:
        """The Nash loop's undo seam (a step that lost its preference): never needed here."""
        ...

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        """Checkpoint directory ``final`` as a Nash stepper writes it (weights the
        backend's models and transformers load, tokenizer, optimizer blobs), plus
        ``write_core(tmp)``, atomically."""
        ...


OfflineStepperFactory = Callable[[RunSpec, "Path | None", int], OfflineStepper]
"""``make(spec, checkpoint_or_None, total_steps) -> OfflineStepper``."""


# ------------------------------------------------------------------- reference cache
def _file_sha256(path: Path) -> str | None:
    """sha256 of a local data file (of a directory: of its files' names and contents);
    None for a hub dataset."""
    path = Path(path).expanduser()
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def reference_identity(spec: RunSpec) -> dict[str, Any]:
    """What makes the reference μ the same model: its path or hub id, dtype and (local
    directories) the size and mtime of each weight file."""
    from nlhf.evaluation.llm import fingerprint

    assert spec.policy is not None
    name = spec.reference.model or spec.policy.model
    path = Path(name).expanduser()
    return {
        "model": name,
        "dtype": spec.reference.dtype or spec.policy.dtype,
        "weights": fingerprint(path) if path.is_dir() else None,
    }


def reference_cache_key(
    spec: RunSpec, backend: str, train: PairTokens, held: PairTokens
) -> dict[str, Any]:
    """The cache record's identity: the reference (:func:`reference_identity`), the data
    file's sha256, the sha256 of the token ids scored, the temperature and the backend;
    ``key`` is the sha256 of the rest."""
    assert spec.data is not None
    fields = {
        "reference": reference_identity(spec),
        "data_sha256": _file_sha256(Path(spec.data.path)),
        "tokens_sha256": hashlib.sha256((train.digest() + held.digest()).encode()).hexdigest(),
        "temperature": spec.training.generation.temperature,
        "backend": backend,
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return {"key": hashlib.sha256(text.encode()).hexdigest(), **fields}


def load_reference_cache(output: Path, key: str) -> tuple[ReferenceLogprobs | None, bool]:
    """The cached log-probs of ``key`` and whether ``output/CACHE_FILE`` holds them: from
    that file when its key matches, else from memory (another run of this process), else
    None."""
    on_disk = _read_cache_file(output, key)
    if on_disk is not None:
        _remember(key, on_disk)
        return on_disk, True
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key], False
    return None, False


def _read_cache_file(output: Path, key: str) -> ReferenceLogprobs | None:
    path = Path(output) / CACHE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    try:
        cached = ReferenceLogprobs(
            *(np.asarray(data[f.name], dtype=np.float64) for f in fields(ReferenceLogprobs))
        )
    except (KeyError, TypeError, ValueError):
        return None
    return cached


def write_reference_cache(
    output: Path, record: dict[str, Any], logprobs: ReferenceLogprobs
) -> Path:
    """``output/CACHE_FILE``: ``record`` (key and identity) and the float64 log-probs as
    JSON numbers (Python's shortest round-trip repr: read back bit-exact), atomically."""
    data = dict(record)
    for field in fields(ReferenceLogprobs):
        data[field.name] = [float(v) for v in getattr(logprobs, field.name)]
    path = Path(output) / CACHE_FILE
    atomic_write_text(path, json.dumps(data) + "\n")
    _remember(record["key"], logprobs)
    return path


def _remember(key: str, logprobs: ReferenceLogprobs) -> None:
    _MEMORY[key] = logprobs
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)


def score_pairs(
    stepper: OfflineStepper,
    pairs: PairTokens,
    model: Literal["policy", "reference"],
    batch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(log π(y_w|x), log π(y_l|x)) of every pair under ``model``, ``batch`` pairs at a time."""
    chosen, rejected = [np.zeros(0)], [np.zeros(0)]
    for start in range(0, len(pairs), batch):
        c, r = stepper.pair_logprobs(
            pairs.take(range(start, min(start + batch, len(pairs)))), model=model
        )
        chosen.append(np.asarray(c, dtype=np.float64))
        rejected.append(np.asarray(r, dtype=np.float64))
    return np.concatenate(chosen), np.concatenate(rejected)


def pair_loss(
    name: str,
    policy: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    tau: float,
) -> dict[str, float]:
    """The float64 loss of algorithm ``name`` and its metrics, from the NumPy oracle."""
    from nlhf.algorithms import numpy_oracle

    kernel = numpy_oracle.dpo_loss if name == "dpo" else numpy_oracle.offline_ipo_loss
    loss, metrics = kernel(policy[0], policy[1], reference[0], reference[1], tau)
    return {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}


# ------------------------------------------------------------------------ the loop
class OfflineLoop(NashLoop):
    """One ``task: offline`` run on a backend's :class:`OfflineStepper`. The loop itself
    (:meth:`NashLoop._run`: logging and checkpoint cadence, ``keep_last``, SIGTERM/SIGINT,
    ``metrics.jsonl`` truncation on resume, the progress bar) is the Nash loop's; the step,
    the set-up and the summary are offline."""

    def __init__(
        self,
        spec: RunSpec,
        output: Path,
        make_stepper: OfflineStepperFactory,
        *,
        backend: str,
        resume: bool = False,
    ) -> None:
        check_offline_task(spec)
        assert spec.algorithm is not None and spec.data is not None
        self.spec, self.output, self.backend = spec, Path(output), backend
        self.algo = spec.algorithm
        self.tau = float(self.algo.tau)  # type: ignore[union-attr]
        tr = spec.training
        self.micro = tr.micro_batch_size()  # batch_size / grad_accum must divide exactly
        self.start_step, checkpoint, state = 0, None, None
        if resume:
            self.start_step, checkpoint = resume_point(spec, self.output)
            state = TrainerState.read(checkpoint)
            if state.algorithm != self.algo.name:
                raise InputError(
                    f"--resume: checkpoint {checkpoint} was written by algorithm "
                    f"{state.algorithm!r}, but algorithm.name is {self.algo.name!r}"
                )
        tokenizer = _load_tokenizer(spec)
        self.pairs, self.train_tokens, self.eval_tokens = load_offline_pairs(spec, tokenizer)
        n = len(self.train_tokens)
        self.steps_per_epoch = math.ceil(n / tr.batch_size)
        self.total = min(tr.steps, tr.epochs * self.steps_per_epoch)
        if self.start_step > self.total:
            raise InputError(
                f"--resume: the checkpoint is at step {self.start_step}, past this run's "
                f"{self.total} steps (training.epochs {tr.epochs} × {self.steps_per_epoch} "
                f"steps per epoch over {n} pairs): has {spec.data.path} lost pairs since the "
                "checkpoint was written? Resume with the pairs it was trained on"
            )
        self.lr_factor = lr_multiplier(tr.lr_schedule, tr.warmup_steps, self.total)
        self.stepper: OfflineStepper = make_stepper(spec, checkpoint, self.total)  # type: ignore[assignment]
        self.tokenizer = self.stepper.tokenizer
        self.preference = None
        self.elapsed = state.elapsed if state else 0.0
        self.generated_tokens = 0
        self.last_checkpoint: Path | None = checkpoint
        self.is_main = self.stepper.rank == 0
        self._signal: int | None = None
        self.cache_record = reference_cache_key(spec, backend, self.train_tokens, self.eval_tokens)
        self.reference, self.cache_computed = self._reference_logprobs()

    def _reference_logprobs(self) -> tuple[ReferenceLogprobs, bool]:
        """The reference log-probs of every pair and whether this run computed them: read
        from the cache (:func:`load_reference_cache`), else scored now; written to the run
        directory unless its file holds them already."""
        cached, on_disk = load_reference_cache(self.output, self.cache_record["key"])
        computed = cached is None
        if cached is not None:
            logprobs = cached
        else:
            chosen, rejected = score_pairs(self.stepper, self.train_tokens, "reference", self.micro)
            eval_c, eval_r = score_pairs(self.stepper, self.eval_tokens, "reference", self.micro)
            logprobs = ReferenceLogprobs(chosen, rejected, eval_c, eval_r)
        if self.is_main and not on_disk:
            self.output.mkdir(parents=True, exist_ok=True)
            write_reference_cache(self.output, self.cache_record, logprobs)
        return logprobs, computed

    def batch_rows(self, step: int) -> list[int]:
        """The training pairs of optimiser step ``step`` (1-based)."""
        data = self.spec.data
        assert data is not None
        n = len(self.train_tokens)
        return pair_batch_indices(
            n, self.spec.training.batch_size, step - 1, self.spec.seed, data.shuffle
        )

    def step(self, step: int) -> dict[str, Any]:
        """Optimiser step ``step`` (1-based); returns its metrics record."""
        tr, stepper = self.spec.training, self.stepper
        t0 = time.perf_counter()
        rows = self.batch_rows(step)
        for start in range(0, len(rows), self.micro):
            part = rows[start : start + self.micro]
            stepper.accumulate(
                self.train_tokens.take(part),
                self.reference.take(part),
                self.tau,
                len(part) / len(rows),
            )
        update = stepper.apply()
        weights = [
            len(rows[s : s + self.micro]) / len(rows) for s in range(0, len(rows), self.micro)
        ]
        loss = sum(w * v for w, v in zip(weights, update.losses, strict=True))
        record: dict[str, Any] = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": loss,
        }
        for key in sorted({k for m in update.metrics for k in m}):
            record[key] = sum(w * m[key] for w, m in zip(weights, update.metrics, strict=True))
        seconds = time.perf_counter() - t0
        record.update(
            tau=self.tau,
            grad_norm=update.grad_norm,
            lr=tr.lr * self.lr_factor(step - 1),
            pairs=len(rows),
            step_seconds=seconds,
        )
        self._check_finite(step, loss, update.grad_norm)
        self.elapsed += seconds
        return record

    def evaluate(self) -> dict[str, Any] | None:
        """Loss and metrics of the held-out pairs under the current policy (float64 NumPy
        loss on the backend's log-probs), or None without held-out pairs."""
        if not len(self.eval_tokens):
            return None
        policy = score_pairs(self.stepper, self.eval_tokens, "policy", self.micro)
        reference = (self.reference.eval_chosen, self.reference.eval_rejected)
        return {
            "pairs": len(self.eval_tokens),
            **pair_loss(self.algo.name, policy, reference, self.tau),
        }

    def run(self) -> dict[str, Any]:
        """Train from the resume point to the last step; return the summary. Reports to the
        trackers of ``output.report_to`` while it runs."""
        with track(self.spec, self.output, "offline", resumed_from=self.start_step or None):
            return self._run()

    def _summary(self, last: dict[str, Any]) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "task": "offline",
            "backend": self.backend,
            "algorithm": self.algo.name,
            "tau": self.tau,
            "steps": self.total,
            "epochs": self.total / self.steps_per_epoch,
            "resumed_from": self.start_step or None,
            "wall_seconds": self.elapsed,
            "seconds_per_step": self.elapsed / self.total,
            "data": self.pairs.report,
            "final": {k: v for k, v in last.items() if k not in TIMING_KEYS},
            "eval": self.evaluate(),
            "reference_cache": {
                "file": str(self.output / CACHE_FILE),
                "key": self.cache_record["key"],
                "computed": self.cache_computed,
            },
            "checkpoint": str(self.last_checkpoint),
            "device": self.stepper.device,
            "distributed": self.stepper.describe(),
        }
        if self.is_main:
            write_summary(self.output, summary)
        return summary


def _load_tokenizer(spec: RunSpec) -> Any:
    from nlhf.data.tokenizer import load_tokenizer

    pol = spec.policy
    assert pol is not None
    return load_tokenizer(
        pol.tokenizer or pol.model,
        "policy.tokenizer" if pol.tokenizer else "policy.model",
        trust_remote_code=pol.trust_remote_code,
    )


def check_offline_task(spec: RunSpec) -> None:
    """The sections a ``task: offline`` run needs (the spec model checks them too; this
    guards specs built without validation)."""
    from nlhf.algorithms.params import OFFLINE_ALGORITHMS

    if spec.task != "offline":
        raise InputError(f"task: the offline loop runs `task: offline` specs, not {spec.task!r}")
    if spec.algorithm is None or spec.algorithm.name not in OFFLINE_ALGORITHMS:
        raise InputError(
            f"algorithm: `task: offline` needs algorithm.name {' or '.join(OFFLINE_ALGORITHMS)}"
        )
    if spec.policy is None or spec.data is None:
        raise InputError("policy, data: `task: offline` needs policy.model and pairs in data")


def offline_loop(
    spec: RunSpec,
    output: Path,
    *,
    backend: str,
    make_stepper: OfflineStepperFactory | None = None,
    resume: bool = False,
) -> OfflineLoop:
    """The loop of a ``task: offline`` spec on ``backend``, ready to ``run()`` or
    ``step(n)``, after the capability check ``nlhf validate`` runs.
    ``make_stepper`` defaults to the registered backend's ``make_offline_stepper``."""
    from nlhf.spec.capabilities import require

    require(spec, backend)
    if make_stepper is None:
        from nlhf.plugins import get_backend

        make_stepper = get_backend(backend).make_offline_stepper
    return OfflineLoop(spec, Path(output), make_stepper, backend=backend, resume=resume)


def run_offline(spec: RunSpec, output: Path, *, backend: str, **options: Any) -> dict[str, Any]:
    """Run a ``task: offline`` spec (:func:`offline_loop` with the same options): write
    ``spec.resolved.yaml``, ``reference_logprobs.json``, ``metrics.jsonl``,
    ``summary.json`` and ``checkpoints/step-N/`` under ``output``; return the summary."""
    return offline_loop(spec, output, backend=backend, **options).run()
