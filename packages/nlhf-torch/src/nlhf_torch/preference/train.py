"""``task: preference_model`` on the torch backend (paper §3; run outputs:
:mod:`nlhf.preference.run`, metrics: :mod:`nlhf.preference.metrics`).

Trains a :class:`~nlhf_torch.preference.model.PairwiseModel` (or a Bradley–Terry
reward model) by cross-entropy over both presentation orders,
loss = mean_b −[p_b log σ(z_b) + (1−p_b) log σ(−z_b)], z = v(x,y_w,y_l) − v(x,y_l,y_w)
(:func:`nlhf_torch.kernels.preference_loss`), with AdamW, gradient accumulation and
clipping; ``preference_training.frozen_layers`` fixes the backbone's embeddings and lowest
blocks (:func:`~nlhf_torch.preference.model.freeze_lower_layers`). Held-out metrics: accuracy, log-loss, ECE and the antisymmetry error
max |P(y≻y') + P(y'≻y) − 1| (scored in separate calls). Writes
``spec.resolved.yaml``, ``metrics.jsonl``, ``checkpoints/step-N/`` (model, tokenizer,
``nlhf_preference.json``, ``trainer_state.pt``), ``model/`` and ``summary.json``.
Under ``distributed: {engine: deepspeed}`` (docs/distributed.md) the ranks share each
micro-batch and rank 0 writes the outputs; checkpoints add the engine's state under
``deepspeed/``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from nlhf.data.pairs import Pair, PairData, pair_batch_indices
from nlhf.errors import InputError
from nlhf.precision import check_training_dtype
from nlhf.preference.metrics import evaluate_pairs
from nlhf.preference.run import (
    fit_summary,
    resumable_checkpoint,
    run_preference_training,
)
from nlhf.runio import (
    MetricsWriter,
    atomic_directory,
    checkpoint_dir,
    prune_checkpoints,
)
from nlhf.spec.capabilities import require
from nlhf.training.progress import Progress

from nlhf_torch.kernels import preference_loss
from nlhf_torch.optim import build_optimizer, build_scheduler
from nlhf_torch.plugin import CAPABILITIES
from nlhf_torch.preference.model import (
    PreferenceConfig,
    PreferenceModel,
    build_preference_model,
    freeze_lower_layers,
    load_preference_model,
)

STATE_NAME = "trainer_state.pt"


def _evaluate(model: PreferenceModel, pairs: Sequence[Pair]) -> dict[str, float]:
    """:func:`nlhf.preference.metrics.evaluate_pairs` with ``model`` in eval mode (no
    dropout), its training mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_pairs(model, pairs)
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------ training
def _save_checkpoint(
    output: Path,
    step: int,
    model: PreferenceModel,
    opt: Any,
    sched: Any,
    keep: int | None,
    ds: Any = None,
) -> None:
    """``checkpoints/step-N/`` (model, tokenizer, config, trainer state), atomically; under
    DeepSpeed (``ds``, a :class:`nlhf_torch.distributed.Engine`) the optimizer lives in the
    engine's shards under ``deepspeed/`` and the weights are gathered for rank 0."""
    state: dict[str, Any] = {
        "step": step,
        "optimizer": None if ds is not None else opt.state_dict(),
        "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }

    def write(tmp: Path) -> None:
        model.save(tmp)
        torch.save(state, tmp / STATE_NAME)

    final = checkpoint_dir(output, step)
    if ds is None:
        with atomic_directory(final) as tmp:
            write(tmp)
    else:
        state["distributed"] = {**ds.describe(), "tag": f"step-{step}"}
        ds.save(final, write, f"step-{step}")
    if ds is None or ds.rank == 0:
        prune_checkpoints(output, keep)


def _shares(idx: list[int], parts: int, world: int, rank: int) -> list[tuple[list[int], float]]:
    """This rank's pairs of each of the ``parts`` micro-batches of one optimiser step, with
    the weight w such that DeepSpeed's rank average of Σ_k w·mean(loss over the share)
    equals the single-process mean over ``idx``: w = world·|share|/|idx|. An empty share
    scores the step's first pair with w = 0 (every rank runs the same forwards/backwards)."""
    out = []
    for chunk in torch.tensor(idx).tensor_split(parts):
        share = chunk.tensor_split(world)[rank].tolist()
        out.append((share, world * len(share) / len(idx)) if share else (idx[:1], 0.0))
    return out


def _pair_loss(model: Any, pairs: Sequence[Pair]) -> torch.Tensor:
    """Mean preference loss of ``pairs``; ``model`` is the :class:`PreferenceModel` or the
    DeepSpeed engine wrapping it (its forward is ``pair_scores``; ZeRO-3 needs the engine's)."""
    v_fwd, v_bwd = model(
        [q.prompt for q in pairs], [q.chosen for q in pairs], [q.rejected for q in pairs]
    )
    target = torch.tensor([q.label for q in pairs], dtype=v_fwd.dtype)
    return preference_loss(v_fwd, v_bwd, target)


def fit(
    spec: Any,
    output: Path,
    config: PreferenceConfig,
    data: PairData,
    *,
    resume: bool,
    label: str,
) -> dict[str, Any]:
    """Train one preference model on ``data`` under ``output``; return its summary.

    With ``distributed: {engine: deepspeed}`` every rank scores its contiguous share of
    each micro-batch (:func:`_shares`), DeepSpeed averages the gradients, and rank 0 alone
    writes metrics, checkpoints and ``model/``: the same global batch, the same losses."""
    t0 = time.perf_counter()
    tr = spec.training
    distributed = spec.distributed.engine == "deepspeed"
    found = resumable_checkpoint(output, resume)
    start = 0
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    if resume and found is not None:
        start, path = found
        model = load_preference_model(path, dtype=spec.policy.dtype)
    else:
        model = build_preference_model(
            spec.policy.model,
            config,
            tokenizer_path=spec.policy.tokenizer,
            dtype=spec.policy.dtype,
        )
    pt = spec.preference_training
    freeze_lower_layers(model.model, pt.frozen_layers if pt is not None else 0)
    n = len(data.train)
    per_epoch = math.ceil(n / tr.batch_size)
    total = min(tr.steps, tr.epochs * per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        check_training_dtype(
            params[0].dtype,
            params[0].device.type,
            optimizer=tr.optimizer.name,
            master_weights=distributed,
        )
    opt = build_optimizer(params, tr)
    sched = build_scheduler(opt, tr, total)
    ds: Any = None
    rank = 0
    if distributed:
        from nlhf_torch.distributed import init_engine

        ds = init_engine(spec, model, params, opt, sched)
        opt, sched, rank = ds.optimizer, ds.scheduler, ds.rank
    if start:
        state = torch.load(found[1] / STATE_NAME, weights_only=False)
        if ds is not None:
            ds.load(state.get("distributed"), found[1])
        elif state.get("optimizer") is None:
            raise InputError(
                f"--resume: checkpoint {found[1]} was written by a DeepSpeed run; resume it "
                "with the same `distributed` section and number of processes"
            )
        else:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
    metrics = MetricsWriter(output, truncate_after=start if start else None) if rank == 0 else None

    def log(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.log(record)

    zero_shot = None
    if start == 0 and data.eval:
        zero_shot = _evaluate(model, data.eval)  # every rank: ZeRO-3 forwards are collective
        log({"step": 0, **{f"eval/{k}": v for k, v in zero_shot.items()}})
    model.train()
    bar = Progress(total, label, done=start, enabled=None if rank == 0 else False)
    last_loss = float("nan")
    with bar:
        for step in range(start, total):
            idx = pair_batch_indices(n, tr.batch_size, step, spec.seed, spec.data.shuffle)
            if ds is None:
                loss_sum, norm = _local_step(model, data, idx, tr, params, opt, sched)
            else:
                loss_sum, norm = _deepspeed_step(ds, data, idx, tr)
            done = step + 1
            last_loss = loss_sum
            record: dict[str, Any] = {}
            if done % tr.log_every == 0 or done == total:
                record = {
                    "step": done,
                    "epoch": step // per_epoch,
                    "loss": loss_sum,
                    "grad_norm": norm,
                    "lr": sched.get_last_lr()[0],
                }
                if ds is not None:
                    record["world_size"] = ds.world_size
            if data.eval and tr.eval_every and done % tr.eval_every == 0 and done != total:
                ev = _evaluate(model, data.eval)
                record.update({"step": done, **{f"eval/{k}": v for k, v in ev.items()}})
            if record:
                log(record)
            every = spec.output.checkpoint_every
            if (every and done % every == 0) or done == total:
                _save_checkpoint(output, done, model, opt, sched, spec.output.keep_last, ds)
            bar.update(done, loss=loss_sum)
    final = _evaluate(model, data.eval) if data.eval else {}
    if final:
        log({"step": total, **{f"eval/{k}": v for k, v in final.items()}})
    if metrics is not None:
        metrics.close()
    if ds is None:
        with atomic_directory(output / "model") as tmp:
            model.save(tmp)
    else:
        with ds.gathered():
            if rank == 0:
                with atomic_directory(output / "model") as tmp:
                    model.save(tmp)
        torch.distributed.barrier()
    extra = {"distributed": ds.describe()} if ds is not None else None
    return fit_summary(spec, output, model.config, steps=total, start=start, last_loss=last_loss,
                       final=final, started=t0, extra=extra, zero_shot=zero_shot)  # fmt: skip


def _local_step(
    model: PreferenceModel,
    data: PairData,
    idx: list[int],
    tr: Any,
    params: list[torch.nn.Parameter],
    opt: Any,
    sched: Any,
) -> tuple[float, float]:
    """One single-process optimiser step; returns (loss, pre-clipping gradient norm)."""
    chunks = [c for c in torch.tensor(idx).tensor_split(tr.grad_accum) if len(c)]
    opt.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for chunk in chunks:
        pairs = [data.train[i] for i in chunk.tolist()]
        loss = _pair_loss(model, pairs) * (len(pairs) / len(idx))
        loss.backward()
        loss_sum += float(loss.detach())
    norm = torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm or float("inf"))
    opt.step()
    sched.step()
    return loss_sum, float(norm)


def _deepspeed_step(ds: Any, data: PairData, idx: list[int], tr: Any) -> tuple[float, float | None]:
    """One optimiser step of ``grad_accum`` DeepSpeed micro-steps on this rank's shares;
    returns (global loss, gradient norm)."""
    local = 0.0
    for share, weight in _shares(idx, tr.grad_accum, ds.world_size, ds.rank):
        loss = _pair_loss(ds.engine, [data.train[i] for i in share]) * weight
        ds.engine.backward(loss, scale_wrt_gas=False)
        ds.engine.step()
        local += float(loss.detach()) / ds.world_size
    total = ds.all_reduce([local])[0]
    norm = ds.engine.get_global_grad_norm()
    return total, None if norm is None else float(norm)


def train_preference_model(spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """Run ``task: preference_model`` (see the module docstring); returns the summary. Under
    DeepSpeed only rank 0 writes ``spec.resolved.yaml`` and ``summary.json``."""
    require(spec, "torch", CAPABILITIES)  # e.g. no policy.lora: every parameter trains
    rank = 0
    if spec.distributed.engine == "deepspeed":
        from nlhf_torch.distributed import env_rank

        rank = env_rank()
    return run_preference_training(spec, output, fit=fit, resume=resume, write_outputs=rank == 0)
