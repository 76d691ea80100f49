"""The jax side of ``task: offline`` (DPO and IPO on fixed pairs): the
:class:`JaxOfflineStepper` of the core loop (:mod:`nlhf.training.offline`, which owns the
pairs, their order, the reference cache, metrics, checkpoints and the summary).

One jitted forward per micro-batch scores both responses: the B prompts twice (left-padded
to a multiple of :data:`nlhf_jax.trainer.PROMPT_BUCKET`) followed by the B chosen then the B
rejected responses (right-padded to a multiple of the same bucket, so shapes, and
compilations, repeat), :func:`nlhf_jax.generation.sequence_logits`; log-probs at the spec's
generation temperature (under ``training.logprob_chunk`` from the final hidden states through
the LM head chunk by chunk, :func:`nlhf_jax.kernels.chunked_sequence_logprobs`, for the policy
and the reference alike: no B×T×V logits). The loss is :func:`nlhf_jax.kernels.dpo_loss` or
:func:`~nlhf_jax.kernels.offline_ipo_loss` with the cached reference log-probs; the
micro-batches' gradients, each times its weight, are summed before one optax update
(:mod:`nlhf_jax.optim`: torch's clipping and AdamW). With ``policy.lora``
(:mod:`nlhf_jax.lora`) the optimizer trains the adapters only, μ is the policy with its
adapter off, and each micro-batch's dropout key is ``fold_in(fold_in(key(seed), update),
micro-batch)`` (the update count resumes from the checkpoint: the same masks). Checkpoints are a Nash run's
(:mod:`nlhf_jax.trainer`): ``config.json`` + ``model.safetensors`` (transformers loads
them), the tokenizer and ``optimizer.safetensors``; core adds ``trainer_state.json``.
"""

from __future__ import annotations

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
from nlhf.training import TrainerState, Update
from nlhf.training.offline import PairTokens, run_offline

from nlhf_jax import kernels, lora
from nlhf_jax.generation import sequence_hidden, sequence_logits
from nlhf_jax.models import load_model, save_model, to_hf_state_dict
from nlhf_jax.optim import build_optimizer
from nlhf_jax.trainer import (
    OPTIMIZER_FILE,
    PROMPT_BUCKET,
    _leaves_from_numpy,
    _leaves_to_numpy,
    bucket_width,
    left_pad,
)

__all__ = ["JaxOfflineStepper", "make_offline_stepper", "train_offline"]


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, multiple: int) -> tuple[Any, Any]:
    """(ids, mask) int32 of responses ``rows`` right-padded to a multiple of ``multiple``."""
    width = bucket_width(max(max(len(r) for r in rows), 1), multiple)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


