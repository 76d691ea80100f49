"""The jax training loop of ``task: nash`` (issue 5 part 4; paper §7), mirroring
:mod:`nlhf_torch.trainer`: same algorithms, prompt order, schedules, metrics keys and
run outputs.

============== ============================ ==========================================
algorithm      opponent y'                  loss per row (P = P(y≻y'|x), no gradient)
============== ============================ ==========================================
nash_md_pg     π̃_β ∝ π_θ^(1−β) μ^β (tokens) −(P − ½)·log π_θ(y|x) + τ·KL
self_play      π_θ (β = 0)                   same
best_response  μ (β = 1)                     same
nash_ema_pg    EMA θ̄ ← d·θ̄ + (1−d)·θ        same
rlhf_pg        — (no y')                     −(r − mean_batch r)·log π_θ(y|x) + τ·KL
online_ipo     π̃_β                          (s·h − 1/(2τ))², h = log π/μ(y) − log π/μ(y'),
                                            s = sign(P − ½)
============== ============================ ==========================================

Prompts are tokenized like torch's (:func:`nlhf.data.tokenizer.tokenize_prompts`:
``transformers.AutoTokenizer``, chat template when the tokenizer has one or
``policy.chat_template: true``). Pairs come from :func:`nlhf_jax.generation.generate_pairs`
(one jitted decode loop); the reference logits it returns feed the KL term. Randomness:
each step draws uniforms U of shape (2, batch_size, max_new_tokens) from
``jax.random.fold_in(key(seed), step)``; row i of the batch samples y from U[0, i] and y'
from U[1, i] whatever micro-batch it falls in, so ``grad_accum: k`` samples the same
tokens as ``grad_accum: 1`` and (equal micro-batches, per-row mean losses) takes the same
optimizer step. Gradients of the ``grad_accum`` micro-batches are summed and divided by
``grad_accum`` before one optax update (both jitted). With
``distributed: {engine: jax}`` the parameters are placed by the mesh rules and each
batch is sharded over the data axes (:mod:`nlhf_jax.sharding`).

Prompts are left-padded to a multiple of ``PROMPT_BUCKET`` (8) tokens, capped at
``data.max_prompt_length``, so the decode loop and the update compile once per bucket, not
once per batch width (positions come from the mask: results are unchanged).

LoRA (``policy.lora``, :mod:`nlhf_jax.lora`): the optimizer trains the adapters only
(``nnx.split(policy, LORA_FILTER, ...)``); μ is the policy with its adapter off.
Limits (a clear error): no ``top_k`` (as on torch).
Checkpoints: ``checkpoints/step-N/`` holds ``config.json`` + ``model.safetensors``
(transformers loads it; with LoRA the peft adapter files instead), the tokenizer files, ``optimizer.safetensors`` (optax state
leaves), ``ema.safetensors`` (nash_ema_pg) and ``trainer_state.json``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from nlhf.algorithms.schedules import schedule_value
from nlhf.data.prompts import batch_indices
from nlhf.data.tokenizer import load_tokenizer, tokenize_prompts
from nlhf.errors import InputError, NLHFError
from nlhf.runio import (
    MetricsWriter,
    atomic_directory,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    write_resolved_spec,
    write_summary,
)

from nlhf_jax import kernels, lora
from nlhf_jax.generation import generate_pairs, sequence_logits
from nlhf_jax.models import load_model, save_model
from nlhf_jax.optim import build_optimizer, lr_multiplier
from nlhf_jax.preferences import build_preference, check_preference

OPPONENT = {
    "nash_md_pg": "mixture",
    "self_play": "policy",
    "best_response": "reference",
    "nash_ema_pg": "model",
    "rlhf_pg": "policy",
    "online_ipo": "mixture",
}


PROMPT_BUCKET = 8  # prompts are left-padded to a multiple of this many tokens


def bucket_width(width: int, multiple: int = PROMPT_BUCKET, limit: int | None = None) -> int:
    """The padded prompt width: ``width`` rounded up to a multiple of ``multiple``, capped at
    ``max(limit, width)`` — so the jitted decode loop and update compile once per bucket
    (≤ ⌈max_prompt_length / multiple⌉ shapes) instead of once per prompt width. Left
    padding does not change results: positions come from the attention mask."""
    padded = -(-width // multiple) * multiple
    return padded if limit is None else min(padded, max(limit, width))


def left_pad(
    rows: list[list[int]],
    pad_id: int,
    *,
    multiple: int = 1,
    limit: int | None = None,
    width: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int32 of the rows left-padded to ``width`` (default: the bucketed
    longest row, :func:`bucket_width`)."""
    if width is None:
        width = bucket_width(max(len(r) for r in rows), multiple, limit)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def step_uniforms(key: jax.Array, step: int, batch: int, accum: int, tokens: int) -> jax.Array:
    """The uniforms of optimiser step ``step``, (accum, 2m, T) with m = batch / accum: U ~
    U[0,1)^(2, batch, T) from ``fold_in(key, step)``; micro-batch k gets rows
    [U[0, km:(k+1)m]; U[1, km:(k+1)m]] (y then y'), so row i keeps its draws for any k."""
    u = jax.random.uniform(jax.random.fold_in(key, step), (2, batch, tokens))
    m = batch // accum
    return u.reshape(2, accum, m, tokens).transpose(1, 0, 2, 3).reshape(accum, 2 * m, tokens)


