"""The jax side of ``task: nash`` on language models: the :class:`JaxStepper` of the core
loop (:mod:`nlhf.training.loop`, which owns prompts, schedules, preferences, metrics,
checkpoints and the summary).

Randomness: optimiser step s draws uniforms U of shape (2, batch_size, max_new_tokens) from
``jax.random.fold_in(key(seed), s)``; row i of the batch samples y from U[0, i] and y' from
U[1, i] whatever generation call or micro-batch it falls in (:func:`step_uniforms`), so
``grad_accum: k`` samples the same tokens as ``grad_accum: 1`` and takes the same
optimizer step. Pairs come
from :func:`nlhf_jax.generation.generate_pairs` (one jitted decode loop), whose reference
logits feed the KL term. Gradients of the micro-batches are summed and scaled by
1/``grad_accum`` before one optax update (:mod:`nlhf_jax.optim`); with ``grad_accum: 1``
gradient and update run as one jitted call. Prompts are left-padded to a multiple of
:data:`PROMPT_BUCKET` tokens (capped at ``data.max_prompt_length``), so the decode loop and
the update compile once per bucket (positions come from the mask: results are unchanged).

``distributed: {engine: jax}`` places parameters by the mesh rules and shards each batch
over the data axes (:mod:`nlhf_jax.sharding`). LoRA (``policy.lora``, :mod:`nlhf_jax.lora`):
the optimizer trains the adapters only and μ is the policy with its adapter off.
Checkpoints: ``config.json`` + ``model.safetensors`` (transformers loads it; with LoRA the
peft adapter files), the tokenizer, ``optimizer.safetensors`` (optax state leaves) and
``ema.safetensors`` (nash_ema_pg); core adds ``trainer_state.json``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from nlhf.data.tokenizer import load_tokenizer
from nlhf.precision import check_training_dtype
from nlhf.runio import atomic_directory
from nlhf.spec.models import RunSpec
from nlhf.training import Samples, Update, rule_for, run_nash
from nlhf.training.algorithms import sample_layout, sppo_pairs, sppo_win_rates
from nlhf.training.protocols import Tokens, UniformsFn

from nlhf_jax import kernels, lora
from nlhf_jax.generation import generate_pairs, sequence_hidden, sequence_logits
from nlhf_jax.models import load_model, save_model
from nlhf_jax.models.decoder import matmul_dtype
from nlhf_jax.optim import build_optimizer
from nlhf_jax.preference.scorers import build_scorer

OPTIMIZER_FILE = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
GAME_FILES = {
    "magnet": "magnet.safetensors",  # mpo: the magnet's trainable state
    "previous_grad": "previous_grad.safetensors",  # onpo: g_{t−1}
    "anchor": "anchor.safetensors",  # egpo: θ_t during a half step
    "anchor_optimizer": "anchor_optimizer.safetensors",  # egpo: its optimizer state
}
"""The game family's stepper state (nlhf.training.algorithms), each file only when set."""

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


@functools.partial(jax.jit, static_argnums=(2, 3))
def step_uniforms(key: jax.Array, step: int, batch: int, tokens: int) -> jax.Array:
    """The uniforms of optimiser step ``step``: U ~ U[0,1)^(2, batch, T) from
    ``fold_in(key, step)``; row i of the batch samples y from U[0, i] and y' from U[1, i]
    whatever generation call or micro-batch it falls in (:func:`rows_uniforms`)."""
    return jax.random.uniform(jax.random.fold_in(key, step), (2, batch, tokens))


def rows_uniforms(u: jax.Array, offset: int, rows: int) -> jax.Array:
    """The (2·rows, T) draws of batch rows offset..offset+rows: [U[0, rows]; U[1, rows]]
    (y then y')."""
    return jnp.concatenate([u[0, offset : offset + rows], u[1, offset : offset + rows]])


def _leaves_to_numpy(tree: Any) -> dict[str, np.ndarray]:
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _leaves_from_numpy(like: Any, tensors: dict[str, np.ndarray]) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    new = [
        jnp.asarray(tensors[f"{i:05d}"], dtype=jnp.asarray(x).dtype) for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, new)


def _token_rows(tokens: np.ndarray, mask: np.ndarray) -> Tokens:
    """The sampled tokens of each row (mask 1), as host lists."""
    return [t[m.astype(bool)].tolist() for t, m in zip(tokens, mask, strict=True)]