class JaxOfflineStepper:
    """One jax process on one device (module docstring);
    :class:`nlhf.training.offline.OfflineStepper`."""

    rank = 0
    world_size = 1

    def __init__(self, spec: RunSpec, checkpoint: Path | None, total_steps: int) -> None:
        assert spec.algorithm is not None and spec.policy is not None
        self.spec = spec
        self.loss_fn = (
            kernels.dpo_loss if spec.algorithm.name == "dpo" else kernels.offline_ipo_loss
        )
        pol, tr = spec.policy, spec.training
        self.lora = pol.lora
        self.key = jax.random.key(spec.seed)
        reference = None
        if self.lora is not None:  # μ = the policy with its adapter off: no second model
            policy = load_model(pol.model, dtype=pol.dtype, head="causal_lm")
            if checkpoint is not None:
                policy = lora.load_adapter(policy, checkpoint)
            else:
                policy = lora.apply_lora(policy, self.lora, seed=spec.seed)
        else:
            policy = load_model(checkpoint or pol.model, dtype=pol.dtype, head="causal_lm")
            reference = load_model(
                spec.reference.model or pol.model,
                dtype=spec.reference.dtype or pol.dtype,
                head="causal_lm",
            )
        self.tokenizer = load_tokenizer(
            pol.tokenizer or pol.model,
            "policy.tokenizer" if pol.tokenizer else "policy.model",
            trust_remote_code=pol.trust_remote_code,
        )
        self.pad = self.tokenizer.pad_token_id
        self.vocab = policy.config.vocab_size
        # state: what the optimizer trains (all parameters, or the LoRA A/B); frozen: the rest
        trainable = lora.LORA_FILTER if self.lora is not None else nnx.Param
        self.graphdef, self.state, self.frozen = nnx.split(policy, trainable, ...)
        self.ref_graphdef, self.ref_state = nnx.split(reference) if reference else (None, None)
        self.device = str(jax.devices()[0])
        leaves = jax.tree.leaves(self.state)
        if leaves:
            check_training_dtype(
                leaves[0].dtype, jax.devices()[0].platform, optimizer=tr.optimizer.name
            )
        self.tx = build_optimizer(tr, total_steps)
        self.opt_state = self.tx.init(self.state)
        if checkpoint is not None:
            from safetensors.numpy import load_file

            tensors = load_file(Path(checkpoint) / OPTIMIZER_FILE)
            self.opt_state = _leaves_from_numpy(self.opt_state, tensors)
        self.temperature = tr.generation.temperature
        self._updates = TrainerState.read(checkpoint).step if checkpoint is not None else 0
        self._micro = 0
        self._grads: Any = None
        self._outputs: list[tuple[Any, Any]] = []
        self._grad_fn = jax.jit(self._loss_grads)
        self._apply_fn = jax.jit(self._apply)
        self._policy_fn = jax.jit(self._policy_logprobs)
        self._reference_fn = jax.jit(self._reference_logprobs)

    # ------------------------------------------------------------------ jitted pieces
    def _logprobs(self, model: Any, batch: dict[str, Any]) -> jax.Array:
        """log π(y|x) (2B,) of ``model``: full logits, or under ``training.logprob_chunk``
        the final hidden states through ``model.logits`` chunk by chunk."""
        ids, mask, y, ym = batch["ids"], batch["mask"], batch["y"], batch["ym"]
        chunk = self.spec.training.logprob_chunk_size(*y.shape, self.vocab)
        if chunk is None:
            logits = sequence_logits(model, ids, mask, y, ym)
            return kernels.sequence_logprobs(logits, y, ym, self.temperature)
        hidden = sequence_hidden(model, ids, mask, y, ym)
        return kernels.chunked_sequence_logprobs(
            hidden, model.logits, y, ym, self.temperature, chunk
        )

    def _policy_logprobs(self, state: Any, frozen: Any, batch: dict[str, Any]) -> jax.Array:
        return self._logprobs(nnx.merge(self.graphdef, state, frozen), batch)

    def _reference_logprobs(
        self, state: Any, frozen: Any, ref_state: Any, batch: dict[str, Any]
    ) -> jax.Array:
        """μ: the reference model, or with LoRA the policy with its adapter off (the same
        arrays; never the adapted model, TRL #2781)."""
        if self.lora is not None:
            model = lora.without_adapter(nnx.merge(self.graphdef, state, frozen))
        else:
            model = nnx.merge(self.ref_graphdef, ref_state)
        return self._logprobs(model, batch)

    def _loss_grads(self, state, frozen, batch, ref_c, ref_r, tau, weight, dkey):
        """Loss, metrics and weight × ∇θ of one micro-batch (``dkey``: LoRA dropout masks)."""

        def loss_fn(s):
            model = nnx.merge(self.graphdef, s, frozen)
            if dkey is not None:
                model = lora.with_lora_dropout(model, dkey)
            logprobs = self._logprobs(model, batch)
            rows = ref_c.shape[0]
            return self.loss_fn(logprobs[:rows], logprobs[rows:], ref_c, ref_r, tau)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state)
        return loss, metrics, jax.tree.map(lambda g: g * weight, grads)

    def _apply(self, state, opt_state, grads):
        """One optax update (clipping inside the chain) with the summed gradients."""
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, grad_norm

    # ------------------------------------------------------------------ the stepper
    def _batch(self, pairs: PairTokens) -> dict[str, Any]:
        ids, mask = left_pad(
            pairs.prompt * 2,
            self.pad,
            multiple=PROMPT_BUCKET,
            limit=self.spec.data.max_prompt_length if self.spec.data else None,
        )
        y, ym = right_pad(pairs.chosen + pairs.rejected, self.pad, PROMPT_BUCKET)
        return {"ids": ids, "mask": mask, "y": y, "ym": ym}

    def pair_logprobs(
        self, pairs: PairTokens, *, model: Literal["policy", "reference"]
    ) -> tuple[np.ndarray, np.ndarray]:
        batch = self._batch(pairs)
        if model == "policy":
            logprobs = self._policy_fn(self.state, self.frozen, batch)
        else:
            logprobs = self._reference_fn(self.state, self.frozen, self.ref_state, batch)
        values = np.asarray(jax.device_get(logprobs), np.float64)
        return values[: len(pairs)], values[len(pairs) :]

    def accumulate(
        self,
        pairs: PairTokens,
        reference: tuple[np.ndarray, np.ndarray],
        tau: float,
        weight: float,
    ) -> None:
        ref_c, ref_r = (jnp.asarray(r, jnp.float32) for r in reference)
        dkey = None
        if self.lora is not None and self.lora.dropout > 0:  # one key per micro-batch
            self._micro += 1
            dkey = jax.random.fold_in(jax.random.fold_in(self.key, self._updates), self._micro)
        loss, metrics, grads = self._grad_fn(
            self.state,
            self.frozen,
            self._batch(pairs),
            ref_c,
            ref_r,
            jnp.float32(tau),
            jnp.float32(weight),
            dkey,
        )
        self._grads = grads if self._grads is None else jax.tree.map(jnp.add, self._grads, grads)
        self._outputs.append((loss, metrics))

    def apply(self) -> Update:
        self.state, self.opt_state, grad_norm = self._apply_fn(
            self.state, self.opt_state, self._grads
        )
        outputs, grad_norm = jax.device_get((self._outputs, grad_norm))
        self._grads, self._outputs = None, []
        self._updates, self._micro = self._updates + 1, 0
        return Update(
            losses=[float(loss) for loss, _ in outputs],
            metrics=[{k: float(v) for k, v in m.items()} for _, m in outputs],
            grad_norm=float(grad_norm),
        )

    def gradients(self) -> dict[str, np.ndarray]:
        """The gradient accumulated since the last :meth:`apply`, float64 by Hugging Face
        parameter name in torch layout (test seam)."""
        if self._grads is None:
            return {}
        if self.lora is not None:
            return {
                k: v.astype(np.float64) for k, v in lora.adapter_state_dict(self._grads).items()
            }
        return {k: v.astype(np.float64) for k, v in to_hf_state_dict(self._grads).items()}

    def all_reduce(self, values: Sequence[float], op: Literal["sum", "max"] = "sum") -> list[float]:
        return [float(v) for v in values]

    def describe(self) -> dict[str, Any] | None:
        return None

    def sampling_state(self) -> None:
        return None  # offline steps sample nothing

    def abandon_step(self, state: None) -> None:
        """Nothing to undo: an offline step needs no preference, so none is abandoned."""

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        from safetensors.numpy import save_file

        with atomic_directory(final) as tmp:
            model = nnx.merge(self.graphdef, self.state, self.frozen)
            if self.lora is not None:  # the adapter, as torch/peft save it
                lora.save_adapter(model, tmp, self.lora, self.spec.policy.model)
            else:
                save_model(model, tmp)
            self.tokenizer.save_pretrained(tmp)
            save_file(_leaves_to_numpy(self.opt_state), tmp / OPTIMIZER_FILE)
            write_core(tmp)


def make_offline_stepper(
    spec: RunSpec, checkpoint: Path | None, total_steps: int
) -> JaxOfflineStepper:
    return JaxOfflineStepper(spec, checkpoint, total_steps)


def train_offline(spec: RunSpec, output: Path, **options: Any) -> dict[str, Any]:
    """Run a ``task: offline`` spec on jax (:func:`nlhf.training.offline.run_offline`)."""
    return run_offline(spec, output, backend="jax", make_stepper=make_offline_stepper, **options)
