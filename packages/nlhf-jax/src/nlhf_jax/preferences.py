"""Preferences P(y≻y'|x) for the jax trainer, built from the spec's ``preference``
section. Each object has ``prob(prompts, ys, yps) -> np.ndarray`` (float64, in [0, 1])
and ``reward(prompts, ys) -> np.ndarray`` (for ``rlhf_pg``; raises where there is none).
Inputs are decoded text, re-tokenized by the preference model's own tokenizer.

Same formulas, formatting, tokenization and truncation as :mod:`nlhf_torch.preferences`
(checked to 1e-5 by ``tests/test_cross_backend_jax_torch_preferences.py``):

- ``bradley_terry_reward``: r(x,y) = a 1-label score head on ``prompt + response``
  (left-truncated to ``max_length`` tokens); P(y≻y'|x) = σ(r(x,y) − r(x,y')).
- ``pairwise_model``: a ``task: preference_model`` output (either backend):
  P = σ(v(x,y,y') − v(x,y',y)) (:mod:`nlhf_jax.preference.model`).
- ``llm_judge``: a causal LM prompted with ``template`` (``str.format``, no special
  tokens added); ℓ₁, ℓ₂ the next-token logits of the two one-token ``answer_tokens``,
  p(1|a,b) = softmax(ℓ₁, ℓ₂)₀ and P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)).
- ``oracle``: a plugin function (``nlhf_register_oracles``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from nlhf.errors import InputError, NLHFError
from nlhf.preference.format import judge_answer_ids


class OraclePreference:
    """A plugin-registered preference function (``preference: {name: oracle}``)."""

    def __init__(self, spec: Any, plugins: Any = None) -> None:
        from nlhf.plugins import get_plugins

        registry = (plugins or get_plugins()).oracles
        registry.get(spec.function)  # UnknownNameError with did-you-mean
        try:
            self.fn = registry.create(spec.function, **spec.options)
        except TypeError as exc:
            raise InputError(f"preference.options: oracle {spec.function!r}: {exc}") from exc
        self.name = spec.function

    def _check(self, values: Any, n: int) -> np.ndarray:
        p = np.asarray(values, np.float64).reshape(-1)
        if p.size != n or not np.all(np.isfinite(p)) or (p < 0).any() or (p > 1).any():
            raise NLHFError(f"oracle {self.name!r}: expected {n} probabilities in [0, 1]")
        return p

    def prob(self, prompts: list[str], ys: list[str], yps: list[str]) -> np.ndarray:
        return self._check(self.fn(prompts, ys, yps), len(ys))

    def reward(self, prompts: list[str], ys: list[str]) -> np.ndarray:
        if not callable(getattr(self.fn, "reward", None)):
            raise InputError(f"algorithm.name: rlhf_pg needs an oracle with `reward`; "
                             f"{self.name!r} has none")  # fmt: skip
        return np.asarray(self.fn.reward(prompts, ys), np.float64).reshape(-1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


class BradleyTerryReward:
    """P(y≻y'|x) = σ(r(x,y) − r(x,y')), r a 1-label sequence-classification head read at
    the last non-pad token of ``prompt + completion`` (its tokenizer, special tokens
    added, left-truncated to ``max_length``), as :class:`nlhf_torch.preferences.
    BradleyTerryReward`."""

    def __init__(self, spec: Any) -> None:
        from nlhf.data.tokenizer import load_tokenizer

        from nlhf_jax.models import load_config
        from nlhf_jax.models.io import _head_of
        from nlhf_jax.preference.model import DecoderScorer, check_model_dir, load_decoder

        check_model_dir(spec.path, "preference.path")
        field = "preference.tokenizer" if spec.tokenizer else "preference.path"
        tokenizer = load_tokenizer(spec.tokenizer or spec.path, field, scoring=True)
        if _head_of(load_config(spec.path)) != "sequence_classification":
            raise InputError(
                f"preference.path: {spec.path} is not a sequence-classification model "
                "(config.json architectures); a Bradley–Terry reward model is a 1-label "
                "<Arch>ForSequenceClassification checkpoint"
            )
        model = load_decoder(spec.path, "classification", dtype=spec.dtype,
                             pad_token_id=tokenizer.pad_token_id, field="preference.path")  # fmt: skip
        self.scorer = DecoderScorer(model, tokenizer, head="classification",
                                    max_length=spec.max_length, batch_size=spec.batch_size)  # fmt: skip

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        """r(x, y) for each row, float64 (B,)."""
        texts = [p + y for p, y in zip(prompts, ys, strict=True)]
        return self.scorer.scores(texts).astype(np.float64)

    def prob(self, prompts: Sequence[str], ys: Sequence[str], yps: Sequence[str]) -> np.ndarray:
        r = self.reward(list(prompts) * 2, list(ys) + list(yps))
        n = len(ys)
        return _sigmoid(r[:n] - r[n:])


class LLMJudge:
    """A causal LM judge: p(1|a,b) = softmax(ℓ₁, ℓ₂)₀ at the last position of ``template``
    filled with (x, a, b); P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)), so
    P(y≻y') + P(y'≻y) = 1 (as :class:`nlhf_torch.preferences.LLMJudge`)."""

    def __init__(self, spec: Any) -> None:
        from nlhf.data.tokenizer import load_tokenizer

        from nlhf_jax.preference.model import DecoderScorer, load_decoder

        field = "preference.tokenizer" if spec.tokenizer else "preference.model"
        tokenizer = load_tokenizer(spec.tokenizer or spec.model, field, scoring=True)
        ids = judge_answer_ids(spec, tokenizer)
        model = load_decoder(spec.model, "lm", dtype=spec.dtype, field="preference.model")
        self.template = spec.template
        self.scorer = DecoderScorer(model, tokenizer, head="lm", answer=ids,
                                    max_length=spec.max_length, add_special_tokens=False,
                                    batch_size=spec.batch_size)  # fmt: skip

    def first_wins(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """p(1|a,b): the judge's probability that response 1 (= a) is better, (B,)."""
        texts = [
            self.template.format(prompt=x, response_1=r1, response_2=r2)
            for x, r1, r2 in zip(prompts, a, b, strict=True)
        ]
        pair = self.scorer.run(texts).astype(np.float64)
        return _sigmoid(pair[:, 0] - pair[:, 1])

    def prob(self, prompts: Sequence[str], ys: Sequence[str], yps: Sequence[str]) -> np.ndarray:
        n = len(ys)
        p = self.first_wins(list(prompts) * 2, list(ys) + list(yps), list(yps) + list(ys))
        return 0.5 * (p[:n] + 1.0 - p[n:])

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        raise InputError("algorithm.name: rlhf_pg needs a scalar reward, and an llm_judge "
                         "has none; use a bradley_terry_reward preference")  # fmt: skip


