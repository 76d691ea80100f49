"""Answer log-probabilities of a transformers model on the quickstart prompts (torch):
the SFT objective of :func:`nlhf_quickstart.assets.prepare_assets` and its check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from nlhf_torch.generation import sequence_logits
from nlhf_torch.kernels import sequence_logprobs


def _device(model: Any) -> torch.device:
    params = list(model.parameters())
    return params[0].device if params else torch.device("cpu")


def answer_batch(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every prompt × answer pair as one row, prompt-major: left-padded prompt ids and
    mask, right-padded completion ids (answer tokens + EOS) and mask."""
    eos = tokenizer.eos_token_id
    p_ids = [tokenizer(x)["input_ids"] for x in prompts]
    a_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers]
    rows_p = [{"input_ids": p} for p in p_ids for _ in answers]
    rows_a = [{"input_ids": a} for _ in p_ids for a in a_ids]
    left = tokenizer.pad(rows_p, padding_side="left", return_tensors="pt")
    right = tokenizer.pad(rows_a, padding_side="right", return_tensors="pt")
    return (
        left["input_ids"].to(device),
        left["attention_mask"].to(device),
        right["input_ids"].to(device),
        right["attention_mask"].to(device),
    )


def answer_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    temperature: float,
) -> torch.Tensor:
    """log π(answer + EOS | x) for every prompt × answer, flat (X·K,), from one
    teacher-forced forward: Σ_n log_softmax(ℓ_n/T)[y_n] (with gradient when enabled)."""
    ids, mask, comp, cmask = answer_batch(tokenizer, prompts, answers, _device(model))
    logits = sequence_logits(model, ids, mask, comp, cmask)
    return sequence_logprobs(logits, comp, cmask, temperature)


def answer_probs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    temperature: float,
) -> np.ndarray:
    """Exact π(answer + EOS | x) at ``temperature``, shape (X, K)."""
    with torch.no_grad():
        lp = answer_logprobs(model, tokenizer, prompts, answers, temperature)
    return lp.exp().double().cpu().numpy().reshape(len(prompts), len(answers))
