"""``task: preference_model`` on the jax backend (paper §3), on the run set-up of
:mod:`nlhf.preference.run` every backend shares: the same spec fields, data split and truncation
(:func:`nlhf.data.pairs.load_pairs`), batches (:func:`nlhf.data.pairs.pair_batch_indices`),
loss, optimiser, metrics (:mod:`nlhf.preference.metrics`) and run outputs
(:mod:`nlhf.preference.run`).

Loss (both presentation orders, soft labels allowed), z = v(x,y_w,y_l) − v(x,y_l,y_w):
loss = mean_b −[p_b log σ(z_b) + (1−p_b) log σ(−z_b)]
(:func:`nlhf_jax.kernels.preference_loss`); ``grad_accum`` splits a batch into chunks
whose gradients are summed with weights |chunk|/|batch|; the optax chain of
:func:`nlhf_jax.optim.build_optimizer` (torch's clipping, AdamW and LR schedule). Held-out
metrics: accuracy, log-loss, ECE (Naeini et al. 2015) and the antisymmetry error.

Outputs: ``spec.resolved.yaml``, ``metrics.jsonl``, ``checkpoints/step-N/`` (the model
as a Hugging Face directory — ``config.json``, ``model.safetensors``, tokenizer,
``nlhf_preference.json`` — plus ``optimizer.safetensors`` and ``trainer_state.json``),
``model/`` and ``summary.json``. Model directories load in transformers and in the torch
backend's preference classes. Under ``distributed: {engine: jax, mesh, rules}`` the
parameters (and the optimiser state) are placed by the mesh rules and each gradient chunk
is sharded over the mesh's data axes (:mod:`nlhf_jax.sharding`, as the jax nash trainer):
the same batches and, up to float rounding, the same losses and parameters as one device.

``policy.lora`` (:mod:`nlhf_jax.lora`): peft-convention adapters on the target layers;
the optimiser sees only their A, B and, for a ``classification`` head, the score head
(:attr:`PreferenceModel.trainable`). Model directories stay plain Hugging Face ones (the
merged weights W + s·B A, which every consumer loads) and add the peft adapter under
``adapter/``; ``--resume`` rebuilds the model from ``policy.model``, that adapter and the
saved score head, bit for bit. (The torch trainer ignores ``policy.lora`` and trains every
parameter.) Not supported (clear error): ``distributed: {engine: deepspeed}``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from nlhf.algorithms.schedules import lr_multiplier
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

from nlhf_jax.kernels import preference_loss
from nlhf_jax.optim import build_optimizer
from nlhf_jax.plugin import CAPABILITIES
from nlhf_jax.preference.model import (
    ADAPTER_DIR,
    PreferenceConfig,
    PreferenceModel,
    _bucket,
    build_preference_model,
    load_lora_checkpoint,
    load_preference_model,
)

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"


# ------------------------------------------------------------------------ training
class PairBatch:
    """Arrays of one gradient chunk: the 2m texts [fwd..., bwd...] padded (R rows) and,
    padded to M = 2^⌈log₂ m⌉ pairs, the rows of v_fwd / v_bwd, targets and weights
    (w = 1/|batch| for real pairs, 0 for filler), so that
    Σ_b w_b·CE(z_b, p_b) = (|chunk|/|batch|)·mean_chunk CE (torch's scaling).
    ``multiple`` (the data-parallel ways of a mesh) rounds R and M up to multiples of it
    with filler rows (one attended pad token, read at 0) and filler pairs (w = 0)."""

    def __init__(
        self, model: PreferenceModel, pairs: Sequence[Pair], batch_total: int, multiple: int = 1
    ) -> None:
        m = len(pairs)
        self.ids, self.mask, self.index = model.encode_pairs(
            [q.prompt for q in pairs], [q.chosen for q in pairs], [q.rejected for q in pairs]
        )
        extra = -len(self.ids) % multiple
        if extra:
            width = self.ids.shape[1]
            filler = np.zeros((extra, width), np.int32)
            self.ids = np.concatenate([self.ids, filler + model.tokenizer.pad_token_id])
            self.mask = np.concatenate([self.mask, filler])
            self.mask[-extra:, 0] = 1
            self.index = np.concatenate([self.index, np.zeros(extra, np.int32)])
        size = _bucket(m, 1)
        size += -size % multiple
        self.fwd = np.zeros(size, np.int32)
        self.bwd = np.zeros(size, np.int32)
        self.fwd[:m] = np.arange(m)
        self.bwd[:m] = np.arange(m, 2 * m)
        self.target = np.zeros(size, np.float32)
        self.target[:m] = [q.label for q in pairs]
        self.weight = np.zeros(size, np.float32)
        self.weight[:m] = 1.0 / batch_total

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.ids, self.mask, self.index, self.fwd, self.bwd, self.target, self.weight)


def chunk_loss(
    model: PreferenceModel,
    state: Any,
    ids: Any,
    mask: Any,
    index: Any,
    fwd: Any,
    bwd: Any,
    target: Any,
    weight: Any,
    key: jax.Array | None = None,
) -> jax.Array:
    """Σ_b w_b·CE_b with CE_b = −[p_b log σ(z_b) + (1−p_b) log σ(−z_b)]: equal to
    (|chunk|/|batch|)·preference_loss over the chunk (``key``: LoRA dropout masks)."""
    v = model.values(state, ids, mask, index, key)
    ce = jax.vmap(preference_loss)(v[fwd], v[bwd], target)
    return jnp.sum(weight * ce)


class Stepper:
    """Jitted gradient of :func:`chunk_loss` with respect to the trained parameters
    (:attr:`PreferenceModel.trainable`: all of them, or with LoRA the adapters and a score
    head) and the optax update of those alone; with a ``mesh`` each chunk's arrays are
    sharded on their first dimension over its data axes. LoRA dropout (p > 0) draws the
    masks of chunk k of optimiser step t from fold_in(fold_in(key(seed), t), k), so a
    resumed run draws the same ones."""

    def __init__(
        self,
        model: PreferenceModel,
        tx: optax.GradientTransformation,
        mesh: Any = None,
        *,
        seed: int = 0,
    ) -> None:
        self.model, self.tx, self.mesh, self.seed = model, tx, mesh, seed
        cfg = model.lora_config
        self.dropout = cfg is not None and cfg.dropout > 0

        def loss(params: Any, frozen: Any, key: Any, *arrays: Any) -> jax.Array:
            return chunk_loss(model, nnx.merge_state(params, frozen), *arrays, key=key)

        self._grad = jax.jit(jax.value_and_grad(loss))
        self._apply = jax.jit(self._update)

    def params(self) -> Any:
        """The trained parameters (what the optimiser state is built on)."""
        return self.model.split_trainable()[0]

    def _update(self, params: Any, opt_state: Any, grads: Any) -> tuple[Any, Any, jax.Array]:
        norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, norm

    def step(
        self, opt_state: Any, chunks: Sequence[Sequence[Pair]], batch_total: int, step: int = 0
    ) -> tuple[Any, float, float]:
        """Optimiser step ``step`` over ``chunks`` (gradient accumulation); updates
        ``model.state``; returns (opt_state, loss, pre-clip gradient norm)."""
        params, frozen = self.model.split_trainable()
        grads, loss = None, 0.0
        for k, pairs in enumerate(chunks):
            key = None
            if self.dropout:
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), step), k)
            arrays = self._arrays(pairs, batch_total)
            value, g = self._grad(params, frozen, key, *arrays)
            loss += float(value)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        params, opt_state, norm = self._apply(params, opt_state, grads)
        self.model.state = nnx.merge_state(params, frozen)
        return opt_state, loss, float(norm)

    def _arrays(self, pairs: Sequence[Pair], batch_total: int) -> tuple[Any, ...]:
        if self.mesh is None:
            return PairBatch(self.model, pairs, batch_total).arrays()
        from nlhf_jax.sharding import batch_ways, shard_batch

        batch = PairBatch(self.model, pairs, batch_total, batch_ways(self.mesh))
        return shard_batch(self.mesh, *batch.arrays())


def _leaves_to_numpy(tree: Any) -> dict[str, np.ndarray]:
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _leaves_from_numpy(like: Any, tensors: dict[str, np.ndarray], where: Path) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    if len(tensors) != len(leaves):
        raise InputError(f"--resume: {where} holds {len(tensors)} optimizer arrays, this run "
                         f"expects {len(leaves)}; was the optimizer changed?")  # fmt: skip
    new = [
        jnp.asarray(tensors[f"{i:05d}"], dtype=jnp.asarray(x).dtype) for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, new)


def _save_checkpoint(
    output: Path, step: int, model: PreferenceModel, opt_state: Any, keep: int | None
) -> Path:
    from safetensors.numpy import save_file

    final = checkpoint_dir(output, step)
    with atomic_directory(final) as tmp:
        model.save(tmp)
        save_file(_leaves_to_numpy(opt_state), tmp / OPTIMIZER_NAME)
        (tmp / STATE_NAME).write_text(json.dumps({"step": step}) + "\n")
    prune_checkpoints(output, keep)
    return final


def fit(
    spec: Any,
    output: Path,
    config: PreferenceConfig,
    data: PairData,
    *,
    resume: bool,
    label: str,
) -> dict[str, Any]:
    """Train one preference model on ``data`` under ``output``; return its summary."""
    t0 = time.perf_counter()
    tr = spec.training
    found = resumable_checkpoint(output, resume)
    start = 0
    pol = spec.policy
    if resume and found is not None:
        start, path = found
        if pol.lora is not None:
            model = load_lora_checkpoint(path, pol.model, pol.lora, dtype=pol.dtype)
        elif (path / ADAPTER_DIR).exists():
            raise InputError(f"--resume: {path} was written by a policy.lora run; resume it "
                             "with the same policy.lora")  # fmt: skip
        else:
            model = load_preference_model(path, dtype=pol.dtype, field="--resume")
    else:
        model = build_preference_model(pol.model, config, tokenizer_path=pol.tokenizer,
                                       dtype=pol.dtype, seed=spec.seed,
                                       lora_spec=pol.lora)  # fmt: skip
    mesh = None
    if spec.distributed.engine == "jax":
        from nlhf_jax.sharding import make_mesh, shard_state

        mesh = make_mesh(spec.distributed.mesh)
        model.state = shard_state(model.state, mesh, spec.distributed.rules)
    n = len(data.train)
    per_epoch = math.ceil(n / tr.batch_size)
    total = min(tr.steps, tr.epochs * per_epoch)
    tx = build_optimizer(tr, total)
    stepper = Stepper(model, tx, mesh, seed=spec.seed)
    leaves = jax.tree.leaves(stepper.params())
    if leaves:
        check_training_dtype(leaves[0].dtype, jax.default_backend(), optimizer=tr.optimizer.name)
    opt_state = tx.init(stepper.params())
    if start:
        from safetensors.numpy import load_file

        loaded = _leaves_from_numpy(opt_state, load_file(found[1] / OPTIMIZER_NAME), found[1])
        if mesh is not None:
            from nlhf_jax.sharding import place_like

            loaded = place_like(loaded, opt_state)
        opt_state = loaded
    lr_mult = lr_multiplier(tr.lr_schedule, tr.warmup_steps, total)
    metrics = MetricsWriter(output, truncate_after=start if start else None)
    zero_shot = None
    if start == 0 and data.eval:
        zero_shot = evaluate_pairs(model, data.eval)
        metrics.log({"step": 0, **{f"eval/{k}": v for k, v in zero_shot.items()}})
    bar = Progress(total, label, done=start)
    last_loss = float("nan")
    with bar:
        for step in range(start, total):
            idx = pair_batch_indices(n, tr.batch_size, step, spec.seed, spec.data.shuffle)
            chunks = [
                [data.train[i] for i in c] for c in np.array_split(idx, tr.grad_accum) if len(c)
            ]
            opt_state, loss, norm = stepper.step(opt_state, chunks, len(idx), step)
            done = step + 1
            last_loss = loss
            record: dict[str, Any] = {}
            if done % tr.log_every == 0 or done == total:
                record = {"step": done, "epoch": step // per_epoch, "loss": loss,
                          "grad_norm": norm, "lr": tr.lr * float(lr_mult(done))}  # fmt: skip
            if data.eval and tr.eval_every and done % tr.eval_every == 0 and done != total:
                ev = evaluate_pairs(model, data.eval)
                record.update({"step": done, **{f"eval/{k}": v for k, v in ev.items()}})
            if record:
                metrics.log(record)
            every = spec.output.checkpoint_every
            if (every and done % every == 0) or done == total:
                _save_checkpoint(output, done, model, opt_state, spec.output.keep_last)
            bar.update(done, loss=loss)
    final = evaluate_pairs(model, data.eval) if data.eval else {}
    if final:
        metrics.log({"step": total, **{f"eval/{k}": v for k, v in final.items()}})
    metrics.close()
    with atomic_directory(output / "model") as tmp:
        model.save(tmp)
    extra: dict[str, Any] = {}
    if model.lora_config is not None:
        trained = sum(int(x.size) for x in jax.tree.leaves(stepper.params()))
        extra["lora"] = {"r": model.lora_config.r, "alpha": model.lora_config.alpha,
                         "trained_parameters": trained}  # fmt: skip
    if mesh is not None:
        extra["distributed"] = {"engine": "jax", "mesh": dict(mesh.shape),
                                "devices": mesh.devices.size}  # fmt: skip
    return fit_summary(spec, output, model.config, steps=total, start=start, last_loss=last_loss,
                       final=final, started=t0, extra=extra, zero_shot=zero_shot)  # fmt: skip


def train_preference_model(spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """Run ``task: preference_model`` (see the module docstring); returns the summary."""
    require(spec, "jax", CAPABILITIES)  # what `nlhf validate --backend jax` checks
    if spec.distributed.engine == "jax":
        from nlhf_jax.sharding import make_mesh

        make_mesh(spec.distributed.mesh)  # enough devices, before any loading
    return run_preference_training(spec, output, fit=fit, resume=resume, backend="jax")
