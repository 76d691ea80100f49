"""The preferences P(y≻y'|x) of ``task: nash`` and ``task: evaluate`` on jax: the model
loading and the jitted forward behind the backend-agnostic scorers of
:mod:`nlhf.preference.scorers` (formulas, input checks, both presentation orders and
batching live there). The same tokenization, truncation and read-out position as torch,
so both backends give the same numbers (``tests/test_cross_backend_jax_torch_preferences.py``).

- ``bradley_terry_reward``: a 1-label score head read at the last non-pad token of
  ``prompt + response`` (:class:`nlhf_jax.preference.model.DecoderScorer`), a trained
  model's rows built as in its training (``nlhf_preference.json``); ``pooling: mean``
  models are refused.
- ``llm_judge``: a causal LM, v = ℓ(a₁ᵏ) − ℓ(a₂ᵏ) at the answers' first differing token,
  after the filled template (chat-formatted for instruct judges; no special tokens added)
  and the answers' shared prefix.
- ``pairwise_model``: a ``task: preference_model`` output directory of either backend
  (:func:`nlhf_jax.preference.model.load_preference_model`), its comparisons cut as its
  training pairs were (``nlhf_preference.json``).
- ``oracle``: :class:`nlhf.preference.scorers.OracleScorer`.
"""

from __future__ import annotations

from dataclasses import replace

from nlhf.data.tokenizer import (
    chat_wrapper,
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

from nlhf_jax.preference.model import (
    DecoderScorer,
    check_model_dir,
    check_pooling,
    load_decoder,
    load_preference_model,
)


def load_bradley_terry(spec: BradleyTerryPreference) -> BradleyTerryScorer:
    """r(x, y) from a 1-label ``<Arch>ForSequenceClassification`` directory reading
    ``prompt + response`` with its own tokenizer (special tokens added), cut as
    :meth:`nlhf.preference.format.PreferenceConfig.for_reward` says (a trained model's rows
    as in training, :func:`nlhf.data.tokenizer.reward_texts_as_trained`), left-truncated
    to ``max_length`` tokens (at most the model's positions, as torch); a model saved with
    ``pooling: mean`` is refused (:func:`nlhf_jax.preference.model.check_pooling`)."""
    from nlhf_jax.models import load_config
    from nlhf_jax.models.io import _head_of

    check_model_dir(spec.path, "preference.path")
    config = PreferenceConfig.for_reward(spec)
    check_pooling(config, spec.path, "preference.path")
    field = "preference.tokenizer" if spec.tokenizer else "preference.path"
    tokenizer = load_tokenizer(spec.tokenizer or spec.path, field, scoring=True)
    if _head_of(load_config(spec.path)) != "sequence_classification":
        raise InputError(
            f"preference.path: {spec.path} is not a sequence-classification model "
            "(config.json architectures); a Bradley–Terry reward model is a 1-label "
            "<Arch>ForSequenceClassification checkpoint"
        )
    model = load_decoder(
        spec.path,
        "classification",
        dtype=spec.dtype,
        pad_token_id=tokenizer.pad_token_id,
        field="preference.path",
    )
    positions = model.config.max_position_embeddings
    config = replace(config, max_length=min(config.max_length, positions))
    scorer = DecoderScorer(
        model,
        tokenizer,
        head="classification",
        max_length=config.max_length,
        batch_size=spec.batch_size,
    )
    texts = reward_texts_as_trained(scorer.tokenizer, config)
    return BradleyTerryScorer(scorer.scores, batch_size=spec.batch_size, model=scorer, texts=texts)


def load_judge(spec: LLMJudgePreference) -> JudgeScorer:
    """A causal LM judge: v = ℓ(a₁ᵏ) − ℓ(a₂ᵏ) after the filled ``template`` (in the chat
    template when ``spec.chat_template`` asks, by default when the tokenizer has one) and
    the answers' shared prefix (:class:`nlhf.preference.scorers.JudgeScorer`)."""
    field = "preference.tokenizer" if spec.tokenizer else "preference.model"
    tokenizer = load_tokenizer(spec.tokenizer or spec.model, field, scoring=True)
    suffix, first, second = judge_answer_ids(spec, tokenizer)
    wrap = chat_wrapper(tokenizer, spec.chat_template, "preference.chat_template")
    model = load_decoder(spec.model, "lm", dtype=spec.dtype, field="preference.model")
    scorer = DecoderScorer(
        model,
        tokenizer,
        head="lm",
        answer=(first, second),
        suffix=suffix,
        max_length=spec.max_length,
        add_special_tokens=False,
        batch_size=spec.batch_size,
    )
    return JudgeScorer(
        scorer.scores,
        template=spec.template,
        batch_size=spec.batch_size,
        model=scorer,
        wrap=wrap,
    )


def load_pairwise(spec: PairwiseModelPreference) -> PairwiseScorer:
    """A ``task: preference_model`` output directory (either backend's), scored
    ``batch_size`` comparisons at a time, ``max_length`` capping the saved limit; each
    comparison (x, y, y′) is cut as training cut its pairs (x, chosen, rejected)
    (:func:`nlhf.data.tokenizer.pairs_as_trained`)."""
    model = load_preference_model(spec.path, dtype=spec.dtype)
    model.batch_size = spec.batch_size
    model.config.max_length = min(model.config.max_length, spec.max_length)
    return PairwiseScorer(model, pairs=pairs_as_trained(model.tokenizer, model.config))


LOADERS: Loaders = {
    "bradley_terry_reward": load_bradley_terry,
    "llm_judge": load_judge,
    "pairwise_model": load_pairwise,
}
SUPPORTED = (*core.BACKEND_AGNOSTIC, *LOADERS)
"""The preference names jax scores."""


def build_scorer(preference: PreferenceSpec | None, *, plugins: object = None) -> Scorer:
    """The scorer of a spec's ``preference`` section on jax
    (:func:`nlhf.preference.scorers.build_scorer`; ``plugins``, a
    :class:`nlhf.plugins.Plugins`, overrides the process-wide plugin set)."""
    return core.build_scorer(preference, LOADERS, backend="jax", plugins=plugins)
