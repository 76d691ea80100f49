"""``task: evaluate`` on the torch backend: win-rates between LLM policies
(docs/evaluation.md).

The method, the caches (``responses/``, ``comparisons/``), the output files and the
spec defaulting are shared with every backend: :mod:`nlhf.evaluation.llm` (win-rate
matrix P(π_column ≻ π_row) from ``eval.samples_per_prompt`` responses per prompt and
policy, each policy on its own random stream; per policy KL(π_T‖μ_T) ≈ mean of
log π(y|x) − log μ(y|x) over its samples and the mean length). This module supplies the
torch parts: :class:`Sampler` (responses and their log-probs under the policy and μ, from
:func:`nlhf_torch.generation.generate_pairs` with y and y' both from the policy, β = 0)
and the preference (:func:`nlhf_torch.preference.scorers.build_scorer`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from nlhf.errors import InputError
from nlhf.evaluation.llm import (
    EvalBackend,
    PolicyEntry,
    complete_spec,
    evaluate_llm,
    resolve_policy,
)

__all__ = ["PolicyEntry", "Sampler", "complete_spec", "evaluate_spec", "resolve_policy"]


class Sampler:
    """Samples and scores responses of one policy against the reference μ."""

    def __init__(self, spec: Any, reference: Any, prompts: list[str], device: torch.device):
        self.spec = spec
        self.reference = reference
        self.prompts = prompts
        self.device = device

    @torch.no_grad()
    def sample(self, entry: PolicyEntry, seed: int) -> list[dict[str, Any]]:
        """``samples_per_prompt`` responses per prompt from ``entry``, drawn from a
        generator seeded by ``seed`` (distinct per policy: :func:`nlhf.evaluation.llm.
        policy_stream`); rows with the keys :data:`nlhf.evaluation.llm.RESPONSE_KEYS`."""
        from nlhf.data.tokenizer import tokenize_prompts
        from nlhf.training.loop import decode

        from nlhf_torch.generation import generate_pairs, sequence_logits
        from nlhf_torch.kernels import sequence_logprobs
        from nlhf_torch.models import load_checkpoint_policy, load_tokenizer
        from nlhf_torch.trainer import left_pad, token_rows

        spec = self.spec
        gen = spec.training.generation
        temp = gen.temperature
        n = spec.eval.samples_per_prompt
        tok_path = entry.path if (entry.path / "tokenizer_config.json").is_file() else None
        tokenizer = load_tokenizer(
            str(tok_path or spec.policy.tokenizer or spec.policy.model), "policy.tokenizer"
        )
        model = load_checkpoint_policy(
            entry.path,
            entry.base_model,
            spec.policy.dtype,
            f"eval.policies: {entry.name}",
            trust_remote_code=spec.policy.trust_remote_code,
        )
        model.to(self.device).eval()
        _, ids = tokenize_prompts(self.prompts, tokenizer, spec.data, spec.policy.chat_template)
        if len(ids) != len(self.prompts):
            raise InputError("data.truncation: drop is not supported by evaluation; use left")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        pairs_per_prompt = math.ceil(n / 2)
        jobs = [(x, r) for r in range(pairs_per_prompt) for x in range(len(ids))]
        batch = spec.training.batch_size
        rows: list[dict[str, Any]] = []
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            input_ids, attn = left_pad(
                [ids[x] for x, _ in chunk], tokenizer.pad_token_id, self.device
            )
            out = generate_pairs(
                model,
                model,
                input_ids,
                attn,
                beta=0.0,
                max_new_tokens=gen.max_new_tokens,
                temperature=temp,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                opponent="policy",
                generator=generator,
            )
            for half, (toks, mask) in enumerate(
                ((out.y, out.y_mask), (out.y_prime, out.y_prime_mask))
            ):
                lp = sequence_logprobs(
                    sequence_logits(model, input_ids, attn, toks, mask), toks, mask, temp
                )
                lq = sequence_logprobs(
                    sequence_logits(self.reference, input_ids, attn, toks, mask), toks, mask, temp
                )
                texts = decode(tokenizer, token_rows(toks, mask))
                for b, (x, r) in enumerate(chunk):
                    s = 2 * r + half
                    if s >= n:
                        continue
                    rows.append(
                        {
                            "prompt_index": x,
                            "sample": s,
                            "response": texts[b],
                            "length": int(mask[b].sum()),
                            "logp_policy": float(lp[b]),
                            "logp_reference": float(lq[b]),
                            "tokens": toks[b][mask[b].bool()].tolist(),
                        }
                    )
        rows.sort(key=lambda r: (r["prompt_index"], r["sample"]))
        return rows


def evaluate_spec(spec: Any, output: Path | None = None, *, plugins: Any = None) -> dict[str, Any]:
    """Run a ``task: evaluate`` spec on torch (:func:`nlhf.evaluation.llm.evaluate_llm`);
    ``plugins`` overrides the process-wide plugin set (tests)."""
    from nlhf_torch.models import load_causal_lm
    from nlhf_torch.preference.scorers import build_scorer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def make_sampler(spec: Any, ref_path: str, prompts: list[str]) -> Sampler:
        reference = load_causal_lm(ref_path, spec.policy.dtype, "reference.model")
        reference.to(device).eval().requires_grad_(False)
        return Sampler(spec, reference, prompts, device)

    backend = EvalBackend(
        name="torch",
        device=str(device),
        make_sampler=make_sampler,
        make_preference=lambda spec: build_scorer(spec.preference, device, plugins=plugins),
    )
    return evaluate_llm(spec, output, backend)
