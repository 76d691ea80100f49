"""Preference models on the Flax NNX decoder (DESIGN §5, paper §3): the jax twin of
:mod:`nlhf_torch.preference.model`, with the same text formatting, tokenization,
truncation and read-out position, so both backends give the same numbers (cross-backend
tests: ``tests/test_cross_backend_jax_torch_preferences.py``).

- :class:`PreferenceModel` ``kind="pairwise"``: P_θ(y≻y'|x) = σ(v_θ(x,y,y') − v_θ(x,y',y)),
  antisymmetric by construction. ``head="lm"``: v = logit(a₁) − logit(a₂), the first
  differing tokens of the two answers, read after the judge text (+ their shared token
  prefix) at the last position; ``head="classification"``: v = a 1-label score head on
  the judge text.
- ``kind="bradley_terry"``: a reward r_θ(x,y) (1-label score head on ``prompt + response``);
  P = σ(r(x,y) − r(x,y')) (Bradley & Terry 1952).

Texts are tokenized by :class:`HFTokenizer` (``tokenizer.json`` through ``tokenizers``,
no transformers/torch): truncated from the left to ``max_length`` tokens (special tokens
included, as transformers' ``truncation_side="left"``). Rows are right-padded to a few
length buckets (powers of two) so the jitted forward compiles once per bucket; the
read-out is the last real token (``lm``) or, as transformers' sequence-classification
pooling, the rightmost token that is not ``pad_token_id`` (``classification``). A saved
directory (``config.json`` + ``model.safetensors`` + tokenizer + ``nlhf_preference.json``)
loads in :func:`nlhf_torch.preference.model.load_preference_model` and vice versa.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from nlhf.errors import InputError
from nlhf.preference_format import CONFIG_NAME, Head, PreferenceConfig, render_judge

from nlhf_jax.models import (
    DecoderConfig,
    DecoderForCausalLM,
    DecoderForSequenceClassification,
    load_config,
    save_model,
)
from nlhf_jax.models.io import _DTYPES, _head_of, from_hf_state_dict, read_safetensors

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
MIN_WIDTH = 16
"""Smallest padded length bucket (widths are padded to powers of two ≥ this)."""


# ------------------------------------------------------------------------- config
# ---------------------------------------------------------------------- tokenizer
class HFTokenizer:
    """A Hugging Face tokenizer directory read with ``tokenizers`` (no transformers):
    ``tokenizer.json`` for the pipeline, ``tokenizer_config.json`` /
    ``special_tokens_map.json`` for the pad and EOS tokens (pad falls back to EOS, as
    the torch backend's ``prepare_tokenizer``)."""

    def __init__(self, directory: str | Path, field: str = "policy.tokenizer") -> None:
        from tokenizers import Tokenizer

        self.directory = Path(directory).expanduser()
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise InputError(
                f"{field}: no tokenizer.json in {directory}; the jax backend reads fast "
                "(tokenizers) tokenizers: save one with tokenizer.save_pretrained()"
            )
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()
        meta: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (self.directory / name).is_file():
                meta.update(json.loads((self.directory / name).read_text(encoding="utf-8")))
        self.eos_token_id = self._token_id(meta.get("eos_token"))
        pad = self._token_id(meta.get("pad_token"))
        if pad is None:
            if self.eos_token_id is None:
                raise InputError(f"{field}: the tokenizer of {directory} has neither a pad nor "
                                 "an EOS token; add a pad token")  # fmt: skip
            pad = self.eos_token_id
        self.pad_token_id: int = pad
        self._cleanup = bool(meta.get("clean_up_tokenization_spaces", False)) and (
            type(self._tok.model).__name__ != "BPE"
        )

    def _token_id(self, value: Any) -> int | None:
        if isinstance(value, dict):
            value = value.get("content")
        return None if value is None else self._tok.token_to_id(str(value))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """As transformers' ``decode`` (special tokens kept; clean-up only where the
        tokenizer config asks for it and the model is not BPE)."""
        text = self._tok.decode(list(ids), skip_special_tokens=False)
        if self._cleanup:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                         (" 're", "'re")):  # fmt: skip
                text = text.replace(a, b)
        return text

    def batch(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[list[int]]:
        """Token ids of each text, truncated from the left to ``max_length`` (special
        tokens included) — transformers' ``tokenizer(texts, truncation=True,
        max_length=..)`` with ``truncation_side="left"``."""
        if max_length is not None:
            self._tok.enable_truncation(max_length, direction="left")
        try:
            enc = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        finally:
            self._tok.no_truncation()
        return [list(e.ids) for e in enc]

    def save(self, directory: str | Path) -> None:
        """Copy the tokenizer files next to a saved model."""
        for name in TOKENIZER_FILES:
            if (self.directory / name).is_file():
                shutil.copy(self.directory / name, Path(directory) / name)


def load_tokenizer(path: str | Path, field: str = "policy.tokenizer") -> HFTokenizer:
    check_model_dir(path, field)
    return HFTokenizer(path, field)


def answer_ids(tokenizer: HFTokenizer, answers: tuple[str, str]) -> tuple[list[int], int, int]:
    """(shared token prefix of the two answers, first differing token of each): v =
    logit(a₁) − logit(a₂) read after the judge text followed by the shared prefix."""
    a = tokenizer.encode(answers[0], add_special_tokens=False)
    b = tokenizer.encode(answers[1], add_special_tokens=False)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == len(a) or n == len(b):
        raise InputError(
            f"preference_training.answer_tokens: {answers[0]!r} and {answers[1]!r} tokenise to "
            f"{a} and {b}; one is a prefix of the other, so no token tells them apart. "
            "Pick answers that differ in a token"
        )
    return a[:n], a[n], b[n]


def text_overhead(tokenizer: HFTokenizer, config: PreferenceConfig) -> int:
    """Tokens a model of ``config`` adds around prompt and responses (special tokens, the
    judge template, the shared answer prefix)."""
    if config.kind == "bradley_terry":
        return len(tokenizer.encode(""))
    empty = render_judge(config.template, "", "", "")
    suffix = answer_ids(tokenizer, config.answer_tokens)[0] if config.head == "lm" else []
    return len(tokenizer.encode(empty)) + len(suffix)


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
        tokenizer: HFTokenizer,
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
        self.tokenizer = tokenizer
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
        rows = self.tokenizer.batch(
            texts, max_length=limit, add_special_tokens=self.add_special_tokens
        )
        rows = [r + self.suffix for r in rows]
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
        self, state: nnx.State, ids: jax.Array, mask: jax.Array, index: jax.Array
    ) -> jax.Array:
        """(B, 2) answer logits (``lm``) or (B, 1) scores, float32 (pure: jit/grad-able)."""
        model = nnx.merge(self.graphdef, state)
        hidden, _ = model.model(ids, mask)
        h = hidden[jnp.arange(ids.shape[0]), index]
        if self.head == "lm":
            logits = model.logits(h).astype(jnp.float32)
            return logits[:, jnp.asarray(self.answer)]
        return model.score(h).astype(jnp.float32)[:, :1]

    def values(
        self, state: nnx.State, ids: jax.Array, mask: jax.Array, index: jax.Array
    ) -> jax.Array:
        """v (B,): ℓ(a₁) − ℓ(a₂) (``lm``) or the score (``classification``)."""
        out = self.outputs(state, ids, mask, index)
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
    """The jax twin of :class:`nlhf_torch.preference.model.PreferenceModel`: a decoder +
    tokenizer + :class:`PreferenceConfig` giving z = v_fwd − v_bwd and P = σ(z)."""

    def __init__(
        self,
        model: DecoderForCausalLM | DecoderForSequenceClassification,
        tokenizer: HFTokenizer,
        config: PreferenceConfig,
    ) -> None:
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
        if not len(prompts) == len(ys) == len(y_primes):
            raise InputError(
                f"prob: got {len(prompts)} prompts, {len(ys)} ys, {len(y_primes)} y_primes; "
                "pass one of each per comparison"
            )
        triples = list(zip(prompts, ys, y_primes, strict=True))
        if self.config.kind == "bradley_terry":
            return [x + a for x, a, _ in triples], [x + b for x, _, b in triples]
        t = self.config.template
        return (
            [render_judge(t, x, a, b) for x, a, b in triples],
            [render_judge(t, x, b, a) for x, a, b in triples],
        )

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
            out.append(1.0 / (1.0 + np.exp(-z.astype(np.float64))))
        return np.concatenate(out)

    def save(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` + tokenizer + ``nlhf_preference.json``
        (loadable by transformers and by the torch backend's preference classes)."""
        directory = Path(directory)
        save_model(self.model, directory)
        self.tokenizer.save(directory)
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
    prefix = {"llama": "Llama", "qwen2": "Qwen2"}[cfg.model_type]
    raw.update(architectures=[f"{prefix}ForSequenceClassification"], pad_token_id=pad_token_id,
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
) -> PreferenceModel:
    """Start a preference model from a pretrained LM: ``head="lm"`` keeps its LM head
    (the zero-shot judge); ``head="classification"`` adds a fresh 1-label score head
    (or keeps the one of a classifier checkpoint)."""
    tokenizer = load_tokenizer(tokenizer_path or model_path, "policy.tokenizer")
    model = load_decoder(model_path, config.head, dtype=dtype,
                         pad_token_id=tokenizer.pad_token_id, seed=seed, field=field)  # fmt: skip
    return PreferenceModel(model, tokenizer, config)


def load_preference_model(
    path: str | Path, *, dtype: str = "float32", field: str = "preference.path"
) -> PreferenceModel:
    """Load a directory written by either backend's ``PreferenceModel.save``. Without
    ``nlhf_preference.json`` a causal LM becomes a zero-shot pairwise judge (default
    template) and a 1-label classifier a Bradley–Terry reward model (as torch)."""
    check_model_dir(path, field)
    path = Path(path).expanduser()
    if (path / CONFIG_NAME).exists():
        config = PreferenceConfig.load(path)
    else:
        try:
            archs = " ".join(load_config(path).raw.get("architectures") or [])
        except InputError as exc:
            raise InputError(f"{field}: {path} is not a model directory: {exc}") from exc
        if archs.endswith("ForCausalLM"):
            config = PreferenceConfig(kind="pairwise", head="lm")
        elif "ForSequenceClassification" in archs:
            config = PreferenceConfig(kind="bradley_terry", head="classification")
        else:
            raise InputError(
                f"{field}: {path} has no {CONFIG_NAME} and its architecture "
                f"({archs or 'unknown'}) is neither a causal LM nor a sequence classifier"
            )
    tokenizer = load_tokenizer(path, field)
    model = load_decoder(path, config.head, dtype=dtype, pad_token_id=tokenizer.pad_token_id,
                         field=field)  # fmt: skip
    return PreferenceModel(model, tokenizer, config)
