"""``task: evaluate`` on the jax backend: win-rates between LLM policies (docs/evaluation.md).

The method, the caches (``responses/``, ``comparisons/``), the output files and the spec
defaulting are shared with torch: :mod:`nlhf.evaluation.llm` (win-rate matrix
P(π_column ≻ π_row) from ``eval.samples_per_prompt`` responses per prompt and policy, each
policy on its own random stream; per policy KL(π_T‖μ_T) ≈ mean of log π(y|x) − log μ(y|x)
over its samples, and the mean length). This module supplies the jax parts:

- :class:`JaxSampler`: the policy (a Flax NNX Llama/Qwen2, :func:`nlhf_jax.models.
  load_model`) samples two responses per prompt per call of
  :func:`nlhf_jax.generation.generate_pairs` (``opponent="policy"``: y and y' both from
  π_T = softmax(ℓ_π/T)), then one jitted forward pass each through the policy and the
  reference scores them: log π(y|x) = Σ_n m_n log_softmax(ℓ_n/T)[y_n]
  (:func:`nlhf_jax.kernels.sequence_logprobs`).
- the preference: :func:`nlhf_jax.preference.scorers.build_scorer` (``oracle``,
  ``llm_judge``, ``pairwise_model``, ``bradley_terry_reward``).

Randomness: samples 2r and 2r+1 of prompt x (the job (x, r)) are drawn by inverse CDF
(:func:`nlhf_jax.kernels.sample`) from the uniforms U = ``numpy.random.default_rng([seed,
x, r]).random((2, max_new_tokens))``, seed the policy's stream
(:func:`nlhf.evaluation.llm.policy_stream`, all 63 bits used): a job's responses depend
neither on ``training.batch_size`` nor on ``eval.num_prompts``. The jax and torch streams
differ, so their responses are cached apart (``cache_key``). Prompts
are tokenized by :func:`nlhf.data.tokenizer.tokenize_prompts` (as torch) and left-padded
to a multiple of 8 tokens; the last batch is padded with dummy rows, so the decode loop
compiles once per prompt-width bucket.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from nlhf.errors import InputError
from nlhf.evaluation.llm import EvalBackend, PolicyEntry, evaluate_llm
from nlhf.spec.capabilities import require

from nlhf_jax.plugin import CAPABILITIES
from nlhf_jax.trainer import PROMPT_BUCKET, bucket_width, left_pad

__all__ = ["JaxSampler", "evaluate_spec", "job_uniforms"]


def job_uniforms(seed: int, prompt: int, pair: int, max_new_tokens: int) -> np.ndarray:
    """Uniforms (2, max_new_tokens) in [0, 1) of samples 2·pair and 2·pair + 1 of
    ``prompt`` (float32, PCG64 seeded by the entropy [seed, prompt, pair])."""
    return np.random.default_rng([seed, prompt, pair]).random((2, max_new_tokens), np.float32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sequence_logprobs(
    graphdef: Any,
    state: Any,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    tokens: jax.Array,
    mask: jax.Array,
    temperature: jax.Array,
) -> jax.Array:
    """log π(y|x) (B,) of left-padded prompts + completions, one forward pass."""
    from nlhf_jax.generation import sequence_logits
    from nlhf_jax.kernels import sequence_logprobs

    model = nnx.merge(graphdef, state)
    logits = sequence_logits(model, prompt_ids, prompt_mask, tokens, mask)
    return sequence_logprobs(logits, tokens, mask, temperature)


class JaxSampler:
    """Samples and scores responses of one policy against the reference μ."""

    def __init__(self, spec: Any, reference_path: str, prompts: list[str]) -> None:
        from nlhf_jax.models import load_model

        self.spec = spec
        self.prompts = prompts
        dtype = spec.reference.dtype or spec.policy.dtype
        self.reference = load_model(reference_path, dtype=dtype, head="causal_lm")

    def sample(self, entry: PolicyEntry, seed: int) -> list[dict[str, Any]]:
        """``samples_per_prompt`` responses per prompt from ``entry``, drawn with
        :func:`job_uniforms` (``seed``); rows with :data:`nlhf.evaluation.llm.RESPONSE_KEYS`."""
        from nlhf.data.tokenizer import load_tokenizer, tokenize_prompts

        from nlhf_jax.generation import generate_pairs
        from nlhf_jax.models import load_model

        spec = self.spec
        gen, pol = spec.training.generation, spec.policy
        n = spec.eval.samples_per_prompt
        own = (entry.path / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(
            str(entry.path if own else pol.tokenizer or pol.model),
            "eval.policies" if own else "policy.tokenizer" if pol.tokenizer else "policy.model",
            trust_remote_code=pol.trust_remote_code,
        )
        if tokenizer.eos_token_id is None:
            raise InputError("policy.tokenizer: the tokenizer has no EOS token")
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        try:
            if entry.base_model is not None:  # a LoRA checkpoint: base + adapter, merged
                from nlhf_jax.lora import load_adapter, merge_lora

                base = load_model(entry.base_model, dtype=pol.dtype, head="causal_lm")
                model = merge_lora(load_adapter(base, entry.path))
            else:
                model = load_model(entry.path, dtype=pol.dtype, head="causal_lm")
        except InputError as exc:
            raise InputError(f"eval.policies: {entry.name} ({entry.path}): {exc}") from exc
        _, ids = tokenize_prompts(self.prompts, tokenizer, spec.data, pol.chat_template)
        if len(ids) != len(self.prompts):
            raise InputError("data.truncation: drop is not supported by evaluation; use left")
        jobs = [(x, r) for r in range(math.ceil(n / 2)) for x in range(len(ids))]
        t_max, temp = gen.max_new_tokens, gen.temperature
        # (jobs, 2, T): u[j, 0] draws sample 2r of prompt x, u[j, 1] sample 2r + 1
        u = np.stack([job_uniforms(seed, x, r, t_max) for x, r in jobs])
        batch = min(spec.training.batch_size, len(jobs))
        width = bucket_width(max(len(t) for t in ids), PROMPT_BUCKET)
        policy_split = nnx.split(model)
        ref_split = nnx.split(self.reference)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            real = len(chunk)
            idx = list(range(start, start + real)) + [start] * (batch - real)
            p_ids, p_mask = left_pad([ids[jobs[j][0]] for j in idx], pad, width=width)
            uc = u[np.asarray(idx)]
            out = generate_pairs(
                model, model, p_ids, p_mask, beta=0.0, max_new_tokens=t_max,
                temperature=temp, eos_token_id=eos, pad_token_id=pad, opponent="policy",
                uniforms=np.concatenate([uc[:, 0], uc[:, 1]]),
            )  # fmt: skip
            # rows: y (batch), then y' (batch)
            toks = np.concatenate([np.asarray(out.y), np.asarray(out.y_prime)])
            mask = np.concatenate([np.asarray(out.y_mask), np.asarray(out.y_prime_mask)])
            ids2, mask2 = np.concatenate([p_ids, p_ids]), np.concatenate([p_mask, p_mask])
            t = np.float32(temp)
            lp = np.asarray(_sequence_logprobs(*policy_split, ids2, mask2, toks, mask, t))
            lq = np.asarray(_sequence_logprobs(*ref_split, ids2, mask2, toks, mask, t))
            kept = mask.astype(bool)
            for half in (0, 1):
                for b, (x, r) in enumerate(chunk):
                    s, row = 2 * r + half, half * batch + b
                    if s >= n:
                        continue
                    sampled = toks[row][kept[row]].tolist()
                    rows.append({
                        "prompt_index": x, "sample": s,
                        "response": tokenizer.decode(sampled, skip_special_tokens=True),
                        "length": len(sampled), "logp_policy": float(lp[row]),
                        "logp_reference": float(lq[row]), "tokens": sampled,
                    })  # fmt: skip
        rows.sort(key=lambda r: (r["prompt_index"], r["sample"]))
        return rows


def evaluate_spec(spec: Any, output: Path | None = None, *, plugins: Any = None) -> dict[str, Any]:
    """Run a ``task: evaluate`` spec on jax (:func:`nlhf.evaluation.llm.evaluate_llm`):
    same files, keys and summary as torch, with ``backend: jax``. ``plugins`` overrides
    the process-wide plugin set (tests)."""
    from nlhf_jax.preference.scorers import build_scorer

    return evaluate_llm(
        spec,
        output,
        EvalBackend(
            name="jax",
            device=str(jax.devices()[0]),
            make_sampler=JaxSampler,
            make_preference=lambda spec: build_scorer(spec.preference, plugins=plugins),
            cache_key={"backend": "jax"},
            check=lambda spec: require(spec, "jax", CAPABILITIES),  # once completed
        ),
    )
