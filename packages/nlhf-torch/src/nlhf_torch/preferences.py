"""Preference inputs of ``task: nash`` runs (issue 3, part 5): P(y≻y'|x) from text.

Every preference is an object with ``prob(prompts, ys, y_primes) -> torch.Tensor`` (B,)
of P(y≻y'|x) as float64, and optionally ``reward(prompts, ys) -> torch.Tensor`` (B,) of
a scalar reward (required by ``rlhf_pg``). Inputs are *decoded text* (completions only,
special tokens skipped), so a judge or reward model may use its own tokenizer (TRL #6951).

- ``bradley_terry_reward``: r(x,y) from a 1-label sequence-classification model;
  P(y≻y'|x) = σ(r(x,y) − r(x,y')) (DESIGN §5).
- ``llm_judge``: a causal LM prompted with ``template``; with ℓ1, ℓ2 the next-token
  logits of the two ``answer_tokens``, p(1|a,b) = softmax(ℓ1, ℓ2)[0] and
  P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)) (both presentation orders, antisymmetric).
- ``oracle``: a function registered by a plugin through ``nlhf_register_oracles``,
  ``factory(**options) -> f(prompts, ys, y_primes) -> list[float]``; ``f.reward`` (if
  present) is its scalar reward.
- ``pairwise_model``: :func:`nlhf_torch.preference.serve.load_pairwise_model` (imported
  lazily), whose ``prob(prompts, ys, y_primes)`` is used as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from nlhf.errors import InputError, NLHFError
from nlhf.preference.format import judge_answer_ids

from nlhf_torch.models import check_model_path, load_tokenizer, torch_dtype


def _as_probs(values: Any, n: int, where: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if t.numel() != n:
        raise NLHFError(f"{where}: returned {t.numel()} probabilities for {n} pairs")
    if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise NLHFError(f"{where}: returned values outside [0, 1]: {t.tolist()[:8]}")
    return t


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class BradleyTerryReward:
    """P(y≻y'|x) = σ(r(x,y) − r(x,y')) with r a sequence-classification head (num_labels=1).

    The reward model sees ``prompt + completion`` re-tokenized by its own tokenizer,
    truncated from the left to ``max_length`` tokens (the completion's end is kept). The
    scoring is :class:`nlhf_torch.preference.model.BradleyTerryModel`'s (one implementation
    for trained and served reward models).
    """

    def __init__(self, spec: Any, device: torch.device | str = "cpu") -> None:
        from transformers import AutoModelForSequenceClassification

        from nlhf_torch.preference.model import BradleyTerryModel, PreferenceConfig

        check_model_path(spec.path, "preference.path")
        tokenizer = load_tokenizer(
            spec.tokenizer or spec.path,
            "preference.tokenizer" if spec.tokenizer else "preference.path",
        )
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                spec.path, dtype=torch_dtype(spec.dtype)
            )
        except Exception as exc:
            raise InputError(
                f"preference.path: could not load a sequence-classification model from "
                f"{spec.path} ({type(exc).__name__}: {exc})"
            ) from exc
        if model.config.num_labels != 1:
            raise InputError(
                f"preference.path: a Bradley–Terry reward model has 1 label; {spec.path} has "
                f"{model.config.num_labels}"
            )
        config = PreferenceConfig(
            kind="bradley_terry", head="classification", max_length=spec.max_length
        )
        self.scorer = BradleyTerryModel(model.to(device), tokenizer, config)
        self.scorer.eval().requires_grad_(False)
        self.model, self.tokenizer = model, self.scorer.tokenizer
        self.device = torch.device(device)
        self.batch_size = spec.batch_size
        self.max_length = spec.max_length

    @torch.no_grad()
    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> torch.Tensor:
        """r(x, y) for each row, float64 (B,)."""
        texts = [p + y for p, y in zip(prompts, ys, strict=True)]
        out = [
            self.scorer.scores(texts[sl]).double().cpu()
            for sl in _batches(len(texts), self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def prob(self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]) -> Any:
        r = self.reward(list(prompts) * 2, list(ys) + list(y_primes))
        n = len(ys)
        return torch.sigmoid(r[:n] - r[n:])


class LLMJudge:
    """A causal LM judge: P from the logits of the two answer tokens, both orders averaged.

    p(1|a,b) = exp ℓ1 / (exp ℓ1 + exp ℓ2) = σ(v(x,a,b)) at the last position of
    ``template`` filled with (x, a, b), v = ℓ1 − ℓ2; P(y≻y'|x) = ½·(p(1|y,y') + 1 −
    p(1|y',y)), so P(y≻y') + P(y'≻y) = 1. The texts and v are
    :class:`nlhf_torch.preference.model.PairwiseModel`'s (head ``lm``), without special
    tokens (the template is the whole input) and with one-token answers.
    """

    def __init__(self, spec: Any, device: torch.device | str = "cpu") -> None:
        from nlhf_torch.models import load_causal_lm
        from nlhf_torch.preference.model import PairwiseModel, PreferenceConfig

        tokenizer = load_tokenizer(
            spec.tokenizer or spec.model,
            "preference.tokenizer" if spec.tokenizer else "preference.model",
        )
        model = load_causal_lm(spec.model, spec.dtype, "preference.model")
        ids = judge_answer_ids(spec, tokenizer)
        config = PreferenceConfig(
            kind="pairwise",
            head="lm",
            template=spec.template,
            answer_tokens=tuple(spec.answer_tokens),
            max_length=spec.max_length,
        )
        self.judge = PairwiseModel(model.to(device), tokenizer, config)
        self.judge.add_special_tokens = False
        self.judge.eval().requires_grad_(False)
        self.model, self.tokenizer = model, self.judge.tokenizer
        self.answer_ids = ids
        self.template = spec.template
        self.device = torch.device(device)
        self.batch_size = spec.batch_size
        self.max_length = spec.max_length

    @torch.no_grad()
    def prob(self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]) -> Any:
        prompts, ys, y_primes = list(prompts), list(ys), list(y_primes)
        out = []
        for sl in _batches(len(ys), max(1, self.batch_size // 2)):  # both orders per batch
            v_fwd, v_bwd = self.judge.pair_scores(prompts[sl], ys[sl], y_primes[sl])
            p_fwd = torch.sigmoid(v_fwd.double().cpu())  # p(1 | y, y')
            p_bwd = torch.sigmoid(v_bwd.double().cpu())  # p(1 | y', y)
            out.append(0.5 * (p_fwd + 1.0 - p_bwd))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class Oracle:
    """A plugin-registered preference function (``preference: {name: oracle}``)."""

    def __init__(self, spec: Any, plugins: Any = None) -> None:
        from nlhf.plugins import get_plugins

        registry = (plugins or get_plugins()).oracles
        if spec.function not in registry:
            registry.get(spec.function)  # raises UnknownNameError with did-you-mean
        try:
            self.fn = registry.create(spec.function, **spec.options)
        except TypeError as exc:
            raise InputError(f"preference.options: oracle {spec.function!r}: {exc}") from exc
        self.name = spec.function

    def prob(self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]) -> Any:
        values = self.fn(list(prompts), list(ys), list(y_primes))
        return _as_probs(values, len(ys), f"oracle {self.name!r}")

    @property
    def has_reward(self) -> bool:
        return callable(getattr(self.fn, "reward", None))

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> Any:
        if not self.has_reward:
            raise InputError(
                f"algorithm.name: rlhf_pg needs a scalar reward, and oracle {self.name!r} has "
                f"no `reward`; use a bradley_terry_reward preference or an oracle with reward"
            )
        return torch.as_tensor(self.fn.reward(list(prompts), list(ys)), dtype=torch.float64)


class PairwiseModel:
    """A trained pairwise preference model (``nlhf_torch.preference.serve``)."""

    def __init__(self, spec: Any) -> None:
        try:
            from nlhf_torch.preference.serve import from_spec
        except ImportError as exc:  # pragma: no cover - the module ships with nlhf-torch
            raise NLHFError(
                f"preference: pairwise_model needs nlhf_torch.preference.serve ({exc})"
            ) from exc
        check_model_path(spec.path, "preference.path")
        self.model = from_spec(spec)  # the spec's batch_size, max_length and dtype

    def prob(self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]) -> Any:
        values = self.model.prob(list(prompts), list(ys), list(y_primes))
        return _as_probs(values, len(ys), "pairwise_model")


def build_preference(spec: Any, device: torch.device | str = "cpu", *, plugins: Any = None) -> Any:
    """The preference object of ``spec.preference`` (a :class:`nlhf.spec.RunSpec`);
    ``plugins`` (a :class:`nlhf.plugins.Plugins`) overrides the process-wide plugin set."""
    pref = spec.preference
    if pref is None:
        raise InputError("preference: a `task: nash` run needs a `preference` section")
    name = pref.name
    if name == "bradley_terry_reward":
        return BradleyTerryReward(pref, device)
    if name == "llm_judge":
        return LLMJudge(pref, device)
    if name == "oracle":
        return Oracle(pref, plugins)
    if name == "pairwise_model":
        return PairwiseModel(pref)
    if name == "tabular":
        raise InputError("preference: tabular preferences run on the numpy backend")
    raise InputError(
        f"preference.name: {name!r} is not supported by the torch trainer; use "
        f"bradley_terry_reward, llm_judge, oracle or pairwise_model"
    )


def has_reward(preference: Any) -> bool:
    """Whether ``preference`` exposes a scalar reward (needed by ``rlhf_pg``)."""
    if isinstance(preference, Oracle):
        return preference.has_reward
    return callable(getattr(preference, "reward", None))
