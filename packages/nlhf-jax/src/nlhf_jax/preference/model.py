"""Preference models on the Flax NNX decoder (paper §3), trained by ``task:
preference_model``: the texts of :mod:`nlhf.preference.scorers`, and the same
tokenization, truncation and read-out position as every backend's preference model
(:mod:`nlhf.preference.format`), so the backends give the same numbers (``tests/test_cross_backend_jax_torch_preferences.py``).

- :class:`PreferenceModel` ``kind="pairwise"``: P_θ(y≻y'|x) = σ(v_θ(x,y,y') − v_θ(x,y',y)),
  antisymmetric by construction. ``head="lm"``: v = logit(a₁) − logit(a₂), the first
  differing tokens of the two answers, read after the judge text (+ their shared token
  prefix) at the last position; ``head="classification"``: v = a 1-label score head on
  the judge text.
- ``kind="bradley_terry"``: a reward r_θ(x,y) (1-label score head on ``prompt + response``);
  P = σ(r(x,y) − r(x,y')) (Bradley & Terry 1952).

Texts are tokenized by the same ``transformers.AutoTokenizer`` as on torch, prepared by
the same function (:func:`nlhf.data.tokenizer.prepare_scoring_tokenizer`: right padding,
left truncation to ``max_length`` tokens with special tokens included, pad = EOS when
missing). Rows are right-padded to a few
length buckets (powers of two) so the jitted forward compiles once per bucket; the
read-out is the last real token (``lm``) or, as transformers' sequence-classification
pooling, the rightmost token that is not ``pad_token_id`` (``classification``). A saved
directory (``config.json`` + ``model.safetensors`` + tokenizer + ``nlhf_preference.json``)
loads on any backend (:meth:`nlhf.preference.format.PreferenceConfig.for_directory`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from nlhf.data.tokenizer import answer_ids, load_tokenizer, prepare_scoring_tokenizer, text_overhead
from nlhf.errors import InputError
from nlhf.preference.format import Head, PreferenceConfig
from nlhf.preference.scorers import check_comparisons, judge_texts, reward_texts, sigmoid

from nlhf_jax import lora
from nlhf_jax.models import (
    DecoderConfig,
    DecoderForCausalLM,
    DecoderForSequenceClassification,
    load_config,
    save_model,
)
from nlhf_jax.models.io import _DTYPES, _head_of, from_hf_state_dict, read_safetensors

MIN_WIDTH = 16
"""Smallest padded length bucket (widths are padded to powers of two ≥ this)."""
ADAPTER_DIR = "adapter"
"""Subdirectory of a LoRA-trained model directory holding its peft adapter (A, B)."""


# ------------------------------------------------------------------------- scoring
def _bucket(n: int, minimum: int) -> int:
    """The smallest power of two ≥ max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


