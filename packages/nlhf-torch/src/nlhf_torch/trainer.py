"""The torch side of ``task: nash`` on language models: the :class:`TorchStepper` of the
core loop (:mod:`nlhf.training.loop`, which owns prompts, schedules, preferences, metrics,
checkpoints and the summary) and :class:`DeepSpeedStepper`, the same stepper under a
DeepSpeed ZeRO 1/2/3 engine.

Sampling: :func:`nlhf_torch.generation.generate_pairs` (one prefill, KV caches) from a
seeded ``torch.Generator`` stream, one float64 ``torch.rand(2B)`` per decoding step.
Loss: :func:`nlhf_torch.kernels.nash_md_pg_loss` or :func:`~nlhf_torch.kernels.online_ipo_loss`
per micro-batch, divided by ``grad_accum`` before ``backward``; then clipping (the gradient
norm is always measured) and one optimiser + LR-schedule step. Checkpoints hold the
policy's ``save_pretrained`` output (with LoRA the peft adapter), the tokenizer and
``torch_state.pt`` (optimizer, schedule, RNG streams, EMA); core adds ``trainer_state.json``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nlhf.errors import InputError
from nlhf.precision import check_training_dtype
from nlhf.runio import atomic_directory
from nlhf.spec.models import RunSpec
from nlhf.training import Samples, TrainerState, Update, rule_for, run_nash
from nlhf.training.algorithms import sample_layout, sppo_pairs, sppo_win_rates
from nlhf.training.protocols import Tokens, UniformsFn

from nlhf_torch import fastdecode, kernels
from nlhf_torch.checkpoint import STATE_FILE, load_state, rng_state, set_rng_state
from nlhf_torch.distributed import describe_run
from nlhf_torch.generation import generate_pairs, sequence_hidden, sequence_logits
from nlhf_torch.models import chunk_head, chunked_model_logprobs, load_models
from nlhf_torch.optim import build_optimizer, build_scheduler
from nlhf_torch.preference.scorers import build_scorer

__all__ = [
    "DeepSpeedStepper",
    "TorchStepper",
    "ema_update",
    "left_pad",
    "make_stepper",
    "token_rows",
    "train_nash",
]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Any, Any]:
    """(ids, mask) int64 of ``rows`` left-padded to the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Any, Any]:
    """(ids, mask) int64 of completions ``rows`` right-padded to the longest row."""
    width = max(max(len(r) for r in rows), 1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def token_rows(tokens: torch.Tensor, mask: torch.Tensor) -> Tokens:
    """The sampled tokens of each row (mask 1), as host lists."""
    return [t[m.bool()].tolist() for t, m in zip(tokens.cpu(), mask.cpu(), strict=True)]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ̄ ← d·θ̄ + (1 − d)·θ (Nash-EMA-PG, paper §7)."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


class TorchStepper:
    """One process, one device (see the module docstring); the factory is
    :func:`make_stepper`."""

    rank = 0
    world_size = 1
    uniforms: UniformsFn | None = None
    master_weights = False
    """Whether an engine keeps float32 master weights (then float16 parameters train)."""
    decode_path = "not sampled yet"

    def __init__(self, spec: RunSpec, checkpoint: Path | None, plugins: Any = None) -> None:
        self.spec, self.algo, self.rule = spec, spec.algorithm, rule_for(spec.algorithm.name)
        self.grad_accum = spec.training.grad_accum
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device = str(self._device)
        models = load_models(spec, policy_path=checkpoint)
        self.policy = models.policy.to(self._device)
        self.reference = models.reference.to(self._device)
        self.tokenizer = models.tokenizer
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.preference = build_scorer(spec.preference, self._device, plugins=plugins)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        tr = spec.training
        if tr.gradient_checkpointing:  # transformers' decoder layers, peft adapters included
            self.policy.activation_checkpointing_enable(  # gradient_checkpointing_enable < 5
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
            # non-reentrant checkpoints need no gradient on the embeddings' output; the hook
            # transformers adds for it would send sampling to the HF path (foreign hooks)
            self.policy.disable_input_require_grads()
        self._logprob_head = chunk_head(self.policy, tr.logprob_chunk)
        self._reference_chunked = self._logprob_head is not None and (
            chunk_head(self.reference, tr.logprob_chunk, "reference.model: ") is not None
        )
        self._kv_pool = fastdecode.KVCachePool()  # the fused decode's cache, once per run
        if self.params and not self.master_weights:
            check_training_dtype(
                self.params[0].dtype, self._device.type, optimizer=spec.training.optimizer.name
            )
        self.optimizer = build_optimizer(self.params, spec.training)
        self.scheduler = build_scheduler(self.optimizer, spec.training, spec.training.steps)
        self.ema = None
        if self.rule.opponent == "model":
            self.ema = copy.deepcopy(self.policy).eval().requires_grad_(False)
        # the game family's state (nlhf.training.algorithms), all of it checkpointed
        self.magnet: Any = None  # mpo: frozen copy of θ at the last refresh (None: μ)
        self.previous_grad: list[torch.Tensor] | None = None  # onpo: g_{t−1}
        self.anchor: dict[str, Any] | None = None  # egpo: θ_t and its optimizer state
        self._step = 0  # the step being sampled and trained
        # seeds are set after the models load, so loading cannot shift the streams
        random.seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        torch.manual_seed(spec.seed)
        self.generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        self.train_model: Any = self.policy  # the module whose forward is trained
        self._losses: list[float] = []
        self._metrics: list[dict[str, float]] = []
        self._init_engine()
        if checkpoint is not None:
            self._restore(checkpoint)

    # ----------------------------------------------------------- engine hooks
    def _init_engine(self) -> None:
        """No engine in a single process (:class:`DeepSpeedStepper` overrides it)."""

    def _restore(self, checkpoint: Path) -> None:
        """Optimizer, schedule, EMA and RNG streams of ``checkpoint``."""
        blob = self._load_blob(checkpoint)
        written_by = TrainerState.read(checkpoint).distributed
        if written_by is not None or blob.get("optimizer") is None:
            raise InputError(
                f"--resume: checkpoint {checkpoint} was written by {describe_run(written_by)}; "
                "resume it with the same `distributed` section and number of processes"
            )
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self._restore_common(blob)

    def _restore_common(self, blob: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(blob["ema"])
        game = blob.get("game") or {}
        if game.get("magnet") is not None:
            self.magnet = copy.deepcopy(self.policy).eval().requires_grad_(False)
            self.magnet.load_state_dict(game["magnet"])
        self.previous_grad = game.get("previous_grad")
        self.anchor = game.get("anchor")
        set_rng_state(blob["rng"], self.generator)

    @staticmethod
    def _load_blob(checkpoint: Path) -> dict[str, Any]:
        return load_state(checkpoint)

    def _blob(self, optimizer: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "game": {
                "magnet": self.magnet.state_dict() if self.magnet is not None else None,
                "previous_grad": self.previous_grad,
                "anchor": self.anchor,
            },
        }

    # ----------------------------------------------------------- the stepper
    def _sampling(self, step: int, offset: int, rows: int) -> dict[str, Any]:
        if self.uniforms is not None:
            tokens = self.spec.training.generation.max_new_tokens
            u = self.uniforms(step, offset, rows, tokens)
            return {"uniforms": torch.as_tensor(u, dtype=torch.float64).to(self._device)}
        return {"generator": self.generator}

    def _generate(
        self,
        input_ids: Any,
        attn: Any,
        beta: float,
        sampling: dict[str, Any],
        reference_logits: bool = True,
    ) -> Any:
        """The pair sampler's call; ``reference_logits``: μ also decodes the y rows and
        returns its logits (what the KL terms read; sppo's loss needs none)."""
        gen = self.spec.training.generation
        pairs = generate_pairs(
            self.policy,
            self.magnet if self.magnet is not None else self.reference,  # mpo: KL to m
            input_ids,
            attn,
            beta=beta,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            opponent=self.rule.opponent,
            opponent_model=self.ema,
            return_reference_logits=reference_logits,
            cache_pool=self._kv_pool,
            **sampling,
        )
        self.decode_path = pairs.decode_path
        return pairs

    def sample(self, step: int, offset: int, prompt_ids: Tokens, beta: float) -> Samples:
        self._step = step
        if self.rule.loss == "sppo":
            return self._sample_k(step, offset, prompt_ids)
        input_ids, attn = left_pad(prompt_ids, self.pad_id, self._device)
        sampling = self._sampling(step, offset, len(prompt_ids))
        pairs = self._generate(input_ids, attn, beta, sampling)
        return self._samples(list(range(len(prompt_ids))), input_ids, attn, pairs)

    def _sample_k(self, step: int, offset: int, prompt_ids: Tokens) -> Samples:
        """sppo: K = ``num_samples`` responses per prompt from one pair-sampler call over
        the prompts repeated ⌈K/2⌉ times (:func:`nlhf.training.algorithms.sample_layout`);
        the rows handed to the loop are every pair of each prompt's responses."""
        n, k = len(prompt_ids), self.rule.num_samples(self.algo)
        m, layout = sample_layout(n, k)
        input_ids, attn = left_pad(list(prompt_ids) * m, self.pad_id, self._device)
        sampling = self._sampling(step, offset, n * m)
        pairs = self._generate(input_ids, attn, 0.0, sampling, reference_logits=False)
        drawn = (token_rows(pairs.y, pairs.y_mask), token_rows(pairs.y_prime, pairs.y_prime_mask))
        responses = [drawn[which][row] for row, which in layout]
        comp, cmask = right_pad(responses, self.pad_id, self._device)
        index = torch.tensor([row for row, _ in layout], device=self._device)
        rows, ys, yps = [], [], []
        for i in range(n):
            for a, b in sppo_pairs(k):
                rows.append(i)
                ys.append(responses[i * k + a])
                yps.append(responses[i * k + b])
        payload = ("sppo", input_ids[index], attn[index], comp, cmask)
        return Samples(rows, ys, yps, payload, generated_tokens=sum(map(len, responses)))

    def select(self, samples: Samples, start: int, stop: int) -> Samples:
        """Rows start..stop of a generation call: one micro-batch of the loss."""
        if self.rule.loss == "sppo":  # rows are pairs; the payload holds K rows per prompt
            k = self.rule.num_samples(self.algo)
            per = len(sppo_pairs(k))
            first, last = start // per, stop // per
            cut = slice(first * k, last * k)
            payload = (samples.payload[0], *(a[cut] for a in samples.payload[1:]))
            rows = [r - first for r in samples.rows[start:stop]]
            assert samples.y_prime is not None
            return Samples(rows, samples.y[start:stop], samples.y_prime[start:stop], payload)
        input_ids, attn, pairs = samples.payload
        rows = slice(start, stop)
        ref = pairs.reference_logits
        part = dataclasses.replace(
            pairs,
            y=pairs.y[rows],
            y_mask=pairs.y_mask[rows],
            y_prime=pairs.y_prime[rows],
            y_prime_mask=pairs.y_prime_mask[rows],
            reference_logits=None if ref is None else ref[rows],
        )
        y_prime = samples.y_prime[rows] if samples.y_prime is not None else None
        payload = (input_ids[rows], attn[rows], part)
        return Samples(list(range(stop - start)), samples.y[rows], y_prime, payload)

    def _samples(self, rows: list[int], input_ids: Any, attn: Any, pairs: Any) -> Samples:
        y_prime = None
        if self.rule.needs_y_prime:
            y_prime = token_rows(pairs.y_prime, pairs.y_prime_mask)
        return Samples(rows, token_rows(pairs.y, pairs.y_mask), y_prime, (input_ids, attn, pairs))

    def _compute(self) -> contextlib.AbstractContextManager[Any]:
        """``training.precision``: bf16-mixed runs the loss's forward in ``torch.autocast``
        (bfloat16 matmuls; the kernels' log-softmax upcasts to float32) over float32
        parameters, so gradients and optimizer state stay float32."""
        if self.spec.training.precision == "bf16-mixed":
            return torch.autocast(device_type=self._device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _logprob_chunk(self, completions: torch.Tensor) -> int | None:
        if self._logprob_head is None:
            return None
        vocab = int(self._logprob_head[0].weight.shape[0])
        rows, positions = completions.shape
        return self.spec.training.logprob_chunk_size(rows, positions, vocab)

    def _frozen_logprobs(self, model: Any, input_ids: Any, attn: Any, comp: Any, cmask: Any) -> Any:
        """log μ(y|x) (B,) of a frozen model without gradient: under ``training.logprob_chunk``
        from its final hidden states ``chunk`` positions at a time
        (:func:`kernels.chunked_token_logprobs`; a LoRA policy's μ is the policy with its
        adapter disabled), so no B×T×V logits; else from the full logits."""
        chunk = self._logprob_chunk(comp) if self._reference_chunked else None
        with torch.no_grad():
            if chunk is None:
                return self._logprobs(model, input_ids, attn, comp, cmask)
            temp = self.spec.training.generation.temperature
            return chunked_model_logprobs(model, input_ids, attn, comp, cmask, temp, chunk)

    def _decoded_logprobs(self, reference_logits: Any, comp: Any, cmask: Any) -> Any:
        """log μ(y_n|·) (B, T) from the decode's reference logits, without gradient;
        under ``training.logprob_chunk`` their log-softmax runs chunk by chunk
        (:func:`kernels.chunked_logits_logprobs`)."""
        temp = self.spec.training.generation.temperature
        chunk = self._logprob_chunk(comp)
        with torch.no_grad():
            if chunk is None:
                return kernels.token_logprobs(reference_logits, comp, temp)
            return kernels.chunked_logits_logprobs(reference_logits, comp, temp, chunk)

    def _chunked_logprobs(
        self, input_ids: Any, attn: Any, y: Any, ym: Any, chunk: int, reference_logits: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token log-probs (B, T) of the trained policy (and exact KL terms against
        ``reference_logits``) without B×T×V logits (:func:`kernels.chunked_token_logprobs`)."""
        assert self._logprob_head is not None
        head, softcap = self._logprob_head
        hidden = sequence_hidden(self.train_model, input_ids, attn, y, ym)
        temp = self.spec.training.generation.temperature
        return kernels.chunked_token_logprobs(
            hidden, head, y, temp, chunk, softcap=softcap, reference_logits=reference_logits
        )

    def accumulate(self, samples: Samples, preference: np.ndarray, tau: float) -> None:
        if self.rule.loss in ("egpo", "inpo", "sppo"):
            with self._at_anchor():  # egpo's full step: the gradient at θ_t
                with self._compute():
                    loss, metrics = self._game_loss(samples.payload, preference, tau)
                self._backward(loss)
            self._losses.append(float(loss.detach()))
            self._metrics.append({k: float(v) for k, v in metrics.items()})
            return
        input_ids, attn, pairs = samples.payload
        chunk = self._logprob_chunk(pairs.y)
        with self._compute():
            if chunk is None:
                loss, metrics = self._loss(input_ids, attn, pairs, preference, tau)
            else:
                loss, metrics = self._chunked_loss(input_ids, attn, pairs, preference, tau, chunk)
        self._backward(loss)
        self._losses.append(float(loss.detach()))
        self._metrics.append({k: float(v) for k, v in metrics.items()})

    def _chunked_loss(
        self, input_ids: Any, attn: Any, pairs: Any, preference: np.ndarray, tau: float, chunk: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`_loss` through :meth:`_chunked_logprobs` (``training.logprob_chunk``); μ's
        log-probs through :meth:`_frozen_logprobs` and :meth:`_decoded_logprobs`."""
        pref = torch.as_tensor(preference, dtype=torch.float64).to(self._device)
        ref = pairs.reference_logits
        estimator = getattr(self.algo, "kl_estimator", "sampled")
        exact_ref = ref if self.rule.loss != "online_ipo" and estimator == "exact" else None
        lp, exact = self._chunked_logprobs(input_ids, attn, pairs.y, pairs.y_mask, chunk, exact_ref)
        seq_lp = (lp * pairs.y_mask.to(lp.dtype)).sum(-1)
        if self.rule.loss == "online_ipo":
            yp, ypm = pairs.y_prime, pairs.y_prime_mask
            lp_p, _ = self._chunked_logprobs(input_ids, attn, yp, ypm, chunk, None)
            lq_p = self._frozen_logprobs(self.reference, input_ids, attn, yp, ypm)
            lq_y = self._sequence(self._decoded_logprobs(ref, pairs.y, pairs.y_mask), pairs.y_mask)
            seq_lp_p = (lp_p * ypm.to(lp_p.dtype)).sum(-1)
            return kernels.online_ipo_loss_from_logprobs(seq_lp, lq_y, seq_lp_p, lq_p, pref, tau)
        lq = None if exact is not None else self._decoded_logprobs(ref, pairs.y, pairs.y_mask)
        kl_terms = kernels.kl_from_logprobs(lp, lq, pairs.y_mask, estimator, exact)
        return kernels.nash_md_pg_loss_from_logprobs(seq_lp, kl_terms, pref, tau)

    def _loss(
        self, input_ids: Any, attn: Any, pairs: Any, preference: np.ndarray, tau: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The algorithm's loss kernel on the full logits of one micro-batch."""
        temp = self.spec.training.generation.temperature
        logits = sequence_logits(self.train_model, input_ids, attn, pairs.y, pairs.y_mask)
        pref = torch.as_tensor(preference, dtype=torch.float64).to(self._device)
        if self.rule.loss == "online_ipo":
            logits_p = sequence_logits(
                self.train_model, input_ids, attn, pairs.y_prime, pairs.y_prime_mask
            )
            with torch.no_grad():
                ref_p = sequence_logits(
                    self.reference, input_ids, attn, pairs.y_prime, pairs.y_prime_mask
                )
            loss, metrics = kernels.online_ipo_loss(
                logits,
                pairs.reference_logits,
                pairs.y,
                pairs.y_mask,
                logits_p,
                ref_p,
                pairs.y_prime,
                pairs.y_prime_mask,
                pref,
                tau,
                temp,
            )
        else:
            loss, metrics = kernels.nash_md_pg_loss(
                logits,
                pairs.reference_logits,
                pairs.y,
                pairs.y_mask,
                pref,
                tau,
                temp,
                self.algo.kl_estimator,
            )
        return loss, metrics

    @staticmethod
    def _sequence(token_lp: torch.Tensor, cmask: torch.Tensor) -> torch.Tensor:
        """Σ_n m_n log π(y_n|·) (B,) of token log-probs (B, T)."""
        return (token_lp * cmask.to(token_lp.dtype)).sum(-1)

    def _logprobs(self, model: Any, input_ids: Any, attn: Any, comp: Any, cmask: Any) -> Any:
        """log π(y|x) (B,) of completions ``comp`` under ``model`` at the sampling
        temperature."""
        logits = sequence_logits(model, input_ids, attn, comp, cmask)
        return kernels.sequence_logprobs(
            logits, comp, cmask, self.spec.training.generation.temperature
        )

    def _policy_logprobs(self, input_ids: Any, attn: Any, comp: Any, cmask: Any) -> Any:
        """log π_θ(y|x) (B,) of the trained model with gradient: through
        :meth:`_chunked_logprobs` when ``training.logprob_chunk`` applies, else from the
        full logits (:meth:`_logprobs`)."""
        chunk = self._logprob_chunk(comp)
        if chunk is None:
            return self._logprobs(self.train_model, input_ids, attn, comp, cmask)
        lp, _ = self._chunked_logprobs(input_ids, attn, comp, cmask, chunk, None)
        return (lp * cmask.to(lp.dtype)).sum(-1)

    def _game_loss(
        self, payload: Any, preference: np.ndarray, tau: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of egpo, inpo/onpo or sppo on one micro-batch (nlhf.training.algorithms);
        π_t's log-probs are the policy's, detached."""
        pref = torch.as_tensor(preference, dtype=torch.float64).to(self._device)
        if self.rule.loss == "sppo":
            _, input_ids, attn, comp, cmask = payload
            k = self.rule.num_samples(self.algo)
            win = torch.as_tensor(sppo_win_rates(preference, k)).to(self._device)
            lp = self._policy_logprobs(input_ids, attn, comp, cmask)
            lq = self._frozen_logprobs(self.reference, input_ids, attn, comp, cmask)
            loss, metrics = kernels.sppo_loss(lp, lp.detach(), win, self.algo.eta)
            extra = {"preference": pref.mean(), "kl": (lp - lq).mean(), "logprob": lp.mean()}
            return loss, {**metrics, **{key: v.detach() for key, v in extra.items()}}
        input_ids, attn, pairs = payload
        y, ym, yp, ypm = pairs.y, pairs.y_mask, pairs.y_prime, pairs.y_prime_mask
        lp_y = self._policy_logprobs(input_ids, attn, y, ym)
        lp_p = self._policy_logprobs(input_ids, attn, yp, ypm)
        lq_y = self._sequence(self._decoded_logprobs(pairs.reference_logits, y, ym), ym)
        lq_p = self._frozen_logprobs(self.reference, input_ids, attn, yp, ypm)
        if self.rule.loss == "egpo":
            return kernels.egpo_loss(lp_y, lp_p, lq_y, lq_p, pref, tau)
        anchor_y, anchor_p = lp_y.detach(), lp_p.detach()
        return kernels.inpo_loss(
            lp_y, lp_p, anchor_y, anchor_p, lq_y, lq_p, pref, tau, self.algo.eta
        )

    def _egpo_full_step(self) -> bool:
        """egpo: whether the current step is a full step (even; odd steps are half steps)."""
        return self.rule.mechanics == "extragradient" and self._step % 2 == 0

    @contextlib.contextmanager
    def _at_anchor(self) -> Any:
        """egpo's full step: the parameters hold θ_t (the anchor) inside the block and
        θ_{t+½}, which samples the step's pairs, again after it."""
        if not self._egpo_full_step():
            yield
            return
        assert self.anchor is not None, "egpo: a full step without its half step"
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.anchor["params"], strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current, strict=True):
                    p.copy_(c)

    def _backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def apply(self) -> Update:
        mechanics = self.rule.mechanics
        if mechanics == "optimistic":  # onpo: the optimizer receives 2·g_t − g_{t−1}
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            current = [g.detach().clone() for g in grads]
            if self.previous_grad is not None:
                for p, g, g_prev in zip(self.params, current, self.previous_grad, strict=True):
                    p.grad = 2.0 * g - g_prev.to(g.device)
            self.previous_grad = current
        if mechanics == "extragradient":
            if self._egpo_full_step():  # θ_{t+1} = θ_t − step(∇ at θ_t of θ_{t+½}'s pairs)
                assert self.anchor is not None
                with torch.no_grad():
                    for p, a in zip(self.params, self.anchor["params"], strict=True):
                        p.copy_(a)
                self.optimizer.load_state_dict(self.anchor["optimizer"])
                self.anchor = None
            else:  # half step: keep θ_t and the optimizer state it was taken from
                self.anchor = {
                    "params": [p.detach().clone() for p in self.params],
                    "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                }
        max_norm = self.spec.training.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(
            self.params, max_norm if max_norm is not None else math.inf
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        every = getattr(self.algo, "magnet_every", None)
        if mechanics == "magnet" and every is not None and self._step % every == 0:
            self._refresh_magnet()
        return self._update(float(norm))

    @torch.no_grad()
    def _refresh_magnet(self) -> None:
        """mpo: m ← a frozen copy of θ."""
        if self.magnet is None:
            self.magnet = copy.deepcopy(self.policy).eval().requires_grad_(False)
        else:
            self.magnet.load_state_dict(self.policy.state_dict())

    def _update(self, grad_norm: float | None) -> Update:
        update = Update(self._losses, self._metrics, grad_norm)
        self._losses, self._metrics = [], []
        return update

    def update_ema(self, decay: float) -> None:
        assert self.ema is not None
        ema_update(self.ema, self.policy, decay)

    def sampling_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def abandon_step(self, sampling_state: torch.Tensor) -> None:
        """Under DeepSpeed the engine's partial gradients stay in its buffers: they are not
        part of a checkpoint, and the run stops after writing one."""
        self.optimizer.zero_grad(set_to_none=True)
        self._losses, self._metrics = [], []
        self.generator.set_state(sampling_state)

    def all_reduce(self, values: Sequence[float], op: Literal["sum", "max"] = "sum") -> list[float]:
        return [float(v) for v in values]

    def describe(self) -> dict[str, Any] | None:
        return None

    def _write_files(self, directory: Path, optimizer: dict[str, Any] | None) -> None:
        self.policy.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        torch.save(self._blob(optimizer), Path(directory) / STATE_FILE)

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        with atomic_directory(final) as tmp:
            self._write_files(tmp, self.optimizer.state_dict())
            write_core(tmp)

    # ----------------------------------------------------------- probe
    def _model(self, which: str) -> Any:
        return self.policy if which == "policy" else self.reference

    @torch.no_grad()
    def sequence_logprobs(
        self,
        prompt_ids: Tokens,
        completion_ids: Tokens,
        *,
        model: Literal["policy", "reference"],
        temperature: float,
    ) -> np.ndarray:
        net = self._model(model)
        was_training = net.training
        net.eval()
        ids, mask = left_pad(prompt_ids, self.pad_id, self._device)
        comp, cmask = right_pad(completion_ids, self.pad_id, self._device)
        logits = sequence_logits(net, ids, mask, comp, cmask)
        net.train(was_training)
        logprobs = kernels.sequence_logprobs(logits.double(), comp, cmask, temperature)
        return logprobs.detach().cpu().numpy()

    def sample_completions(
        self, prompt_ids: Tokens, *, temperature: float, max_new_tokens: int, seed: int
    ) -> Tokens:
        ids, mask = left_pad(prompt_ids, self.pad_id, self._device)
        pairs = generate_pairs(
            self.policy,
            self.policy,
            ids,
            mask,
            beta=0.0,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            opponent="policy",
            generator=torch.Generator(device="cpu").manual_seed(seed),
            **self._probe_sampling(),
        )
        return token_rows(pairs.y, pairs.y_mask)

    def _probe_sampling(self) -> dict[str, Any]:
        return {}


class DeepSpeedStepper(TorchStepper):
    """:class:`TorchStepper` under a DeepSpeed engine (:func:`nlhf_torch.distributed.init_engine`).

    Each rank samples its contiguous share of every micro-batch with the uniforms the
    single-process run would draw for those rows (so ZeRO 1/2/3 reproduce the single-process
    losses), ``engine.backward`` / ``engine.step`` per micro-batch (the engine divides by
    ``grad_accum`` and steps optimizer and schedule at the boundary), EMA updates gather each
    parameter under ZeRO-3, and checkpoints add the engine's shards under ``deepspeed/``."""

    master_weights = True  # DeepSpeed's fp16/bf16 sections keep float32 master weights

    def _init_engine(self) -> None:
        from nlhf_torch.distributed import init_engine

        # refused by the spec (located by nlhf validate): generation batches other than the
        # micro-batch (nlhf.spec.capabilities), algorithms with stepper state of their own
        self._logprob_head = None  # logprob_chunk: auto is off (spec: no explicit chunk)
        self.ds = init_engine(self.spec, self.policy, self.params, self.optimizer, self.scheduler)
        self.engine, self.optimizer, self.scheduler = (
            self.ds.engine,
            self.ds.optimizer,
            self.ds.scheduler,
        )
        self.rank, self.world_size = self.ds.rank, self.ds.world_size
        self.policy = self.ds.module
        self.train_model = self.engine

    def _restore(self, checkpoint: Path) -> None:
        blob = self._load_blob(checkpoint)
        saved = TrainerState.read(checkpoint).distributed
        if saved is not None:  # the engine's shards are tagged with the directory name
            saved = {**saved, "tag": Path(checkpoint).name}
        self.ds.load(saved, checkpoint)
        self._restore_common(blob)

    def _all_finished(self, local: bool) -> bool:
        return self.all_reduce([0.0 if local else 1.0])[0] == 0.0

    def sample(self, step: int, offset: int, prompt_ids: Tokens, beta: float) -> Samples:
        rows = len(prompt_ids)
        per_rank = rows // self.world_size
        shard = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        input_ids, attn = left_pad(prompt_ids, self.pad_id, self._device)  # global width
        input_ids, attn = input_ids[shard], attn[shard]
        state = self.generator.get_state()
        gen = self.spec.training.generation
        u = torch.rand(gen.max_new_tokens, 2 * rows, dtype=torch.float64, generator=self.generator)
        cols = list(range(rows))[shard]
        cols = cols + [rows + c for c in cols]
        sampling = {
            "uniforms": u[:, cols].T.contiguous().to(self._device),
            "all_finished": self._all_finished,
        }
        pairs = self._generate(input_ids, attn, beta, sampling)
        # leave the stream where the single-process run would: as many draws of 2·rows as
        # decoding steps (every rank decodes the same number, see ``all_finished``)
        self.generator.set_state(state)
        torch.rand(pairs.y.shape[1], 2 * rows, dtype=torch.float64, generator=self.generator)
        return self._samples(list(range(shard.start, shard.stop)), input_ids, attn, pairs)

    def _backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def apply(self) -> Update:
        norm = self.engine.get_global_grad_norm()
        return self._update(None if norm is None else float(norm))

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """Under ZeRO-3 each policy parameter is gathered (one at a time) for its update,
        so the full EMA copy on every rank agrees."""
        assert self.ema is not None
        for p_ema, p in zip(self.ema.parameters(), self.policy.parameters(), strict=True):
            with self.ds.gathered([p]):
                p_ema.mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def all_reduce(self, values: Sequence[float], op: Literal["sum", "max"] = "sum") -> list[float]:
        return self.ds.all_reduce(values, op)

    def describe(self) -> dict[str, Any] | None:
        return self.ds.describe()

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        """DeepSpeed's shards under ``deepspeed/<tag>`` from every rank, plus consolidated
        safetensors, tokenizer and states from rank 0 (:meth:`Engine.save`)."""
        tag = final.name

        def write(tmp: Path) -> None:
            self._write_files(tmp, None)
            write_core(tmp)

        self.ds.save(final, write, tag)

    def _probe_sampling(self) -> dict[str, Any]:
        return {"all_finished": self._all_finished}


def make_stepper(spec: RunSpec, checkpoint: Path | None, plugins: Any = None) -> TorchStepper:
    """The stepper of ``spec``: :class:`DeepSpeedStepper` under ``distributed.engine:
    deepspeed``, else :class:`TorchStepper`."""
    engine = spec.distributed.engine
    if engine == "deepspeed":
        return DeepSpeedStepper(spec, checkpoint, plugins)
    if engine != "none":
        raise InputError(
            f"distributed.engine: {engine!r} is not a torch engine; use deepspeed or remove "
            "the distributed section"
        )
    return TorchStepper(spec, checkpoint, plugins)


def train_nash(spec: RunSpec, output: Path, **options: Any) -> dict[str, Any]:
    """Run a ``task: nash`` LLM spec on torch (:func:`nlhf.training.run_nash`)."""
    return run_nash(spec, output, backend="torch", make_stepper=make_stepper, **options)
