"""The torch training loop of ``task: nash`` (issue 3, parts 4 and 6; paper §7).

One loop, the algorithm chosen by the spec:

============== ============================ ==========================================
algorithm      opponent y'                  loss per row (P = P(y≻y'|x), no gradient)
============== ============================ ==========================================
nash_md_pg     π̃_β ∝ π_θ^(1−β) μ^β (tokens) −(P − ½)·log π_θ(y|x) + τ·KL
self_play      π_θ (β = 0)                   same
best_response  μ (β = 1)                     same
nash_ema_pg    EMA θ̄ ← d·θ̄ + (1−d)·θ        same
rlhf_pg        — (no y')                     −(r − mean_batch r)·log π_θ(y|x) + τ·KL
online_ipo     π̃_β                          (h(y_w, y_l) − 1/(2τ))², h = log π/μ(y_w) − log π/μ(y_l)
============== ============================ ==========================================

y ~ π_θ and y' are drawn by :func:`nlhf_torch.generation.generate_pairs` (KV caches, one
prefill) from a seeded ``torch.Generator``; P comes from the *decoded completions*
(special tokens skipped, EOS looked for in the completion only, TRL #6802). Log-probs use
the sampling temperature. β and τ follow :func:`nlhf.algorithms.schedules.schedule_value`
at the integer step (0-based: step 1 uses the schedule's start). ``training.batch_size``
prompts per optimiser step are split into ``grad_accum`` micro-batches; each micro-batch
loss is divided by ``grad_accum``. The prompt order is a permutation seeded by
(seed, epoch), so it is a pure function of the step and needs no state to resume.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nlhf.algorithms.schedules import schedule_value
from nlhf.data.prompts import batch_indices, load_prompts
from nlhf.data.tokenizer import tokenize_prompts
from nlhf.errors import InputError, NLHFError
from nlhf.runio import (
    MetricsWriter,
    checkpoint_dir,
    prune_checkpoints,
    write_resolved_spec,
    write_summary,
)

from nlhf_torch import kernels
from nlhf_torch.checkpoint import (
    load_trainer_state,
    resume_point,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_checkpoint_files,
)
from nlhf_torch.distributed import describe_run
from nlhf_torch.generation import generate_pairs, sequence_logits
from nlhf_torch.models import Models, load_models
from nlhf_torch.preferences import build_preference, has_reward

OPPONENT = {
    "nash_md_pg": "mixture",
    "self_play": "policy",
    "best_response": "reference",
    "nash_ema_pg": "model",
    "rlhf_pg": "policy",
    "online_ipo": "mixture",
}
TIMING_KEYS = ("tokens_per_s", "step_seconds", "generation_seconds")


# ------------------------------------------------------------------------- helpers
def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier after ``s`` optimiser steps: linear warmup min(1, (s+1)/warmup), then
    ``constant`` 1, ``linear`` 1 − u or ``cosine`` ½(1 + cos πu), u = (s − warmup)/(total − warmup)."""

    def fn(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        u = min(max(s - warmup, 0) / max(total - warmup, 1), 1.0)
        if schedule == "linear":
            return 1.0 - u
        return 0.5 * (1.0 + math.cos(math.pi * u))

    return fn


def build_optimizer(params: list[torch.nn.Parameter], training: Any) -> torch.optim.Optimizer:
    opt = training.optimizer
    if opt.name == "adamw":
        return torch.optim.AdamW(
            params, lr=training.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
    if opt.name == "adam":
        return torch.optim.Adam(
            params, lr=training.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
    return torch.optim.SGD(params, lr=training.lr, weight_decay=opt.weight_decay)


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[Any, Any]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def decode(tokenizer: Any, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Completion texts: only the sampled tokens (mask 1), special tokens skipped."""
    rows = [t[m.bool()].tolist() for t, m in zip(tokens.cpu(), mask.cpu(), strict=True)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ̄ ← d·θ̄ + (1 − d)·θ (Nash-EMA-PG, paper §7)."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def _check_spec(spec: Any) -> None:
    if spec.task != "nash":
        raise NLHFError(f"train_nash runs `task: nash` specs, not {spec.task!r}")
    if spec.is_tabular:
        raise NLHFError("tabular preferences run on the numpy backend: use --backend numpy")
    if spec.algorithm is None or spec.algorithm.name not in OPPONENT:
        name = getattr(spec.algorithm, "name", None)
        raise InputError(
            f"algorithm.name: {name!r} is not an LLM algorithm; use one of {', '.join(OPPONENT)}"
        )
    if spec.distributed.engine not in ("none", "deepspeed"):
        raise NLHFError(
            f"distributed.engine: {spec.distributed.engine!r} is not supported by the "
            f"single-process trainer yet; remove the distributed section"
        )
    tr = spec.training
    tr.micro_batch_size()  # batch_size / grad_accum must divide exactly
    if tr.generation.top_k:
        raise InputError("training.generation.top_k: the torch trainer samples the full vocabulary")


# ---------------------------------------------------------------------------- loop
class NashTrainer:
    """State of one run; :func:`train_nash` is the entry point."""

    def __init__(self, spec: Any, output: Path, *, resume: bool, plugins: Any = None) -> None:
        _check_spec(spec)
        self.spec = spec
        self.output = Path(output)
        self.algo = spec.algorithm
        self.total = spec.training.steps
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.start_step = 0
        state = None
        ckpt_path = None
        if resume:
            self.start_step, ckpt_path = resume_point(self.output)
            state = load_trainer_state(ckpt_path)
        self.models: Models = load_models(spec, policy_path=ckpt_path)
        self.policy = self.models.policy.to(self.device)
        self.reference = self.models.reference.to(self.device)
        self.tokenizer = self.models.tokenizer
        self.preference = build_preference(spec, self.device, plugins=plugins)
        if self.algo.name == "rlhf_pg" and not has_reward(self.preference):
            raise InputError(
                f"algorithm.name: rlhf_pg needs a scalar reward; preference "
                f"{spec.preference.name!r} has none (use bradley_terry_reward or an oracle "
                f"with `reward`)"
            )
        raw = load_prompts(spec.data)
        self.prompts, self.prompt_ids = tokenize_prompts(
            raw, self.tokenizer, spec.data, spec.policy.chat_template
        )
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise InputError("policy.tokenizer: the tokenizer has no EOS token")
        self.eos_id, self.pad_id = eos, self.tokenizer.pad_token_id
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, spec.training)
        tr = spec.training
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(tr.lr_schedule, tr.warmup_steps, self.total)
        )
        self.ema = None
        if self.algo.name == "nash_ema_pg":
            self.ema = copy.deepcopy(self.policy).eval().requires_grad_(False)
        # seeds are set after the models load, so loading cannot shift the streams
        random.seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        torch.manual_seed(spec.seed)
        self.generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        self.elapsed = 0.0
        self.generated_tokens = 0
        self.last_checkpoint: Path | None = ckpt_path
        self.rank, self.world_size = 0, 1
        self.train_model: Any = self.policy  # the module whose forward is trained
        self.engine: Any = None
        self.ds: Any = None  # nlhf_torch.distributed.Engine under DeepSpeed
        if spec.distributed.engine == "deepspeed":
            self._init_deepspeed()
        if state is not None:
            self._restore(state, ckpt_path)

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from checkpoint ``path``: optimizer and schedule (DeepSpeed: the
        engine's sharded state under ``deepspeed/``), EMA, RNG streams and run totals."""
        saved = state.get("distributed")
        if self.engine is None:
            if saved is not None or state.get("optimizer") is None:
                raise NLHFError(
                    f"--resume: checkpoint {path} was written by a DeepSpeed run "
                    f"({describe_run(saved)}); resume it with the same `distributed` section "
                    "and number of processes"
                )
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.ds.load(saved, path)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], self.generator)
        self.elapsed = float(state.get("elapsed", 0.0))
        self.generated_tokens = int(state.get("generated_tokens", 0))

    def _init_deepspeed(self) -> None:
        """Wrap the policy, optimizer and schedule in a DeepSpeed engine
        (:func:`nlhf_torch.distributed.init_engine`)."""
        from nlhf_torch.distributed import init_engine

        self.ds = init_engine(self.spec, self.policy, self.params, self.optimizer, self.scheduler)
        self.engine, self.optimizer, self.scheduler = (
            self.ds.engine,
            self.ds.optimizer,
            self.ds.scheduler,
        )
        self.rank, self.world_size = self.ds.rank, self.ds.world_size
        self.policy = self.ds.module
        self.train_model = self.engine

    @torch.no_grad()
    def _ema_update(self) -> None:
        """EMA step under DeepSpeed: the EMA copy is full on every rank; under ZeRO-3 each
        policy parameter is gathered (one at a time) for its update, so all ranks agree."""
        decay = self.algo.ema_decay
        for p_ema, p in zip(self.ema.parameters(), self.policy.parameters(), strict=True):
            with self.ds.gathered([p]):
                p_ema.mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def _all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        return self.ds.all_reduce(values, op)

    def _all_finished(self, local: bool) -> bool:
        return self._all_reduce([0.0 if local else 1.0])[0] == 0.0

    # ----------------------------------------------------------------- one step
    def _micro_batch(
        self, idx: list[int], step0: int, shard: slice | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss and metrics of the prompts ``idx``; ``shard`` (DeepSpeed) keeps this rank's
        rows of the global micro-batch, padded and sampled as the single-process run would."""
        spec, algo = self.spec, self.algo
        gen = spec.training.generation
        temp = gen.temperature
        tau = schedule_value(algo.tau, step0, self.total)
        beta = {"self_play": 0.0, "best_response": 1.0}.get(
            algo.name, schedule_value(getattr(algo, "beta", 0.0), step0, self.total)
        )
        input_ids, attn = left_pad([self.prompt_ids[i] for i in idx], self.pad_id, self.device)
        prompts = [self.prompts[i] for i in idx]
        sampling: dict[str, Any] = {"generator": self.generator}
        if shard is not None:
            input_ids, attn, prompts = input_ids[shard], attn[shard], prompts[shard]
            sampling = self._shard_uniforms(len(idx), shard, gen.max_new_tokens)
            gen_state = sampling.pop("state")
        t0 = time.perf_counter()
        pairs = generate_pairs(
            self.policy,
            self.reference,
            input_ids,
            attn,
            beta=beta,
            max_new_tokens=gen.max_new_tokens,
            temperature=temp,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            opponent=OPPONENT[algo.name],
            opponent_model=self.ema,
            return_reference_logits=True,
            **sampling,
        )
        if shard is not None:
            self._advance_generator(gen_state, len(idx), pairs.y.shape[1])
        gen_seconds = time.perf_counter() - t0
        ys = decode(self.tokenizer, pairs.y, pairs.y_mask)
        logits = sequence_logits(self.train_model, input_ids, attn, pairs.y, pairs.y_mask)
        ref_logits = pairs.reference_logits
        metrics: dict[str, float] = {}
        if algo.name == "rlhf_pg":
            reward = self.preference.reward(prompts, ys).to(self.device)
            mean_reward = reward.mean()
            if shard is not None:  # the global batch mean, as in the single-process run
                total, count = self._all_reduce([float(reward.sum()), float(reward.numel())])
                mean_reward = torch.as_tensor(total / count, dtype=reward.dtype)
            advantage = reward - mean_reward
            # −(r − r̄)·log π(y) + τ·KL  ==  nash_md_pg_loss with P := r − r̄ + ½
            loss, km = kernels.nash_md_pg_loss(
                logits,
                ref_logits,
                pairs.y,
                pairs.y_mask,
                advantage + 0.5,
                tau,
                temp,
                algo.kl_estimator,
            )
            km.pop("preference")
            metrics["reward"] = float(reward.mean())
            gen_tokens = int(pairs.y_mask.sum())
        else:
            y_primes = decode(self.tokenizer, pairs.y_prime, pairs.y_prime_mask)
            pref = self.preference.prob(prompts, ys, y_primes)
            pref = torch.as_tensor(pref, dtype=torch.float64).to(self.device)
            if algo.name == "online_ipo":
                loss, km = self._ipo_loss(
                    input_ids, attn, pairs, logits, ref_logits, pref, algo.tau, temp
                )
            else:
                loss, km = kernels.nash_md_pg_loss(
                    logits,
                    ref_logits,
                    pairs.y,
                    pairs.y_mask,
                    pref,
                    tau,
                    temp,
                    algo.kl_estimator,
                )
            metrics["len_y_prime"] = float(pairs.y_prime_mask.sum(-1).double().mean())
            gen_tokens = int(pairs.y_mask.sum() + pairs.y_prime_mask.sum())
        metrics.update({k: float(v) for k, v in km.items()})
        metrics["len_y"] = float(pairs.y_mask.sum(-1).double().mean())
        metrics["tau"] = tau
        if algo.name not in ("rlhf_pg",):
            metrics["beta"] = beta
        metrics["generation_seconds"] = gen_seconds
        metrics["generated_tokens"] = gen_tokens
        return loss, metrics

    def _ipo_loss(
        self,
        input_ids: torch.Tensor,
        attn: torch.Tensor,
        pairs: Any,
        logits: torch.Tensor,
        ref_logits: torch.Tensor,
        pref: torch.Tensor,
        tau: float,
        temp: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Online IPO (:func:`nlhf_torch.kernels.online_ipo_loss`) after the forward passes
        over y' (policy, with gradient; reference, without)."""
        logits_p = sequence_logits(
            self.train_model, input_ids, attn, pairs.y_prime, pairs.y_prime_mask
        )
        with torch.no_grad():
            ref_p = sequence_logits(
                self.reference, input_ids, attn, pairs.y_prime, pairs.y_prime_mask
            )
        return kernels.online_ipo_loss(
            logits, ref_logits, pairs.y, pairs.y_mask, logits_p, ref_p, pairs.y_prime,
            pairs.y_prime_mask, pref, tau, temp,
        )  # fmt: skip

    def _shard_uniforms(self, rows: int, shard: slice, max_new_tokens: int) -> dict[str, Any]:
        """This rank's uniforms: the (T, 2·rows) draws the single-process run would make for
        the global micro-batch, columns y[shard] and y'[shard]."""
        state = self.generator.get_state()
        u = torch.rand(max_new_tokens, 2 * rows, dtype=torch.float64, generator=self.generator)
        cols = list(range(rows))[shard]
        cols = cols + [rows + c for c in cols]
        return {
            "uniforms": u[:, cols].T.contiguous().to(self.device),
            "all_finished": self._all_finished,
            "state": state,
        }

    def _advance_generator(self, state: torch.Tensor, rows: int, steps: int) -> None:
        """Leave the generator where the single-process run would: ``steps`` draws of 2·rows
        (every rank decodes the same number of steps, see ``all_finished``)."""
        self.generator.set_state(state)
        torch.rand(steps, 2 * rows, dtype=torch.float64, generator=self.generator)

    def _deepspeed_step(self, step: int) -> dict[str, Any]:
        """One optimiser step on this rank's contiguous share of the global batch; DeepSpeed
        averages the gradients of the per-rank means (equal shares: the global mean), divides
        by ``grad_accum`` and steps the optimizer and schedule on the last micro-batch."""
        tr = self.spec.training
        t0 = time.perf_counter()
        idx, micro = self._step_prompts(step)
        per_rank = micro // self.world_size
        shard = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        lr = self.scheduler.get_last_lr()[0]
        sums: dict[str, float] = {}
        total_loss = 0.0
        for k in range(tr.grad_accum):
            loss, m = self._micro_batch(idx[k * micro : (k + 1) * micro], step - 1, shard)
            self.engine.backward(loss)
            self.engine.step()
            total_loss += float(loss.detach()) / tr.grad_accum
            for key, value in m.items():
                sums[key] = sums.get(key, 0.0) + value
        if self.ema is not None:
            self._ema_update()
        gen_seconds = self._all_reduce([sums.pop("generation_seconds")], "max")[0]
        keys = sorted(sums)
        reduced = self._all_reduce([total_loss, *(sums[k] for k in keys)])
        total_loss = reduced[0] / self.world_size
        sums = dict(zip(keys, reduced[1:], strict=True))
        gen_tokens = int(sums.pop("generated_tokens"))
        seconds = self._all_reduce([time.perf_counter() - t0], "max")[0]
        norm = self.engine.get_global_grad_norm() if tr.max_grad_norm is not None else None
        record = self._record(
            step,
            loss=total_loss,
            means={k: v / (tr.grad_accum * self.world_size) for k, v in sums.items()},
            grad_norm=None if norm is None else float(norm),
            lr=lr,
            gen_tokens=gen_tokens,
            gen_seconds=gen_seconds,
            seconds=seconds,
        )
        record["world_size"] = self.world_size
        return record

    def step(self, step: int) -> dict[str, Any]:
        """One optimiser step (1-based ``step``); returns its metrics record."""
        if self.engine is not None:
            return self._deepspeed_step(step)
        tr = self.spec.training
        t0 = time.perf_counter()
        idx, micro = self._step_prompts(step)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        total_loss = 0.0
        for k in range(tr.grad_accum):
            loss, m = self._micro_batch(idx[k * micro : (k + 1) * micro], step - 1)
            (loss / tr.grad_accum).backward()
            total_loss += float(loss.detach()) / tr.grad_accum
            for key, value in m.items():
                sums[key] = sums.get(key, 0.0) + value
        grad_norm = None
        if tr.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, tr.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            ema_update(self.ema, self.policy, self.algo.ema_decay)
        seconds = time.perf_counter() - t0
        gen_tokens = int(sums.pop("generated_tokens"))
        gen_seconds = sums.pop("generation_seconds")
        return self._record(
            step,
            loss=total_loss,
            means={k: v / tr.grad_accum for k, v in sums.items()},
            grad_norm=grad_norm,
            lr=lr,
            gen_tokens=gen_tokens,
            gen_seconds=gen_seconds,
            seconds=seconds,
        )

    def _step_prompts(self, step: int) -> tuple[list[int], int]:
        """Prompt indices of optimiser step ``step`` (1-based) and the micro-batch size."""
        tr = self.spec.training
        idx = batch_indices(
            (step - 1) * tr.batch_size,
            tr.batch_size,
            len(self.prompts),
            self.spec.seed,
            self.spec.data.shuffle,
        )
        return idx, tr.micro_batch_size()

    def _record(
        self,
        step: int,
        *,
        loss: float,
        means: dict[str, float],
        grad_norm: float | None,
        lr: float,
        gen_tokens: int,
        gen_seconds: float,
        seconds: float,
    ) -> dict[str, Any]:
        """The metrics record of one step; also advances the run's time and token totals."""
        self.elapsed += seconds
        self.generated_tokens += gen_tokens
        record: dict[str, Any] = {"step": step, "loss": loss, **means}
        record["kl_estimator"] = getattr(self.algo, "kl_estimator", None)
        record["grad_norm"] = grad_norm
        record["lr"] = lr
        record["generated_tokens"] = gen_tokens
        record["tokens_per_s"] = gen_tokens / gen_seconds if gen_seconds > 0 else None
        record["generation_seconds"] = gen_seconds
        record["step_seconds"] = seconds
        return record

    # ----------------------------------------------------------------- the run
    def _trainer_state(self, step: int, *, optimizer: dict[str, Any] | None) -> dict[str, Any]:
        """Everything besides the weights that resume needs after optimiser step ``step``."""
        return {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "position": step * self.spec.training.batch_size,
            "elapsed": self.elapsed,
            "generated_tokens": self.generated_tokens,
            "algorithm": self.algo.name,
        }

    def _deepspeed_checkpoint(self, step: int) -> Path:
        """``checkpoints/step-N/`` of a DeepSpeed run (:meth:`Engine.save`): DeepSpeed's
        shards under ``deepspeed/`` plus consolidated safetensors, tokenizer and trainer
        state, renamed into place atomically; rank 0 then prunes old checkpoints."""
        tag = f"step-{step}"
        state = self._trainer_state(step, optimizer=None)
        state["distributed"] = {**self.ds.describe(), "tag": tag}
        final = checkpoint_dir(self.output, step)

        def write(tmp: Path) -> None:
            write_checkpoint_files(
                tmp, step, policy=self.policy, tokenizer=self.tokenizer, state=state
            )

        self.ds.save(final, write, tag)
        if self.rank == 0:
            prune_checkpoints(self.output, self.spec.output.keep_last)
        self.last_checkpoint = final
        return final

    def checkpoint(self, step: int) -> Path:
        if self.engine is not None:
            return self._deepspeed_checkpoint(step)
        state = self._trainer_state(step, optimizer=self.optimizer.state_dict())
        self.last_checkpoint = save_checkpoint(
            self.output,
            step,
            policy=self.policy,
            tokenizer=self.tokenizer,
            trainer_state=state,
            keep_last=self.spec.output.keep_last,
        )
        return self.last_checkpoint

    def run(self) -> dict[str, Any]:
        spec = self.spec
        if self.rank != 0:
            return self._run_worker()
        self.output.mkdir(parents=True, exist_ok=True)
        write_resolved_spec(self.output, spec)
        every = spec.output.checkpoint_every
        last: dict[str, Any] = {}
        saved_at = self.start_step if self.last_checkpoint is not None else None
        with (
            MetricsWriter(
                self.output, truncate_after=self.start_step if self.start_step else None
            ) as writer,
            _progress(self.total, self.start_step, spec.algorithm.name) as advance,
        ):
            for step in range(self.start_step + 1, self.total + 1):
                record = self.step(step)
                last = record
                if step % spec.training.log_every == 0 or step == self.total:
                    writer.log(record)
                advance(record)
                if every is not None and step % every == 0:
                    self.checkpoint(step)
                    saved_at = step
        if saved_at != self.total:
            self.checkpoint(self.total)
        summary: dict[str, Any] = {
            "task": "nash",
            "backend": "torch",
            "algorithm": self.algo.name,
            "steps": self.total,
            "resumed_from": self.start_step or None,
            "wall_seconds": self.elapsed,
            "seconds_per_step": self.elapsed / self.total,
            "generated_tokens": self.generated_tokens,
            "tokens_per_s": self.generated_tokens / self.elapsed if self.elapsed else None,
            "final": {k: v for k, v in last.items() if k not in TIMING_KEYS},
            "checkpoint": str(self.last_checkpoint),
            "device": str(self.device),
        }
        if self.engine is not None:
            summary["distributed"] = self.ds.describe()
        extra = getattr(getattr(self.preference, "fn", None), "summary", None)
        if callable(extra):
            summary["oracle"] = extra(
                policy=self.policy,
                reference=self.reference,
                tokenizer=self.tokenizer,
                prompts=self.prompts,
                spec=spec,
            )
            for key in ("tv_policy_to_nash", "tv_reference_to_nash", "max_answer_prob"):
                if isinstance(summary["oracle"].get(key), float):
                    summary[key] = summary["oracle"][key]  # headline scalars for `nlhf run`
        write_summary(self.output, summary)
        return summary

    def _run_worker(self) -> dict[str, Any]:
        """Ranks > 0 of a DeepSpeed run: the same collective steps and checkpoints, no
        files, metrics or progress bar of their own."""
        every = self.spec.output.checkpoint_every
        saved_at = self.start_step if self.last_checkpoint is not None else None  # as rank 0
        for step in range(self.start_step + 1, self.total + 1):
            self.step(step)
            if every is not None and step % every == 0:
                self.checkpoint(step)
                saved_at = step
        if saved_at != self.total:
            self.checkpoint(self.total)
        extra = getattr(getattr(self.preference, "fn", None), "summary", None)
        if callable(extra):  # may run the policy: keep ZeRO-3's collectives in step
            extra(
                policy=self.policy,
                reference=self.reference,
                tokenizer=self.tokenizer,
                prompts=self.prompts,
                spec=self.spec,
            )
        return {}


class _progress:
    """A rich progress bar on a TTY; a no-op otherwise."""

    def __init__(self, total: int, done: int, label: str) -> None:
        self.total, self.done, self.label = total, done, label
        self.bar: Any = None

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        if sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(
                self.label, total=self.total, completed=self.done, info=""
            )

        def advance(record: dict[str, Any]) -> None:
            if self.bar is not None:
                info = f"loss {record['loss']:.4f} kl {record.get('kl', float('nan')):.4f}"
                self.bar.update(self.task, advance=1, info=info)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def train_nash(
    spec: Any, output: Path, *, resume: bool = False, plugins: Any = None
) -> dict[str, Any]:
    """Run a ``task: nash`` spec with the torch backend; write ``spec.resolved.yaml``,
    ``metrics.jsonl``, ``summary.json`` and ``checkpoints/step-N/`` under ``output`` and
    return the summary. ``resume=True`` continues bit-exactly from the latest checkpoint.
    ``plugins`` overrides the process-wide plugin set (tests)."""
    from nlhf_torch.quickstart import maybe_prepare

    maybe_prepare(spec)
    return NashTrainer(spec, Path(output), resume=resume, plugins=plugins).run()