class DecoderScorer:
    """A decoder read at one position per text, jitted.

    ``head="lm"``: the pair of logits (ℓ(a₁), ℓ(a₂)) at the last token (after ``suffix``);
    ``head="classification"``: the score head at the rightmost non-pad token.
    :meth:`values` gives v = ℓ(a₁) − ℓ(a₂) or the score, differentiable in ``state``.
    """

    def __init__(
        self,
        model: DecoderForCausalLM | DecoderForSequenceClassification,
        tokenizer: Any,
        *,
        head: Head,
        answer: tuple[int, int] | None = None,
        suffix: Sequence[int] = (),
        max_length: int = 1024,
        add_special_tokens: bool = True,
        batch_size: int = 16,
    ) -> None:
        if head == "lm" and not isinstance(model, DecoderForCausalLM):
            raise InputError("an `lm` head needs a causal LM checkpoint")
        if head == "classification" and not isinstance(model, DecoderForSequenceClassification):
            raise InputError("a `classification` head needs a sequence-classification model")
        if head == "lm" and answer is None:
            raise ValueError("head='lm' needs the two answer token ids")
        self.graphdef, self.state = nnx.split(model)
        self.model_config: DecoderConfig = model.config
        self.tokenizer = prepare_scoring_tokenizer(tokenizer)
        self.head = head
        self.answer = answer
        self.suffix = list(suffix)
        self.max_length = max_length
        self.add_special_tokens = add_special_tokens
        self.batch_size = batch_size
        pad = model.config.pad_token_id
        self.pool_pad = tokenizer.pad_token_id if pad is None else pad
        self._jit = jax.jit(self.outputs)

    @property
    def model(self) -> Any:
        return nnx.merge(self.graphdef, self.state)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, mask, index): right-padded to a power-of-two width (and row count), with
        the read-out position of each row."""
        limit = self.max_length - len(self.suffix)
        if limit <= 0:
            raise InputError(f"max_length: {self.max_length} tokens leave no room for the text "
                             f"after the {len(self.suffix)} answer-prefix tokens; raise it")  # fmt: skip
        rows = self.tokenizer(
            list(texts), truncation=True, max_length=limit,
            add_special_tokens=self.add_special_tokens,
        ).input_ids  # fmt: skip
        rows = [list(r) + self.suffix for r in rows]
        width = _bucket(max(len(r) for r in rows), MIN_WIDTH)
        n = _bucket(len(rows), 1)
        ids = np.full((n, width), self.tokenizer.pad_token_id, np.int32)
        mask = np.zeros((n, width), np.int32)
        mask[:, 0] = 1  # filler rows attend to one key (no all-masked softmax)
        index = np.zeros((n,), np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
            if self.head == "lm":
                index[i] = len(r) - 1
            else:  # transformers: argmax(position · (id ≠ pad)), 0 if every id is pad
                real = np.flatnonzero(np.asarray(r) != self.pool_pad)
                index[i] = real[-1] if real.size else 0
        return ids, mask, index

    def outputs(
        self,
        state: nnx.State,
        ids: jax.Array,
        mask: jax.Array,
        index: jax.Array,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """(B, 2) answer logits (``lm``) or (B, 1) scores, float32 (pure: jit/grad-able);
        ``key`` switches LoRA dropout on (training), with masks a function of it."""
        model = lora.with_lora_dropout(nnx.merge(self.graphdef, state), key)
        hidden, _ = model.model(ids, mask)
        h = hidden[jnp.arange(ids.shape[0]), index]
        if self.head == "lm":
            logits = model.logits(h).astype(jnp.float32)
            return logits[:, jnp.asarray(self.answer)]
        return model.score(h).astype(jnp.float32)[:, :1]

    def values(
        self,
        state: nnx.State,
        ids: jax.Array,
        mask: jax.Array,
        index: jax.Array,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """v (B,): ℓ(a₁) − ℓ(a₂) (``lm``) or the score (``classification``)."""
        out = self.outputs(state, ids, mask, index, key)
        return out[:, 0] - out[:, 1] if self.head == "lm" else out[:, 0]

    def run(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`outputs` of each text, (n, 2) or (n, 1) float32, ``batch_size`` texts per
        jitted call."""
        k = 2 if self.head == "lm" else 1
        out = [np.zeros((0, k), np.float32)]
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            ids, mask, index = self.encode(chunk)
            out.append(np.asarray(self._jit(self.state, ids, mask, index))[: len(chunk)])
        return np.concatenate(out)

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """v of each text, float32 (n,)."""
        out = self.run(texts)
        return out[:, 0] - out[:, 1] if self.head == "lm" else out[:, 0]