def _check_spec(spec: Any) -> None:
    if spec.task != "nash" or spec.is_tabular:
        raise NLHFError("the jax trainer runs LLM `task: nash` specs")
    name = getattr(spec.algorithm, "name", None)
    if name not in OPPONENT:
        raise NLHFError(
            f"algorithm.name: {name!r} is not supported by the jax backend yet "
            f"(supported: {', '.join(OPPONENT)})"
        )
    check_preference(spec.preference)
    if name == "rlhf_pg" and spec.preference.name in ("llm_judge", "pairwise_model"):
        raise InputError(
            f"algorithm.name: rlhf_pg needs a scalar reward, and a {spec.preference.name} "
            "preference has none; use a bradley_terry_reward preference (or an oracle with "
            "`reward`)"
        )
    tr = spec.training
    if spec.distributed.engine not in ("none", "jax"):
        raise NLHFError(f"distributed.engine: {spec.distributed.engine!r} is torch-only")
    micro = tr.micro_batch_size()  # batch_size / grad_accum must divide exactly
    if spec.distributed.engine == "jax":
        from nlhf_jax.sharding import BATCH_AXES

        ways = math.prod(spec.distributed.mesh.get(a, 1) for a in BATCH_AXES)
        if micro % ways:
            raise InputError(
                f"training.batch_size: micro-batches of {micro} prompts (batch_size / "
                f"grad_accum) cannot be split over the {ways} data-parallel devices of "
                f"distributed.mesh {spec.distributed.mesh}; use a multiple of {ways}"
            )
    if spec.policy.lora is not None and spec.reference.model is not None:
        raise InputError(
            "reference.model: with policy.lora the reference is the policy with its adapter "
            "disabled; remove reference.model"
        )
    if tr.generation.top_k:
        raise InputError("training.generation.top_k: the jax trainer samples the full vocabulary")


def _leaves_to_numpy(tree: Any) -> dict[str, np.ndarray]:
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _leaves_from_numpy(like: Any, tensors: dict[str, np.ndarray]) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    new = [
        jnp.asarray(tensors[f"{i:05d}"], dtype=jnp.asarray(x).dtype) for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, new)