class JaxStepper:
    """One jax process (one device or a mesh); see the module docstring."""

    rank = 0
    world_size = 1
    uniforms: UniformsFn | None = None
    decode_path = "jax: jitted while_loop (static KV cache)"

    def __init__(self, spec: RunSpec, checkpoint: Path | None, plugins: Any = None) -> None:
        self.spec, self.algo, self.rule = spec, spec.algorithm, rule_for(spec.algorithm.name)
        tr = spec.training
        self.accum = tr.grad_accum
        dtype = spec.policy.dtype
        self.lora = spec.policy.lora
        if self.lora is not None:  # μ = the policy with its adapter off: no second model
            base = load_model(spec.policy.model, dtype=dtype, head="causal_lm")
            if checkpoint is not None:
                self.policy = lora.load_adapter(base, checkpoint)
            else:
                self.policy = lora.apply_lora(base, self.lora, seed=spec.seed)
            self.reference = None
        else:
            self.policy = load_model(checkpoint or spec.policy.model, dtype=dtype, head="causal_lm")
            self.reference = load_model(
                spec.reference.model or spec.policy.model,
                dtype=spec.reference.dtype or dtype,
                head="causal_lm",
            )
        # training.gradient_checkpointing: nnx.remat around each decoder layer (before split)
        self.policy.model.remat = tr.gradient_checkpointing
        pol = spec.policy
        self.tokenizer = load_tokenizer(
            pol.tokenizer or pol.model,
            "policy.tokenizer" if pol.tokenizer else "policy.model",
            trust_remote_code=pol.trust_remote_code,
        )
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.preference = build_scorer(spec.preference, plugins=plugins)
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
        self.device = str(jax.devices()[0])
        leaves = jax.tree.leaves(self.state)
        if leaves:
            check_training_dtype(
                leaves[0].dtype, jax.devices()[0].platform, optimizer=tr.optimizer.name
            )
        self.tx = build_optimizer(tr, tr.steps)
        self.opt_state = self.tx.init(self.state)
        self.ema_state = self.state if self.rule.opponent == "model" else None
        # the game family's state (nlhf.training.algorithms), all of it checkpointed
        self.game: dict[str, Any] = dict.fromkeys(GAME_FILES)
        self._step = 0  # the step being sampled and trained
        self.key = jax.random.key(spec.seed)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.prompt_bucket = PROMPT_BUCKET
        self._uniforms: tuple[int, jax.Array] | None = None
        self._pending: list[tuple[Any, ...]] = []
        self._grads: Any = None
        self._outputs: list[tuple[Any, Any]] = []
        static = ("estimator", "kind")
        self._grad_fn = jax.jit(self._loss_grads, static_argnames=static)
        self._apply_fn = jax.jit(self._apply)
        self._fused_fn = jax.jit(self._fused, static_argnames=static)

    def _restore(self, checkpoint: Path) -> None:
        from safetensors.numpy import load_file

        self.opt_state = _leaves_from_numpy(self.opt_state, load_file(checkpoint / OPTIMIZER_FILE))
        if self.ema_state is not None:
            self.ema_state = _leaves_from_numpy(self.ema_state, load_file(checkpoint / EMA_FILE))
        for key, name in GAME_FILES.items():
            if (checkpoint / name).exists():
                like = self.opt_state if key == "anchor_optimizer" else self.state
                self.game[key] = _leaves_from_numpy(like, load_file(checkpoint / name))

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
    def _loss_grads(self, state, frozen, ref_state, batch, pref, tau, dkey, *, estimator, kind):
        """Loss, metrics and ∇θ of one micro-batch (the loss kernel ``kind`` of the
        algorithm table; ``dkey``: LoRA dropout masks)."""
        temp = self.spec.training.generation.temperature
        sg = jax.lax.stop_gradient
        ids, mask, y, ym, ref_logits = (batch[k] for k in ("ids", "mask", "y", "ym", "ref"))
        pairwise = kind in ("online_ipo", "egpo", "inpo")
        chunk = self._logprob_chunk(y)
        ref_p = lq_p = lq_k = None  # μ's logits / log-probs of y' (pairwise), of sppo's y
        if pairwise or kind == "sppo":
            reference = self._reference(state, frozen, ref_state)
        if kind == "online_ipo" and chunk is None:  # its full-logits kernel takes μ's logits
            ref_p = sequence_logits(reference, ids, mask, batch["yp"], batch["ypm"])
        elif pairwise:
            lq_p = self._sequence_logprobs(reference, ids, mask, batch["yp"], batch["ypm"], chunk)
        if kind == "sppo":  # the responses include y' rows: μ's log-probs of all of them
            lq_k = self._sequence_logprobs(reference, ids, mask, y, ym, chunk)

        def loss_fn(s):
            model = self._model(s, frozen)
            if dkey is not None:
                model = lora.with_lora_dropout(model, dkey)
            if chunk is not None and kind in ("nash_md_pg", "online_ipo"):
                ipo_lq = lq_p if kind == "online_ipo" else None
                return self._chunked_loss(model, batch, ipo_lq, pref, tau, chunk, estimator)

            def policy_logprobs(comp, cmask):
                return self._sequence_logprobs(model, ids, mask, comp, cmask, chunk)

            if kind == "sppo":
                lp = policy_logprobs(y, ym)
                lq = lq_k
                loss, metrics = kernels.sppo_loss(lp, sg(lp), pref, self.algo.eta)
                extra = {"kl": jnp.mean(lp - lq), "logprob": jnp.mean(lp)}
                extra["preference"] = batch["pair_preference"]
                return loss, {**metrics, **{k: sg(v) for k, v in extra.items()}}
            if kind in ("egpo", "inpo"):  # inpo/onpo, egpo: on sequence log-probs
                lp_y = policy_logprobs(y, ym)
                lp_p = policy_logprobs(batch["yp"], batch["ypm"])
                lq_y = self._decoded_logprobs(ref_logits, y, ym, chunk)
                if kind == "egpo":
                    return kernels.egpo_loss(lp_y, lp_p, lq_y, lq_p, pref, tau)
                return kernels.inpo_loss(
                    lp_y, lp_p, sg(lp_y), sg(lp_p), lq_y, lq_p, pref, tau, self.algo.eta
                )
            logits = sequence_logits(model, ids, mask, y, ym)
            if kind == "online_ipo":
                logits_p = sequence_logits(model, ids, mask, batch["yp"], batch["ypm"])
                return kernels.online_ipo_loss(
                    logits,
                    ref_logits,
                    y,
                    ym,
                    logits_p,
                    ref_p,
                    batch["yp"],
                    batch["ypm"],
                    pref,
                    tau,
                    temp,
                )
            return kernels.nash_md_pg_loss(logits, ref_logits, y, ym, pref, tau, temp, estimator)

        with self._compute():
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state)
        return loss, metrics, grads

    def _compute(self) -> contextlib.AbstractContextManager[None]:
        """``training.precision: bf16-mixed``: the loss's matmuls take bfloat16 inputs with
        float32 accumulation (:func:`nlhf_jax.models.decoder.matmul_dtype`, torch.autocast's
        rule) while norms, softmaxes and the residual stream stay float32; the casts are
        differentiated, so gradients, optimizer state and parameters stay float32."""
        if self.spec.training.precision == "bf16-mixed":
            return matmul_dtype(jnp.bfloat16)
        return contextlib.nullcontext()

    def _logprob_chunk(self, completions: Any) -> int | None:
        rows, positions = completions.shape
        vocab = self.policy.config.vocab_size
        return self.spec.training.logprob_chunk_size(rows, positions, vocab)

    def _sequence_logprobs(self, model, ids, mask, comp, cmask, chunk):
        """log π(y|x) (B,) of ``model`` (the policy, or the frozen reference, through which
        no gradient is taken): from its full logits, or under ``training.logprob_chunk``
        from its final hidden states through its head ``chunk`` positions at a time
        (:func:`kernels.chunked_sequence_logprobs`), no B×T×V logits."""
        temp = self.spec.training.generation.temperature
        if chunk is None:
            logits = sequence_logits(model, ids, mask, comp, cmask)
            return kernels.sequence_logprobs(logits, comp, cmask, temp)
        hidden = sequence_hidden(model, ids, mask, comp, cmask)
        return kernels.chunked_sequence_logprobs(hidden, model.logits, comp, cmask, temp, chunk)

    def _decoded_logprobs(self, ref_logits, comp, cmask, chunk):
        """log μ(y|x) (B,) from the decode's reference logits (B, T, V); under
        ``training.logprob_chunk`` their log-softmax runs chunk by chunk
        (:func:`kernels.chunked_logits_logprobs`)."""
        temp = self.spec.training.generation.temperature
        if chunk is None:
            return kernels.sequence_logprobs(ref_logits, comp, cmask, temp)
        lq = kernels.chunked_logits_logprobs(ref_logits, comp, temp, chunk)
        return jnp.sum(lq * cmask.astype(lq.dtype), axis=-1)

    def _chunked_loss(self, model, batch, lq_p, pref, tau, chunk, estimator):
        """The loss of ``_loss_grads`` from :func:`kernels.chunked_token_logprobs` over
        the model's hidden states (``training.logprob_chunk``): no B×T×V policy logits;
        μ's log-probs of y from the decode's logits chunk by chunk. ``lq_p``: log μ(y′|x)
        (online IPO) or None."""
        temp = self.spec.training.generation.temperature
        ids, mask, y, ym, ref = (batch[k] for k in ("ids", "mask", "y", "ym", "ref"))

        def token_logprobs(comp, cmask, reference_logits):
            hidden = sequence_hidden(model, ids, mask, comp, cmask)
            return kernels.chunked_token_logprobs(
                hidden, model.logits, comp, temp, chunk, reference_logits=reference_logits
            )

        exact_ref = ref if lq_p is None and estimator == "exact" else None
        lp, exact = token_logprobs(y, ym, exact_ref)
        seq_lp = jnp.sum(lp * ym.astype(lp.dtype), axis=-1)
        if lq_p is not None:
            yp, ypm = batch["yp"], batch["ypm"]
            lp_p, _ = token_logprobs(yp, ypm, None)
            seq_lp_p = jnp.sum(lp_p * ypm.astype(lp_p.dtype), axis=-1)
            lq_y = self._decoded_logprobs(ref, y, ym, chunk)
            return kernels.online_ipo_loss_from_logprobs(seq_lp, lq_y, seq_lp_p, lq_p, pref, tau)
        lq = None if exact is not None else kernels.chunked_logits_logprobs(ref, y, temp, chunk)
        kl_terms = kernels.kl_from_logprobs(lp, lq, ym, estimator, exact)
        return kernels.nash_md_pg_loss_from_logprobs(seq_lp, kl_terms, pref, tau)

    def _apply(self, state, opt_state, grads, scale):
        """One optax update with the accumulated gradients × ``scale`` (1 / grad_accum)."""
        grads = jax.tree.map(lambda g: g * scale, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, grad_norm

    def _fused(
        self, state, opt_state, frozen, ref_state, batch, pref, tau, dkey, *, estimator, kind
    ):
        """``grad_accum: 1``: gradients and update in one jitted call (one dispatch)."""
        loss, metrics, grads = self._loss_grads(
            state, frozen, ref_state, batch, pref, tau, dkey, estimator=estimator, kind=kind
        )
        state, opt_state, grad_norm = self._apply(state, opt_state, grads, 1.0)
        return state, opt_state, loss, metrics, grad_norm

    # ------------------------------------------------------------------ the stepper
    def _rows_uniforms(self, step: int, offset: int, rows: int) -> jax.Array:
        if self.uniforms is not None:
            tokens = self.spec.training.generation.max_new_tokens
            return jnp.asarray(self.uniforms(step, offset, rows, tokens), jnp.float32)
        return rows_uniforms(self._step_uniforms(step), offset, rows)

    def _step_uniforms(self, step: int) -> jax.Array:
        if self._uniforms is None or self._uniforms[0] != step:
            tr = self.spec.training
            u = step_uniforms(self.key, step, tr.batch_size, tr.generation.max_new_tokens)
            self._uniforms = (step, u)
        return self._uniforms[1]

    def _pad(self, prompt_ids: Tokens) -> tuple[Any, Any]:
        ids, mask = left_pad(
            prompt_ids,
            self.pad,
            multiple=self.prompt_bucket,
            limit=self.spec.data.max_prompt_length,
        )
        if self.mesh is not None:
            from nlhf_jax.sharding import shard_batch

            ids, mask = shard_batch(self.mesh, ids, mask)
        return ids, mask

    def _split_reference(self) -> Any:
        if self.lora is not None:
            return self._reference(self.state, self.frozen, self.ref_state)
        return (self.ref_graphdef, (self.ref_state,))

    def _sampling_reference(self) -> Any:
        """μ, or mpo's magnet once refreshed: its logits feed the KL term."""
        if self.game["magnet"] is not None:
            return (self.graphdef, (self.game["magnet"], self.frozen))
        return self._split_reference()

    def sample(self, step: int, offset: int, prompt_ids: Tokens, beta: float) -> Samples:
        self._step = step
        if self.rule.loss == "sppo":
            return self._sample_k(step, offset, prompt_ids)
        gen = self.spec.training.generation
        ids, mask = self._pad(prompt_ids)
        # already-split (graphdef, states) pairs: no merge + split per step
        policy = (self.graphdef, (self.state, self.frozen))
        ema = None
        if self.ema_state is not None:
            ema = (self.graphdef, (self.ema_state, self.frozen))
        pairs = generate_pairs(
            policy,
            self._sampling_reference(),
            ids,
            mask,
            beta=beta,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            opponent=self.rule.opponent,
            opponent_model=ema,
            uniforms=self._rows_uniforms(step, offset, len(prompt_ids)),
            return_reference_logits=True,
        )
        y, ym, yp, ypm = jax.device_get((pairs.y, pairs.y_mask, pairs.y_prime, pairs.y_prime_mask))
        batch = {
            "ids": ids,
            "mask": mask,
            "y": pairs.y,
            "ym": pairs.y_mask,
            "ref": pairs.reference_logits,
        }
        if self.rule.loss in ("online_ipo", "egpo", "inpo"):
            batch.update(yp=pairs.y_prime, ypm=pairs.y_prime_mask)
        y_prime = _token_rows(yp, ypm) if self.rule.needs_y_prime else None
        rows = list(range(len(prompt_ids)))
        return Samples(rows, _token_rows(y, ym), y_prime, (step, offset, batch))

    def _sample_k(self, step: int, offset: int, prompt_ids: Tokens) -> Samples:
        """sppo: K = ``num_samples`` responses per prompt from one pair-sampler call over
        the prompts repeated ⌈K/2⌉ times (:func:`nlhf.training.algorithms.sample_layout`);
        the rows handed to the loop are every pair of each prompt's responses. Copy j of
        batch row r draws from column j·batch_size + r of the step's uniforms."""
        gen, n = self.spec.training.generation, len(prompt_ids)
        k = self.rule.num_samples(self.algo)
        m, layout = sample_layout(n, k)
        ids, mask = self._pad(list(prompt_ids) * m)
        if self.uniforms is not None:
            u = jnp.asarray(self.uniforms(step, offset, n * m, gen.max_new_tokens), jnp.float32)
        else:
            batch_size = self.spec.training.batch_size
            draws = step_uniforms(self.key, step, batch_size * m, gen.max_new_tokens)
            cols = np.array([j * batch_size + offset + i for j in range(m) for i in range(n)])
            u = jnp.concatenate([draws[0, cols], draws[1, cols]])
        policy = (self.graphdef, (self.state, self.frozen))
        pairs = generate_pairs(
            policy,
            self._split_reference(),
            ids,
            mask,
            beta=0.0,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            opponent="policy",
            uniforms=u,
        )
        drawn = jax.device_get((pairs.y, pairs.y_prime, pairs.y_mask, pairs.y_prime_mask))
        tokens, masks = np.stack(drawn[:2]), np.stack(drawn[2:])  # (2, n·m, T')
        rows_of = np.array([row for row, _ in layout])
        which = np.array([w for _, w in layout])
        comp, cmask = tokens[which, rows_of], masks[which, rows_of]
        responses = _token_rows(comp, cmask)
        batch = {
            "ids": jnp.asarray(np.asarray(ids)[rows_of]),
            "mask": jnp.asarray(np.asarray(mask)[rows_of]),
            "y": jnp.asarray(comp),
            "ym": jnp.asarray(cmask),
            "ref": jnp.zeros((len(layout), 1, 1), jnp.float32),  # unused: μ is run on all rows
        }
        rows, ys, yps = [], [], []
        for i in range(n):
            for a, b in sppo_pairs(k):
                rows.append(i)
                ys.append(responses[i * k + a])
                yps.append(responses[i * k + b])
        generated = int(cmask.sum())
        return Samples(rows, ys, yps, (step, offset, batch), generated_tokens=generated)

    def select(self, samples: Samples, start: int, stop: int) -> Samples:
        """Rows start..stop of a generation call: one micro-batch of the loss."""
        step, offset, batch = samples.payload
        if self.rule.loss == "sppo":  # rows are pairs; the batch holds K rows per prompt
            k = self.rule.num_samples(self.algo)
            per = len(sppo_pairs(k))
            first, last = start // per, stop // per
            part = {key: v[first * k : last * k] for key, v in batch.items()}
            rows = [r - first for r in samples.rows[start:stop]]
            assert samples.y_prime is not None
            payload = (step, offset + first, part)
            return Samples(rows, samples.y[start:stop], samples.y_prime[start:stop], payload)
        part = {k: v[start:stop] for k, v in batch.items()}
        y_prime = samples.y_prime[start:stop] if samples.y_prime is not None else None
        rows = list(range(stop - start))
        return Samples(rows, samples.y[start:stop], y_prime, (step, offset + start, part))

    def _inputs(self, samples: Samples, preference: np.ndarray, tau: float) -> tuple[Any, ...]:
        step, offset, batch = samples.payload
        if self.rule.loss == "sppo":  # the kernel's P̂(y ≻ π_t) per response
            k = self.rule.num_samples(self.algo)
            batch = {**batch, "pair_preference": jnp.float32(np.mean(preference))}
            preference = sppo_win_rates(preference, k)
        dkey = None
        if self.lora is not None and self.lora.dropout > 0:  # one key per micro-batch
            micro = offset // self.spec.training.micro_batch_size()
            dkey = jax.random.fold_in(jax.random.fold_in(self.key, step), micro + 1)
        return (batch, jnp.asarray(preference, jnp.float32), jnp.float32(tau), dkey)

    def _static(self) -> dict[str, Any]:
        return {"estimator": getattr(self.algo, "kl_estimator", "sampled"), "kind": self.rule.loss}

    def _egpo_full_step(self) -> bool:
        """egpo: whether the current step is a full step (even; odd steps are half steps)."""
        return self.rule.mechanics == "extragradient" and self._step % 2 == 0

    def _trained_state(self) -> tuple[Any, Any]:
        """(θ, optimizer state) the step's gradient is taken at and applied to: egpo's
        full step uses θ_t and its optimizer state (the anchor), else the current ones."""
        if self._egpo_full_step():
            assert self.game["anchor"] is not None, "egpo: a full step without its half step"
            return self.game["anchor"], self.game["anchor_optimizer"]
        return self.state, self.opt_state

    def accumulate(self, samples: Samples, preference: np.ndarray, tau: float) -> None:
        inputs = self._inputs(samples, preference, tau)
        if self.accum == 1 and self.rule.mechanics in (None, "magnet"):  # one fused call
            self._pending.append(inputs)
            return
        loss, metrics, grads = self._grad_fn(
            self._trained_state()[0], self.frozen, self.ref_state, *inputs, **self._static()
        )
        self._grads = grads if self._grads is None else jax.tree.map(jnp.add, self._grads, grads)
        self._outputs.append((loss, metrics))

    def apply(self) -> Update:
        if self._pending:
            (inputs,) = self._pending
            self.state, self.opt_state, loss, metrics, grad_norm = self._fused_fn(
                self.state, self.opt_state, self.frozen, self.ref_state, *inputs, **self._static()
            )
            self._outputs.append((loss, metrics))
        else:
            self.state, self.opt_state, grad_norm = self._apply_game()
        every = getattr(self.algo, "magnet_every", None)
        if self.rule.mechanics == "magnet" and every is not None and self._step % every == 0:
            self.game["magnet"] = self.state  # mpo: m ← θ (arrays are immutable: a snapshot)
        outputs, grad_norm = jax.device_get((self._outputs, grad_norm))
        self._pending, self._grads, self._outputs = [], None, []
        return Update(
            losses=[float(loss) for loss, _ in outputs],
            metrics=[{k: float(v) for k, v in m.items()} for _, m in outputs],
            grad_norm=float(grad_norm),
        )

    def _apply_game(self) -> tuple[Any, Any, Any]:
        """The update of the accumulated gradients, with the game family's mechanics:
        onpo hands 2·g_t − g_{t−1} to the optimizer; egpo's half step keeps θ_t and its
        optimizer state, its full step updates those."""
        mechanics, scale = self.rule.mechanics, jnp.float32(1.0 / self.accum)
        grads = self._grads
        if mechanics == "optimistic":
            grads = jax.tree.map(lambda g: g * scale, grads)
            previous, self.game["previous_grad"] = self.game["previous_grad"], grads
            if previous is not None:
                grads = jax.tree.map(lambda g, h: 2.0 * g - h, grads, previous)
            scale = jnp.float32(1.0)
        state, opt_state = self._trained_state()
        if mechanics == "extragradient":
            if self._egpo_full_step():
                self.game["anchor"] = self.game["anchor_optimizer"] = None
            else:
                self.game["anchor"], self.game["anchor_optimizer"] = state, opt_state
        return self._apply_fn(state, opt_state, grads, scale)

    def update_ema(self, decay: float) -> None:
        self.ema_state = jax.tree.map(
            lambda e, p: decay * e + (1 - decay) * p, self.ema_state, self.state
        )

    def sampling_state(self) -> None:
        """None: the draws are ``fold_in(key(seed), step)``, a pure function of the step."""
        return None

    def abandon_step(self, sampling_state: None) -> None:
        self._pending, self._grads, self._outputs = [], None, []

    def all_reduce(self, values: Sequence[float], op: Literal["sum", "max"] = "sum") -> list[float]:
        return [float(v) for v in values]

    def describe(self) -> dict[str, Any] | None:
        if self.mesh is None:
            return None
        return {"engine": "jax", "mesh": dict(self.spec.distributed.mesh)}

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        from safetensors.numpy import save_file

        with atomic_directory(final) as tmp:
            model = self._model(self.state, self.frozen)
            if self.lora is not None:  # the adapter, as torch/peft save it
                lora.save_adapter(model, tmp, self.lora, self.spec.policy.model)
            else:
                save_model(model, tmp)
            self.tokenizer.save_pretrained(tmp)
            save_file(_leaves_to_numpy(self.opt_state), tmp / OPTIMIZER_FILE)
            if self.ema_state is not None:
                save_file(_leaves_to_numpy(self.ema_state), tmp / EMA_FILE)
            for key, name in GAME_FILES.items():
                if self.game[key] is not None:
                    save_file(_leaves_to_numpy(self.game[key]), tmp / name)
            write_core(tmp)

    # ------------------------------------------------------------------ probe
    def sequence_logprobs(
        self,
        prompt_ids: Tokens,
        completion_ids: Tokens,
        *,
        model: Literal["policy", "reference"],
        temperature: float,
    ) -> np.ndarray:
        ids, mask = left_pad(prompt_ids, self.pad)
        width = max(max(len(c) for c in completion_ids), 1)
        comp = np.full((len(completion_ids), width), self.pad, np.int32)
        cmask = np.zeros_like(comp)
        for i, c in enumerate(completion_ids):
            comp[i, : len(c)] = c
            cmask[i, : len(c)] = 1
        net = (
            self._model(self.state, self.frozen)
            if model == "policy"
            else self._reference(self.state, self.frozen, self.ref_state)
        )
        logits = sequence_logits(net, ids, mask, comp, cmask)
        lp = kernels.sequence_logprobs(logits, comp, cmask, temperature)
        return np.asarray(jax.device_get(lp), np.float64)

    def sample_completions(
        self, prompt_ids: Tokens, *, temperature: float, max_new_tokens: int, seed: int
    ) -> Tokens:
        ids, mask = left_pad(prompt_ids, self.pad, multiple=self.prompt_bucket)
        policy = (self.graphdef, (self.state, self.frozen))
        pairs = generate_pairs(
            policy,
            policy,
            ids,
            mask,
            beta=0.0,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            opponent="policy",
            key=jax.random.key(seed),
        )
        y, ym = jax.device_get((pairs.y, pairs.y_mask))
        return _token_rows(np.asarray(y), np.asarray(ym))


def make_stepper(spec: RunSpec, checkpoint: Path | None, plugins: Any = None) -> JaxStepper:
    return JaxStepper(spec, checkpoint, plugins)


def train_nash(spec: RunSpec, output: Path, **options: Any) -> dict[str, Any]:
    """Run a ``task: nash`` LLM spec on jax (:func:`nlhf.training.run_nash`)."""
    return run_nash(spec, output, backend="jax", make_stepper=make_stepper, **options)