class PreferenceModel(DecoderScorer):
    """A decoder + tokenizer + :class:`PreferenceConfig` giving z = v_fwd − v_bwd and
    P = σ(z) (the model of :mod:`nlhf.preference.format`).

    With ``lora_config`` (the decoder has LoRA layers, :mod:`nlhf_jax.lora`) the trainable
    parameters are the adapters' A, B and, for a ``classification`` head, the score head
    (peft's sequence-classification convention); :meth:`save` writes the merged weights
    W + s·B A (a plain directory every consumer loads) and the adapter under
    :data:`ADAPTER_DIR` (what ``--resume`` reads, with ``base_path``'s frozen weights)."""

    def __init__(
        self,
        model: DecoderForCausalLM | DecoderForSequenceClassification,
        tokenizer: Any,
        config: PreferenceConfig,
        *,
        lora_config: lora.LoraConfig | None = None,
        base_path: str | Path | None = None,
    ) -> None:
        if (lora_config is None) != (not lora.lora_layers(model)):
            raise ValueError("lora_config must be given exactly when the model has LoRA layers")
        suffix: list[int] = []
        answer = None
        if config.head == "lm":
            suffix, a, b = answer_ids(tokenizer, config.answer_tokens)
            answer = (a, b)
        super().__init__(
            model, tokenizer, head=config.head, answer=answer, suffix=suffix,
            max_length=config.max_length, batch_size=16,
        )  # fmt: skip
        self.config = config
        self.lora_config = lora_config
        self.base_path = None if base_path is None else str(base_path)

    @property
    def trainable(self) -> Any:
        """The nnx filter of the trained parameters: every ``nnx.Param``, or with LoRA the
        adapters (+ the score head of a ``classification`` head)."""
        if self.lora_config is None:
            return nnx.Param
        if self.head == "classification":
            return nnx.Any(lora.LORA_FILTER, nnx.All(nnx.Param, nnx.PathContains("score")))
        return lora.LORA_FILTER

    def split_trainable(self) -> tuple[nnx.State, nnx.State]:
        """(trained, frozen) parts of ``state``; ``nnx.merge_state`` joins them back."""
        return nnx.split_state(self.state, self.trainable, ...)

    @property
    def max_length(self) -> int:  # kept in the config, which is what gets saved
        return self.config.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        if hasattr(self, "config"):
            self.config.max_length = value

    def overhead(self) -> int:
        return text_overhead(self.tokenizer, self.config)

    def texts(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Texts scored for the two terms of z: the judge text with y shown first and
        second (pairwise), or ``prompt + response`` (Bradley–Terry)."""
        check_comparisons(prompts, ys, y_primes)
        if self.config.kind == "bradley_terry":
            return reward_texts(prompts, ys), reward_texts(prompts, y_primes)
        return judge_texts(self.config.template, prompts, ys, y_primes)

    def encode_pairs(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One padded batch of the 2n texts [fwd..., bwd...] (see :meth:`encode`)."""
        fwd, bwd = self.texts(prompts, ys, y_primes)
        return self.encode(fwd + bwd)

    def pair_logits(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray:
        """z = v_fwd − v_bwd (float32), so P(y≻y'|x) = σ(z) and z(y',y) = −z(y,y')."""
        fwd, bwd = self.texts(prompts, ys, y_primes)
        v = self.scores(fwd + bwd)
        return v[: len(fwd)] - v[len(fwd) :]

    def prob(
        self,
        prompts: Sequence[str],
        ys: Sequence[str],
        y_primes: Sequence[str],
        batch_size: int | None = None,
    ) -> np.ndarray:
        """P(y≻y'|x) = σ(z) in float64, ``batch_size`` comparisons (2× texts) per call."""
        size = batch_size or self.batch_size
        out = [np.zeros(0)]
        for i in range(0, len(prompts), size):
            z = self.pair_logits(prompts[i : i + size], ys[i : i + size], y_primes[i : i + size])
            out.append(sigmoid(z))
        return np.concatenate(out)

    def save(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` + tokenizer + ``nlhf_preference.json``
        (loadable by transformers and by the torch backend's preference classes); with
        LoRA the weights are merged and the adapter goes to ``ADAPTER_DIR/``."""
        directory = Path(directory)
        model = self.model  # a fresh module: merging the adapters leaves ``state`` alone
        if self.lora_config is not None:
            lora.save_adapter(model, directory / ADAPTER_DIR, self.lora_config, self.base_path)
            model = lora.merge_lora(model)
        save_model(model, directory)
        self.tokenizer.save_pretrained(directory)
        self.config.save(directory)


# ------------------------------------------------------------------------- loading
def check_model_dir(path: str | Path, field: str) -> None:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"{field}: model directory not found: {path} (the jax backend "
                         "loads local Hugging Face directories only)")  # fmt: skip


def _classifier_config(cfg: DecoderConfig, pad_token_id: int) -> DecoderConfig:
    """``cfg`` as a 1-label ``<Arch>ForSequenceClassification`` (what transformers saves
    for ``from_pretrained(.., num_labels=1, pad_token_id=..)``)."""
    raw = dict(cfg.raw)
    raw.update(architectures=[cfg.architecture.sequence_classification], pad_token_id=pad_token_id,
               id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})  # fmt: skip
    raw.pop("num_labels", None)
    return dataclasses.replace(cfg, num_labels=1, pad_token_id=pad_token_id, raw=raw)


def load_decoder(
    path: str | Path,
    head: Head,
    *,
    dtype: str = "float32",
    pad_token_id: int | None = None,
    seed: int = 0,
    field: str = "policy.model",
) -> DecoderForCausalLM | DecoderForSequenceClassification:
    """A causal LM (``lm``) or a 1-label classifier (``classification``) from a Hugging Face
    directory. A classifier started from a causal LM gets a fresh score head
    W ~ N(0, initializer_range²) (transformers' init; seeded by ``seed``, so it is not
    torch's draw) and ``pad_token_id`` (the tokenizer's) for pooling."""
    check_model_dir(path, field)
    cfg = load_config(path)
    tensors = read_safetensors(path)
    jdtype = _DTYPES[dtype]
    is_cls = _head_of(cfg) == "sequence_classification"
    if head == "lm":
        if is_cls:
            raise InputError(f"{field}: {path} is a sequence classifier; an `lm` head needs a "
                             "causal LM (or use head: classification)")  # fmt: skip
        return from_hf_state_dict(cfg, tensors, "causal_lm", jdtype)
    if is_cls:
        if cfg.num_labels != 1:
            raise InputError(f"{field}: {path} has {cfg.num_labels} labels; a preference "
                             "score head has 1")  # fmt: skip
        if cfg.pad_token_id is None and pad_token_id is not None:
            cfg = dataclasses.replace(cfg, pad_token_id=pad_token_id)
        return from_hf_state_dict(cfg, tensors, "sequence_classification", jdtype)
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id
    cfg = _classifier_config(cfg, pad_token_id)
    std = float(cfg.raw.get("initializer_range", 0.02))
    rng = np.random.default_rng(seed)
    tensors = dict(tensors)
    tensors.pop("lm_head.weight", None)
    tensors["score.weight"] = (rng.standard_normal((1, cfg.hidden_size)) * std).astype(np.float32)
    return from_hf_state_dict(cfg, tensors, "sequence_classification", jdtype)


def build_preference_model(
    model_path: str | Path,
    config: PreferenceConfig,
    *,
    tokenizer_path: str | Path | None = None,
    dtype: str = "float32",
    seed: int = 0,
    field: str = "policy.model",
    lora_spec: Any = None,
) -> PreferenceModel:
    """Start a preference model from a pretrained LM: ``head="lm"`` keeps its LM head
    (the zero-shot judge); ``head="classification"`` adds a fresh 1-label score head
    (or keeps the one of a classifier checkpoint). ``lora_spec`` (``policy.lora``) adds
    fresh adapters (:func:`nlhf_jax.lora.apply_lora`, A drawn from ``seed``, B = 0)."""
    tokenizer = load_tokenizer(tokenizer_path or model_path, "policy.tokenizer", scoring=True)
    model = load_decoder(model_path, config.head, dtype=dtype,
                         pad_token_id=tokenizer.pad_token_id, seed=seed, field=field)  # fmt: skip
    if lora_spec is None:
        return PreferenceModel(model, tokenizer, config)
    lora.apply_lora(model, lora_spec, seed=seed)
    return PreferenceModel(model, tokenizer, config, lora_config=lora.LoraConfig.of(lora_spec),
                           base_path=model_path)  # fmt: skip


def load_lora_checkpoint(
    path: str | Path,
    base_path: str | Path,
    lora_spec: Any,
    *,
    dtype: str = "float32",
    field: str = "--resume",
) -> PreferenceModel:
    """A LoRA-trained model directory (:meth:`PreferenceModel.save`) as it was trained,
    bit for bit: ``base_path``'s frozen weights, the adapter of ``path/ADAPTER_DIR`` and,
    for a ``classification`` head, the score head saved in ``path`` (the merged weights
    W + s·B A cannot be split back exactly)."""
    path = Path(path).expanduser()
    if not (path / ADAPTER_DIR / lora.ADAPTER_CONFIG).is_file():
        raise InputError(f"{field}: {path} has no {ADAPTER_DIR}/{lora.ADAPTER_CONFIG}; it was "
                         "not written by a policy.lora run (remove policy.lora to resume it)")  # fmt: skip
    wanted, saved = lora.LoraConfig.of(lora_spec), lora.read_adapter_config(path / ADAPTER_DIR)
    if (saved.r, saved.scaling, saved.dropout) != (wanted.r, wanted.scaling, wanted.dropout):
        raise InputError(f"{field}: {path}'s adapter has r={saved.r}, scaling={saved.scaling}, "
                         f"dropout={saved.dropout}; policy.lora says r={wanted.r}, scaling="
                         f"{wanted.scaling}, dropout={wanted.dropout}")  # fmt: skip
    config = PreferenceConfig.load(path)
    tokenizer = load_tokenizer(path, field, scoring=True)
    model = load_decoder(base_path, config.head, dtype=dtype,
                         pad_token_id=tokenizer.pad_token_id, field="policy.model")  # fmt: skip
    if config.head == "classification":
        score = read_safetensors(path)["score.weight"].T
        model.score.kernel[...] = jnp.asarray(score, model.score.kernel.dtype)
    lora.load_adapter(model, path / ADAPTER_DIR)
    return PreferenceModel(model, tokenizer, config, lora_config=lora.LoraConfig.of(lora_spec),
                           base_path=base_path)  # fmt: skip


def check_pooling(config: PreferenceConfig, path: str | Path, field: str) -> None:
    """Refuse a model saved with a read-out the jax score heads lack (``pooling: mean``)."""
    if config.pooling != "model":
        raise InputError(
            f"{field}: {path} was trained with pooling {config.pooling!r}, which the jax "
            "backend does not implement (its score heads read the last non-pad token); load "
            "it with the torch backend (--backend torch)"
        )


def load_preference_model(
    path: str | Path, *, dtype: str = "float32", field: str = "preference.path"
) -> PreferenceModel:
    """Load a directory written by either backend's ``PreferenceModel.save``. Without
    ``nlhf_preference.json`` a causal LM becomes a zero-shot pairwise judge (default
    template) and a 1-label classifier a Bradley–Terry reward model (as torch)."""
    check_model_dir(path, field)
    path = Path(path).expanduser()
    config = PreferenceConfig.for_directory(path, field)
    check_pooling(config, path, field)
    tokenizer = load_tokenizer(path, field, scoring=True)
    model = load_decoder(path, config.head, dtype=dtype, pad_token_id=tokenizer.pad_token_id,
                         field=field)  # fmt: skip
    return PreferenceModel(model, tokenizer, config)
