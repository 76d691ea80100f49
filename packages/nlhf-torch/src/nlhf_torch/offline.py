"""The torch side of ``task: offline`` (DPO and IPO on fixed pairs): the
:class:`TorchOfflineStepper` of the core loop (:mod:`nlhf.training.offline`, which owns the
pairs, their order, the reference cache, metrics, checkpoints and the summary).

One forward pass per micro-batch scores both responses: the B prompts twice (left-padded)
followed by the B chosen then the B rejected responses (right-padded),
:func:`nlhf_torch.generation.sequence_logits`; log-probs at the spec's generation
temperature (:func:`nlhf_torch.kernels.sequence_logprobs`; under ``training.logprob_chunk``
from the final hidden states chunk by chunk, :func:`nlhf_torch.kernels.chunked_sequence_logprobs`,
for the policy and the reference alike, so no B×T×V logits). The loss is
:func:`nlhf_torch.kernels.dpo_loss` or :func:`~nlhf_torch.kernels.offline_ipo_loss` with the
cached reference log-probs, times the micro-batch's weight before ``backward``; then
clipping (the norm is always measured) and one optimiser + LR-schedule step. Checkpoints
are a Nash run's (:mod:`nlhf_torch.trainer`): ``save_pretrained`` weights, the tokenizer and
``torch_state.pt`` (optimizer, schedule, RNG streams); core adds ``trainer_state.json``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nlhf.precision import check_training_dtype
from nlhf.runio import atomic_directory
from nlhf.spec.models import RunSpec
from nlhf.training import Update
from nlhf.training.offline import PairTokens, run_offline

from nlhf_torch import kernels
from nlhf_torch.checkpoint import STATE_FILE, load_state, rng_state, set_rng_state
from nlhf_torch.generation import sequence_logits
from nlhf_torch.models import chunk_head, chunked_model_logprobs, load_models
from nlhf_torch.optim import build_optimizer, build_scheduler
from nlhf_torch.trainer import left_pad, right_pad

__all__ = ["TorchOfflineStepper", "make_offline_stepper", "train_offline"]


class TorchOfflineStepper:
    """One process, one device (module docstring); :class:`nlhf.training.offline.OfflineStepper`."""

    rank = 0
    world_size = 1

    def __init__(self, spec: RunSpec, checkpoint: Path | None, total_steps: int) -> None:
        assert spec.algorithm is not None
        self.spec = spec
        self.loss_fn = (
            kernels.dpo_loss if spec.algorithm.name == "dpo" else kernels.offline_ipo_loss
        )
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device = str(self._device)
        models = load_models(spec, policy_path=checkpoint)
        self.policy = models.policy.to(self._device)
        self.reference = models.reference.to(self._device)
        self.tokenizer = models.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        chunks = spec.training.logprob_chunk  # the LM heads for chunked log-probs, or None
        self._heads = {
            "policy": chunk_head(self.policy, chunks, "policy.model: "),
            "reference": chunk_head(self.reference, chunks, "reference.model: "),
        }
        if self.params:
            check_training_dtype(
                self.params[0].dtype, self._device.type, optimizer=spec.training.optimizer.name
            )
        self.optimizer = build_optimizer(self.params, spec.training)
        self.scheduler = build_scheduler(self.optimizer, spec.training, total_steps)
        random.seed(spec.seed)  # after the models load, so loading cannot shift the streams
        np.random.seed(spec.seed % 2**32)
        torch.manual_seed(spec.seed)
        self._losses: list[float] = []
        self._metrics: list[dict[str, float]] = []
        if checkpoint is not None:
            blob = load_state(checkpoint)
            self.optimizer.load_state_dict(blob["optimizer"])
            self.scheduler.load_state_dict(blob["scheduler"])
            set_rng_state(blob["rng"])

    def _logprobs(
        self, which: Literal["policy", "reference"], pairs: PairTokens
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π(y_w|x), log π(y_l|x)) of the policy or the reference, (B,) each, from one
        forward pass: full logits, or under ``training.logprob_chunk`` the final hidden
        states through the LM head chunk by chunk (module docstring)."""
        net = self.policy if which == "policy" else self.reference
        ids, mask = left_pad(pairs.prompt * 2, self.pad_id, self._device)
        comp, cmask = right_pad(pairs.chosen + pairs.rejected, self.pad_id, self._device)
        temperature = self.spec.training.generation.temperature
        chunk, head = None, self._heads[which]
        if head is not None:
            rows, positions = comp.shape
            vocab = int(head[0].weight.shape[0])
            chunk = self.spec.training.logprob_chunk_size(rows, positions, vocab)
        if chunk is None:
            logits = sequence_logits(net, ids, mask, comp, cmask)
            logprobs = kernels.sequence_logprobs(logits, comp, cmask, temperature)
        else:  # a LoRA policy's μ: the policy with its adapter off
            logprobs = chunked_model_logprobs(net, ids, mask, comp, cmask, temperature, chunk)
        return logprobs[: len(pairs)], logprobs[len(pairs) :]

    @torch.no_grad()
    def pair_logprobs(
        self, pairs: PairTokens, *, model: Literal["policy", "reference"]
    ) -> tuple[np.ndarray, np.ndarray]:
        net = self.policy if model == "policy" else self.reference
        was_training = net.training
        net.eval()
        chosen, rejected = self._logprobs(model, pairs)
        net.train(was_training)
        return chosen.double().cpu().numpy(), rejected.double().cpu().numpy()

    def accumulate(
        self,
        pairs: PairTokens,
        reference: tuple[np.ndarray, np.ndarray],
        tau: float,
        weight: float,
    ) -> None:
        chosen, rejected = self._logprobs("policy", pairs)
        ref_c, ref_r = (torch.as_tensor(r, dtype=torch.float64).to(self._device) for r in reference)
        loss, metrics = self.loss_fn(chosen, rejected, ref_c, ref_r, tau)
        (loss * weight).backward()
        self._losses.append(float(loss.detach()))
        self._metrics.append({k: float(v) for k, v in metrics.items()})

    def apply(self) -> Update:
        max_norm = self.spec.training.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(
            self.params, max_norm if max_norm is not None else math.inf
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        update = Update(self._losses, self._metrics, float(norm))
        self._losses, self._metrics = [], []
        return update

    def gradients(self) -> dict[str, np.ndarray]:
        """The gradient accumulated since the last :meth:`apply`, float64 by the
        parameters' names (test seam: compared with finite differences of the oracle)."""
        return {
            name: p.grad.detach().cpu().numpy().astype(np.float64)  # a copy: clipping is in place
            for name, p in self.policy.named_parameters()
            if p.grad is not None
        }

    def all_reduce(self, values: Sequence[float], op: Literal["sum", "max"] = "sum") -> list[float]:
        return [float(v) for v in values]

    def describe(self) -> dict[str, Any] | None:
        return None

    def sampling_state(self) -> None:
        return None  # offline steps sample nothing

    def abandon_step(self, state: None) -> None:
        """Nothing to undo: an offline step needs no preference, so none is abandoned."""

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        blob = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
        }
        with atomic_directory(final) as tmp:
            self.policy.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            torch.save(blob, Path(tmp) / STATE_FILE)
            write_core(tmp)


def make_offline_stepper(
    spec: RunSpec, checkpoint: Path | None, total_steps: int
) -> TorchOfflineStepper:
    return TorchOfflineStepper(spec, checkpoint, total_steps)


def train_offline(spec: RunSpec, output: Path, **options: Any) -> dict[str, Any]:
    """Run a ``task: offline`` spec on torch (:func:`nlhf.training.offline.run_offline`)."""
    return run_offline(spec, output, backend="torch", make_stepper=make_offline_stepper, **options)