class PairwiseModel:
    """A trained preference model directory (``task: preference_model`` of either backend):
    P = σ(v(x,y,y') − v(x,y',y)) (pairwise) or σ(r(x,y) − r(x,y')) (Bradley–Terry kind);
    ``max_length`` caps the limit saved with the model (as torch's ``from_spec``)."""

    def __init__(self, spec: Any) -> None:
        from nlhf_jax.preference.model import load_preference_model

        self.model = load_preference_model(spec.path, dtype=spec.dtype)
        self.model.batch_size = spec.batch_size
        self.model.config.max_length = min(self.model.config.max_length, spec.max_length)

    def prob(self, prompts: Sequence[str], ys: Sequence[str], yps: Sequence[str]) -> np.ndarray:
        p = self.model.prob(list(prompts), list(ys), list(yps))
        if p.size != len(ys) or not np.all(np.isfinite(p)):
            raise NLHFError(f"pairwise_model: expected {len(ys)} finite probabilities")
        return p

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        raise InputError("algorithm.name: rlhf_pg needs a scalar reward, and a pairwise_model "
                         "has none; use a bradley_terry_reward preference")  # fmt: skip


_BUILDERS: dict[str, Any] = {
    "oracle": lambda spec, plugins: OraclePreference(spec, plugins),
    "bradley_terry_reward": lambda spec, plugins: BradleyTerryReward(spec),
    "llm_judge": lambda spec, plugins: LLMJudge(spec),
    "pairwise_model": lambda spec, plugins: PairwiseModel(spec),
}
SUPPORTED = tuple(_BUILDERS)


def check_preference(spec: Any) -> None:
    """Fail early (before any model loads) on a preference the jax backend cannot build."""
    if spec is None:
        raise InputError("preference: a `task: nash` run needs a `preference` section")
    if spec.name == "tabular":
        raise NLHFError("preference: tabular preferences run on the numpy backend: "
                        "use --backend numpy")  # fmt: skip
    if spec.name not in SUPPORTED:
        raise NLHFError(
            f"preference.name: {spec.name!r} is not supported by the jax backend "
            f"yet (supported: {', '.join(SUPPORTED)}); use --backend torch"
        )


def build_preference(spec: Any, plugins: Any = None) -> Any:
    """The preference object for ``spec`` (the run spec's ``preference`` section)."""
    check_preference(spec)
    return _BUILDERS[spec.name](spec, plugins)
