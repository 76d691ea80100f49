"""The preferences P(y≻y'|x) of ``task: nash`` and ``task: evaluate`` on torch: the model
loading and the batched forward behind the backend-agnostic scorers of
:mod:`nlhf.preference.scorers` (formulas, input checks, both presentation orders and
batching live there). Every scorer returns float64 NumPy.

- ``bradley_terry_reward``: a 1-label sequence classifier, scored by
  :class:`nlhf_torch.preference.model.BradleyTerryModel` (the trained and served models'
  scoring).
- ``llm_judge``: a causal LM, v = ℓ(a₁ᵏ) − ℓ(a₂ᵏ) at the answers' first differing token
  from :class:`nlhf_torch.preference.model.PairwiseModel` with head ``lm``, without
  special tokens (the template, chat-formatted for instruct judges, is the whole input).
- ``pairwise_model``: :func:`nlhf_torch.preference.serve.from_spec`, a trained model's
  comparisons cut as its training pairs were (``nlhf_preference.json``).
- ``oracle``: :class:`nlhf.preference.scorers.OracleScorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from nlhf.data.tokenizer import (
    chat_wrapper,
    check_model_path,
    load_tokenizer,
    pairs_as_trained,
    reward_texts_as_trained,
)
from nlhf.errors import InputError
from nlhf.preference import scorers as core
from nlhf.preference.format import PreferenceConfig, judge_answer_ids
from nlhf.preference.scorers import BradleyTerryScorer, JudgeScorer, Loaders, PairwiseScorer, Scorer
from nlhf.spec.models import (
    BradleyTerryPreference,
    LLMJudgePreference,
    PairwiseModelPreference,
    PreferenceSpec,
)

from nlhf_torch.preference.model import BradleyTerryModel, PairwiseModel, PreferenceModel

Device = torch.device | str


def host_scores(model: PreferenceModel) -> Callable[[Sequence[str]], np.ndarray]:
    """``model.scores`` without gradients, as float64 NumPy on the host."""

    @torch.no_grad()
    def score(texts: Sequence[str]) -> np.ndarray:
        return model.scores(texts).double().cpu().numpy()

    return score


def load_bradley_terry(spec: BradleyTerryPreference, device: Device = "cpu") -> BradleyTerryScorer:
    """r(x, y) from a 1-label ``AutoModelForSequenceClassification`` reading
    ``prompt + response`` with its own tokenizer, pooled and cut as
    :meth:`nlhf.preference.format.PreferenceConfig.for_reward` says (a trained model's rows
    as in training, :func:`nlhf.data.tokenizer.reward_texts_as_trained`), left-truncated
    to ``max_length`` tokens (at most the model's positions)."""
    from transformers import AutoModelForSequenceClassification

    from nlhf_torch.models import torch_dtype

    check_model_path(spec.path, "preference.path")
    field = "preference.tokenizer" if spec.tokenizer else "preference.path"
    tokenizer = load_tokenizer(spec.tokenizer or spec.path, field, scoring=True)
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
    scorer = BradleyTerryModel(model.to(device), tokenizer, PreferenceConfig.for_reward(spec))
    scorer.eval().requires_grad_(False)
    texts = reward_texts_as_trained(scorer.tokenizer, scorer.config)  # capped max_length
    return BradleyTerryScorer(
        host_scores(scorer), batch_size=spec.batch_size, model=scorer, texts=texts
    )


def load_judge(spec: LLMJudgePreference, device: Device = "cpu") -> JudgeScorer:
    """A causal LM judge: v = ℓ(a₁ᵏ) − ℓ(a₂ᵏ) after the filled ``template`` (in the chat
    template when ``spec.chat_template`` asks, by default when the tokenizer has one) and
    the answers' shared prefix (:class:`nlhf.preference.scorers.JudgeScorer`)."""
    from nlhf_torch.models import load_causal_lm

    field = "preference.tokenizer" if spec.tokenizer else "preference.model"
    tokenizer = load_tokenizer(spec.tokenizer or spec.model, field, scoring=True)
    judge_answer_ids(spec, tokenizer)  # answers that differ in a token; the placeholders
    wrap = chat_wrapper(tokenizer, spec.chat_template, "preference.chat_template")
    model = load_causal_lm(spec.model, spec.dtype, "preference.model")
    config = PreferenceConfig(
        kind="pairwise",
        head="lm",
        template=spec.template,
        answer_tokens=tuple(spec.answer_tokens),
        max_length=spec.max_length,
    )
    judge = PairwiseModel(model.to(device), tokenizer, config)
    judge.add_special_tokens = False
    judge.eval().requires_grad_(False)
    return JudgeScorer(
        host_scores(judge),
        template=spec.template,
        batch_size=spec.batch_size,
        model=judge,
        wrap=wrap,
    )


def load_pairwise(spec: PairwiseModelPreference, device: Device = "cpu") -> PairwiseScorer:
    """A ``task: preference_model`` output directory (either backend's), served with the
    spec's ``batch_size``, ``max_length`` cap and ``dtype``; each comparison (x, y, y′) is
    cut as training cut its pairs (x, chosen, rejected)
    (:func:`nlhf.data.tokenizer.pairs_as_trained`)."""
    from nlhf_torch.preference.serve import from_spec

    check_model_path(spec.path, "preference.path")
    model = from_spec(spec, device)
    return PairwiseScorer(model, pairs=pairs_as_trained(model.tokenizer, model.config))


def loaders(device: Device = "cpu") -> Loaders:
    """The torch scorer factories by preference name, placing models on ``device``."""
    return {
        "bradley_terry_reward": lambda spec: load_bradley_terry(spec, device),
        "llm_judge": lambda spec: load_judge(spec, device),
        "pairwise_model": lambda spec: load_pairwise(spec, device),
    }


SUPPORTED = (*core.BACKEND_AGNOSTIC, *loaders())
"""The preference names torch scores."""


def build_scorer(
    preference: PreferenceSpec | None, device: Device = "cpu", *, plugins: object = None
) -> Scorer:
    """The scorer of a spec's ``preference`` section on torch
    (:func:`nlhf.preference.scorers.build_scorer`; ``plugins``, a
    :class:`nlhf.plugins.Plugins`, overrides the process-wide plugin set)."""
    return core.build_scorer(preference, loaders(device), backend="torch", plugins=plugins)