class NashTrainer:
    """State of one jax run; :func:`train_nash` is the entry point."""

    def __init__(self, spec: Any, output: Path, *, resume: bool, plugins: Any = None) -> None:
        from nlhf.data.prompts import load_prompts

        _check_spec(spec)
        self.spec, self.output, self.algo = spec, Path(output), spec.algorithm
        self.total = spec.training.steps
        self.start_step, ckpt = 0, None
        if resume:
            found = latest_checkpoint(self.output)
            if found is None:
                raise InputError(f"--resume: no checkpoint under {self.output / 'checkpoints'}")
            self.start_step, ckpt = found
        dtype = spec.policy.dtype
        self.lora = spec.policy.lora
        if self.lora is not None:  # μ = the policy with its adapter off: no second model
            base = load_model(spec.policy.model, dtype=dtype, head="causal_lm")
            self.policy = (lora.load_adapter(base, ckpt) if ckpt is not None
                           else lora.apply_lora(base, self.lora, seed=spec.seed))  # fmt: skip
            self.reference = None
        else:
            self.policy = load_model(ckpt or spec.policy.model, dtype=dtype, head="causal_lm")
            self.reference = load_model(spec.reference.model or spec.policy.model,
                                        dtype=spec.reference.dtype or dtype, head="causal_lm")  # fmt: skip
        pol = spec.policy
        self.tokenizer = load_tokenizer(
            pol.tokenizer or pol.model,
            "policy.tokenizer" if pol.tokenizer else "policy.model",
            trust_remote_code=pol.trust_remote_code,
        )
        if self.tokenizer.eos_token_id is None:
            raise InputError("policy.tokenizer: the tokenizer has no EOS token")
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.preference = build_preference(spec.preference, plugins)
        self.prompts, self.prompt_ids = tokenize_prompts(
            load_prompts(spec.data), self.tokenizer, spec.data, pol.chat_template
        )
        # state: what the optimizer trains (all parameters, or the LoRA A/B); frozen: the rest
        trainable = lora.LORA_FILTER if self.lora is not None else nnx.Param
        self.graphdef, self.state, self.frozen = nnx.split(self.policy, trainable, ...)
        self.ref_graphdef, self.ref_state = (None, None)
        if self.reference is not None:
            self.ref_graphdef, self.ref_state = nnx.split(self.reference)
        self.mesh = None
        if spec.distributed.engine == "jax":
            from nlhf_jax.sharding import make_mesh, shard_state

            self.mesh = make_mesh(spec.distributed.mesh)
            rules = spec.distributed.rules
            self.state = shard_state(self.state, self.mesh, rules)
            self.frozen = shard_state(self.frozen, self.mesh, rules)
            if self.ref_state is not None:
                self.ref_state = shard_state(self.ref_state, self.mesh, rules)
        self.tx = build_optimizer(spec.training, self.total)
        self.opt_state = self.tx.init(self.state)
        self.lr_mult = lr_multiplier(spec.training.lr_schedule, spec.training.warmup_steps,
                                     self.total)  # fmt: skip
        self.ema_state = self.state if self.algo.name == "nash_ema_pg" else None
        self.key = jax.random.key(spec.seed)
        self.elapsed, self.generated_tokens = 0.0, 0
        if ckpt is not None:
            from safetensors.numpy import load_file

            self.opt_state = _leaves_from_numpy(
                self.opt_state, load_file(ckpt / "optimizer.safetensors")
            )
            if self.ema_state is not None:
                self.ema_state = _leaves_from_numpy(
                    self.ema_state, load_file(ckpt / "ema.safetensors")
                )
            st = json.loads((ckpt / "trainer_state.json").read_text())
            self.elapsed, self.generated_tokens = st["elapsed"], st["generated_tokens"]
        self.last_checkpoint = ckpt
        self.prompt_bucket = PROMPT_BUCKET
        self._grad_fn = jax.jit(self._grads, static_argnames=("estimator", "ipo"))
        self._apply_fn = jax.jit(self._apply)
        self._fused_fn = jax.jit(self._fused, static_argnames=("estimator", "ipo"))

    # ------------------------------------------------------------------ models
    def _model(self, state: Any, frozen: Any) -> Any:
        """The policy module with trainable ``state`` (θ, an EMA θ̄, or LoRA A/B)."""
        return nnx.merge(self.graphdef, state, frozen)

    def _reference(self, state: Any, frozen: Any, ref_state: Any) -> Any:
        """μ: the reference model, or with LoRA the policy with its adapter off (the same
        arrays; never the adapted model, TRL #2781)."""
        if self.lora is not None:
            return lora.without_adapter(self._model(state, frozen))
        return nnx.merge(self.ref_graphdef, ref_state)

    # ------------------------------------------------------------------ jitted pieces
    def _grads(self, state, frozen, ref_state, batch, pref, tau, dkey, *, estimator, ipo):
        """Loss, metrics and ∇θ of one micro-batch: the Nash-MD-PG loss (rlhf_pg: P := r − r̄
        + ½), or with ``ipo`` the online-IPO loss on (y, y'). ``dkey``: LoRA dropout masks."""
        temp = self.spec.training.generation.temperature
        ids, mask, y, ym, ref_logits = (batch[k] for k in ("ids", "mask", "y", "ym", "ref"))
        if ipo:
            reference = self._reference(state, frozen, ref_state)
            ref_p = sequence_logits(reference, ids, mask, batch["yp"], batch["ypm"])

        def loss_fn(s):
            model = self._model(s, frozen)
            if dkey is not None:
                model = lora.with_lora_dropout(model, dkey)
            logits = sequence_logits(model, ids, mask, y, ym)
            if ipo:
                logits_p = sequence_logits(model, ids, mask, batch["yp"], batch["ypm"])
                return kernels.online_ipo_loss(logits, ref_logits, y, ym, logits_p, ref_p,
                                               batch["yp"], batch["ypm"], pref, tau, temp)  # fmt: skip
            return kernels.nash_md_pg_loss(logits, ref_logits, y, ym, pref, tau, temp, estimator)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state)
        return loss, metrics, grads

    def _apply(self, state, opt_state, grads, scale):
        """One optax update with the accumulated gradients × ``scale`` (1 / grad_accum)."""
        grads = jax.tree.map(lambda g: g * scale, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, grad_norm

    def _decode(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
        """Completion texts: only the sampled tokens (mask 1), special tokens skipped."""
        rows = [t[m.astype(bool)].tolist() for t, m in zip(tokens, mask, strict=True)]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def _fused(self, state, opt_state, frozen, ref_state, batch, pref, tau, dkey, *, estimator,
               ipo):  # fmt: skip
        """``grad_accum: 1``: gradients and update in one jitted call (one dispatch)."""
        loss, metrics, grads = self._grads(state, frozen, ref_state, batch, pref, tau, dkey,
                                           estimator=estimator, ipo=ipo)  # fmt: skip
        state, opt_state, grad_norm = self._apply(state, opt_state, grads, 1.0)
        return state, opt_state, loss, metrics, grad_norm

    # ------------------------------------------------------------------ one step
    def _sample(
        self, idx: list[int], uniforms: jax.Array, tau: float, beta: float
    ) -> tuple[tuple[Any, ...], dict[str, float]]:
        """Sample (y, y') for the prompts ``idx`` with ``uniforms`` (2m, T) and score them:
        the loss inputs ``(batch, P, τ)`` and the host-side metrics of the micro-batch."""
        spec, algo = self.spec, self.algo
        gen = spec.training.generation
        t0 = time.perf_counter()
        ids, mask = left_pad([self.prompt_ids[i] for i in idx], self.pad,
                             multiple=self.prompt_bucket, limit=spec.data.max_prompt_length)  # fmt: skip
        if self.mesh is not None:
            from nlhf_jax.sharding import shard_batch

            ids, mask = shard_batch(self.mesh, ids, mask)
        prompts = [self.prompts[i] for i in idx]
        # already-split (graphdef, states) pairs: no merge + split per step
        policy = (self.graphdef, (self.state, self.frozen))
        reference = (
            self._reference(self.state, self.frozen, self.ref_state)
            if self.lora is not None
            else (self.ref_graphdef, (self.ref_state,))
        )
        ema = (self.graphdef, (self.ema_state, self.frozen)) if self.ema_state is not None else None
        pairs = generate_pairs(
            policy, reference, ids, mask, beta=beta, max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature, eos_token_id=self.eos, pad_token_id=self.pad,
            opponent=OPPONENT[algo.name], opponent_model=ema, uniforms=uniforms,
            return_reference_logits=True,
        )  # fmt: skip
        y, ym, yp, ypm = jax.device_get((pairs.y, pairs.y_mask, pairs.y_prime, pairs.y_prime_mask))
        gen_seconds = time.perf_counter() - t0
        ys = self._decode(y, ym)
        host: dict[str, float] = {}
        batch = {"ids": ids, "mask": mask, "y": pairs.y, "ym": pairs.y_mask,
                 "ref": pairs.reference_logits}  # fmt: skip
        if algo.name == "rlhf_pg":
            reward = np.asarray(self.preference.reward(prompts, ys), np.float64)
            pref = reward - reward.mean() + 0.5  # −(r − r̄)·log π ≡ −(P − ½)·log π
            host["reward"] = float(reward.mean())
            gen_tokens = int(ym.sum())
        else:
            pref = self.preference.prob(prompts, ys, self._decode(yp, ypm))
            host["len_y_prime"] = float(ypm.sum(-1).mean())
            gen_tokens = int(ym.sum() + ypm.sum())
            if algo.name == "online_ipo":
                batch.update(yp=pairs.y_prime, ypm=pairs.y_prime_mask)
        host["len_y"] = float(ym.sum(-1).mean())
        host["generated_tokens"] = gen_tokens
        host["generation_seconds"] = gen_seconds
        return (batch, jnp.asarray(pref, jnp.float32), jnp.float32(tau)), host

    def step(self, step: int) -> dict[str, Any]:
        """One optimiser step (1-based ``step``): ``grad_accum`` micro-batches, one update."""
        spec, algo, tr = self.spec, self.algo, self.spec.training
        t0 = time.perf_counter()
        idx = batch_indices((step - 1) * tr.batch_size, tr.batch_size, len(self.prompts),
                            spec.seed, spec.data.shuffle)  # fmt: skip
        tau = schedule_value(algo.tau, step - 1, self.total)
        beta = {"self_play": 0.0, "best_response": 1.0}.get(
            algo.name, schedule_value(getattr(algo, "beta", 0.0), step - 1, self.total)
        )
        uniforms = step_uniforms(self.key, step, tr.batch_size, tr.grad_accum,
                                 tr.generation.max_new_tokens)  # fmt: skip
        dropout = self.lora is not None and self.lora.dropout > 0
        static = {"estimator": getattr(algo, "kl_estimator", "sampled"),
                  "ipo": algo.name == "online_ipo"}  # fmt: skip
        micro = tr.micro_batch_size()
        grads, losses, device_metrics, sums = None, [], [], {}
        for k in range(tr.grad_accum):
            rows = slice(k * micro, (k + 1) * micro)
            inputs, host = self._sample(idx[rows], uniforms[k], tau, beta)
            dkey = (
                jax.random.fold_in(jax.random.fold_in(self.key, step), k + 1) if dropout else None
            )
            if tr.grad_accum == 1:
                self.state, self.opt_state, loss, metrics, grad_norm = self._fused_fn(
                    self.state, self.opt_state, self.frozen, self.ref_state, *inputs, dkey,
                    **static,
                )  # fmt: skip
            else:
                loss, metrics, g = self._grad_fn(self.state, self.frozen, self.ref_state,
                                                 *inputs, dkey, **static)  # fmt: skip
                grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            losses.append(loss)
            device_metrics.append(metrics)
            for key, value in host.items():
                sums[key] = sums.get(key, 0.0) + value
        if tr.grad_accum > 1:
            self.state, self.opt_state, grad_norm = self._apply_fn(
                self.state, self.opt_state, grads, jnp.float32(1.0 / tr.grad_accum)
            )
        lr = float(tr.lr * self.lr_mult(self.opt_step_count(step)))
        if self.ema_state is not None:
            d = algo.ema_decay
            self.ema_state = jax.tree.map(
                lambda e, p: d * e + (1 - d) * p, self.ema_state, self.state
            )
        losses, device_metrics, grad_norm = jax.device_get((losses, device_metrics, grad_norm))
        seconds = time.perf_counter() - t0
        for metrics in device_metrics:
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        if algo.name == "rlhf_pg":
            sums.pop("preference")
        gen_tokens = int(sums.pop("generated_tokens"))
        gen_seconds = sums.pop("generation_seconds")
        self.elapsed += seconds
        self.generated_tokens += gen_tokens
        record: dict[str, Any] = {"step": step, "loss": float(np.mean(losses))}
        record.update({k: v / tr.grad_accum for k, v in sums.items()})
        record["tau"] = tau
        if algo.name != "rlhf_pg":
            record["beta"] = beta
        record.update(
            kl_estimator=getattr(algo, "kl_estimator", None), grad_norm=float(grad_norm), lr=lr,
            generated_tokens=gen_tokens, tokens_per_s=gen_tokens / gen_seconds,
            generation_seconds=gen_seconds, step_seconds=seconds,
        )  # fmt: skip
        return record

    @staticmethod
    def opt_step_count(step: int) -> int:
        return step - 1

    # ------------------------------------------------------------------- the run
    def checkpoint(self, step: int) -> Path:
        from safetensors.numpy import save_file

        final = checkpoint_dir(self.output, step)
        with atomic_directory(final) as tmp:
            model = self._model(self.state, self.frozen)
            if self.lora is not None:  # the adapter, as torch/peft save it
                lora.save_adapter(model, tmp, self.lora, self.spec.policy.model)
            else:
                save_model(model, tmp)
            self.tokenizer.save_pretrained(tmp)
            save_file(_leaves_to_numpy(self.opt_state), tmp / "optimizer.safetensors")
            if self.ema_state is not None:
                save_file(_leaves_to_numpy(self.ema_state), tmp / "ema.safetensors")
            (tmp / "trainer_state.json").write_text(json.dumps({
                "step": step, "elapsed": self.elapsed, "generated_tokens": self.generated_tokens,
                "algorithm": self.algo.name, "position": step * self.spec.training.batch_size,
            }))  # fmt: skip
        prune_checkpoints(self.output, self.spec.output.keep_last)
        self.last_checkpoint = final
        return final

    def run(self) -> dict[str, Any]:
        spec = self.spec
        self.output.mkdir(parents=True, exist_ok=True)
        write_resolved_spec(self.output, spec)
        every = spec.output.checkpoint_every
        last: dict[str, Any] = {}
        saved_at = self.start_step if self.last_checkpoint is not None else None
        with MetricsWriter(self.output, truncate_after=self.start_step or None) as writer:
            for step in range(self.start_step + 1, self.total + 1):
                last = self.step(step)
                if step % spec.training.log_every == 0 or step == self.total:
                    writer.log(last)
                if every is not None and step % every == 0:
                    self.checkpoint(step)
                    saved_at = step
        if saved_at != self.total:
            self.checkpoint(self.total)
        timing = ("tokens_per_s", "step_seconds", "generation_seconds")
        summary = {
            "task": "nash", "backend": "jax", "algorithm": self.algo.name, "steps": self.total,
            "resumed_from": self.start_step or None, "wall_seconds": self.elapsed,
            "seconds_per_step": self.elapsed / max(self.total - self.start_step, 1),
            "generated_tokens": self.generated_tokens,
            "tokens_per_s": self.generated_tokens / self.elapsed if self.elapsed else None,
            "final": {k: v for k, v in last.items() if k not in timing},
            "checkpoint": str(self.last_checkpoint), "device": str(jax.devices()[0]),
        }  # fmt: skip
        write_summary(self.output, summary)
        return summary


def _prepare_quickstart(spec: Any) -> None:
    """The quickstart spec's tiny SFT policy (``runs/quickstart-assets/policy``) is built on
    first use by :func:`nlhf_torch.quickstart.maybe_prepare` (a transformers checkpoint that
    jax then loads); without nlhf-torch, say how to get it."""
    path = Path(spec.policy.model).expanduser()
    if path.exists() or path.parent.name != "quickstart-assets":
        return
    try:
        from nlhf_torch.quickstart import maybe_prepare
    except ImportError:
        raise InputError(
            f"policy.model: {path} does not exist; the quickstart assets are built by the "
            "torch backend: pip install nlhf-torch (or run the spec once with --backend torch)"
        ) from None
    maybe_prepare(spec)


def train_nash(
    spec: Any, output: Path, *, resume: bool = False, plugins: Any = None
) -> dict[str, Any]:
    """Run a ``task: nash`` spec with the jax backend; write ``spec.resolved.yaml``,
    ``metrics.jsonl``, ``summary.json`` and ``checkpoints/step-N/`` under ``output``."""
    _prepare_quickstart(spec)
    return NashTrainer(spec, Path(output), resume=resume, plugins=plugins).run()
