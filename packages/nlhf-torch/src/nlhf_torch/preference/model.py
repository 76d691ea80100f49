"""Preference models on transformers (paper §3), trained by ``task: preference_model``.

- :class:`PairwiseModel`: P_θ(y≻y'|x) = σ(v_θ(x,y,y') − v_θ(x,y',y)), antisymmetric by
  construction. ``head="lm"``: a causal LM reads the judge prompt ("which response is
  better, 1 or 2?", :data:`nlhf.spec.models.DEFAULT_JUDGE_TEMPLATE`) and
  v = logit(" 1") − logit(" 2") at the last position — a prompted judge, usable
  zero-shot before any training. ``head="classification"``: v = a 1-label
  sequence-classification head on the same judge text.
- :class:`BradleyTerryModel`: a reward r_θ(x,y) (1-label sequence classification on
  ``prompt + response``) with P = σ(r(x,y) − r(x,y')) (Bradley & Terry 1952).

A ``classification`` head reads the architecture's own pooled output (``pooling="model"``)
or, with ``pooling="mean"``, the masked mean h̄ = Σₜ mₜ hₜ / Σₜ mₜ of the last hidden
states through the model's linear score head (``classifier`` / ``score``), the read-out
sentence encoders are trained with (Reimers & Gurevych 2019, arXiv:1908.10084).

Both expose ``pair_logits(prompts, ys, y_primes) -> z`` (differentiable, P = σ(z)) and
``prob(...) -> list[float]``. A model directory holds the transformers checkpoint
(safetensors), its tokenizer and ``nlhf_preference.json`` (kind, head, template, answer
tokens, max length). The tokenizer side (scoring set-up, answer tokens, template
overhead) is :mod:`nlhf.data.tokenizer`'s, shared with the jax backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from nlhf.data.tokenizer import answer_ids, load_tokenizer, prepare_scoring_tokenizer, text_overhead
from nlhf.errors import InputError
from nlhf.preference.format import Head, PreferenceConfig
from nlhf.preference.scorers import check_comparisons, judge_texts, reward_texts

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class PreferenceModel(torch.nn.Module):
    """Base class: a transformers model + tokenizer + :class:`PreferenceConfig`."""

    def __init__(self, model: Any, tokenizer: Any, config: PreferenceConfig) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = prepare_scoring_tokenizer(tokenizer)
        positions = position_limit(model.config)
        if positions is not None and config.max_length > positions:
            config = dataclasses.replace(config, max_length=positions)
        self.config = config
        """``max_length`` is at most the model's position limit: longer texts keep their
        last tokens (left truncation), as a BERT with 512 positions must."""
        self.batch_size = 16
        self.add_special_tokens = True
        """Whether texts get the tokenizer's special tokens (BOS...); a prompted judge whose
        template is the whole input may turn it off."""
        self._suffix: list[int] = []
        if config.head == "lm":
            self._suffix, self._id_1, self._id_2 = answer_ids(tokenizer, config.answer_tokens)
        elif getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def overhead(self) -> int:
        """Tokens the model adds around prompt and responses (template, specials)."""
        return text_overhead(self.tokenizer, self.config)

    def _batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        limit = self.config.max_length - len(self._suffix)
        rows = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=limit,
            add_special_tokens=self.add_special_tokens,
        ).input_ids
        rows = [list(r) + self._suffix for r in rows]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
        return ids.to(self.device), mask.to(self.device), last.to(self.device)

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """v (pairwise) or r (Bradley–Terry) of each text, shape (B,), float32."""
        ids, mask, last = self._batch(texts)
        rows = torch.arange(len(ids), device=ids.device)
        if self.config.head == "lm":
            base, head = self.model.base_model, self.model.get_output_embeddings()
            if base is not self.model and head is not None:  # logits at the last position only
                hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = head(hidden[rows, last]).float()
            else:
                logits = self.model(input_ids=ids, attention_mask=mask).logits[rows, last].float()
            return logits[:, self._id_1] - logits[:, self._id_2]
        if self.config.pooling == "mean":
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            dropout = getattr(self.model, "dropout", None)
            if isinstance(dropout, torch.nn.Dropout):
                pooled = dropout(pooled)
            return score_head(self.model)(pooled).float()[:, 0]
        out = self.model(input_ids=ids, attention_mask=mask).logits.float()
        return out[:, 0]

    def texts(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Texts scored for the first and the second term of z."""
        raise NotImplementedError

    def pair_scores(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_fwd, v_bwd) with P(y≻y'|x) = σ(v_fwd − v_bwd), one forward over both."""
        check_comparisons(prompts, ys, y_primes)
        fwd, bwd = self.texts(prompts, ys, y_primes)
        v = self.scores(fwd + bwd)
        return v[: len(fwd)], v[len(fwd) :]

    def forward(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`pair_scores`, so a wrapper such as a DeepSpeed engine can call the model."""
        return self.pair_scores(prompts, ys, y_primes)

    def pair_logits(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> torch.Tensor:
        """z = v_fwd − v_bwd, so P(y≻y'|x) = σ(z) and z(y',y) = −z(y,y')."""
        v_fwd, v_bwd = self.pair_scores(prompts, ys, y_primes)
        return v_fwd - v_bwd

    @torch.no_grad()
    def prob(
        self,
        prompts: Sequence[str],
        ys: Sequence[str],
        y_primes: Sequence[str],
        batch_size: int | None = None,
    ) -> list[float]:
        """P(y≻y'|x) for each triple, in batches of ``batch_size`` comparisons."""
        size = batch_size or self.batch_size
        out: list[float] = []
        for i in range(0, len(prompts), size):
            z = self.pair_logits(prompts[i : i + size], ys[i : i + size], y_primes[i : i + size])
            out.extend(torch.sigmoid(z.double()).tolist())
        return out

    def save(self, directory: str | Path) -> None:
        """``save_pretrained`` (safetensors) + tokenizer + ``nlhf_preference.json``."""
        directory = Path(directory)
        with _quiet_loading():
            self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.config.save(directory)


class PairwiseModel(PreferenceModel):
    """P(y≻y'|x) = σ(v(x,y,y') − v(x,y',y)); v from the judge text (y shown as 1)."""

    def texts(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        return judge_texts(self.config.template, prompts, ys, y_primes)


def position_limit(config: Any) -> int | None:
    """The most positions a transformers model reads: ``max_position_embeddings`` (BERT,
    Llama, Qwen2...) or ``n_positions`` (GPT-2); None when the config names neither."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class BradleyTerryModel(PreferenceModel):
    """P(y≻y'|x) = σ(r(x,y) − r(x,y')), r read on ``prompt + response``."""

    def texts(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        return reward_texts(prompts, ys), reward_texts(prompts, y_primes)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report (a fresh score head is expected when a
    classifier starts from a causal LM) and its progress bars, then restore them."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def score_head(model: Any) -> torch.nn.Linear:
    """The linear 1-label score head of a sequence classifier (``classifier`` for the BERT
    family, ``score`` for decoders), which ``pooling="mean"`` applies to h̄; an error for
    heads that do their own pooling (RoBERTa's, DeBERTa's)."""
    for name in ("classifier", "score"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear) and head.in_features == model.config.hidden_size:
            return head
    raise InputError(
        f"preference_training.pooling: `mean` needs a linear score head on the hidden states "
        f"(`classifier` or `score`); {type(model).__name__} has none (its head pools by "
        "itself); use `pooling: model`"
    )


def freeze_lower_layers(model: Any, n: int) -> None:
    """Fix the embeddings and the first ``n`` transformer blocks of ``model``'s backbone
    (``preference_training.frozen_layers``): every backbone parameter registered before
    its block list (BERT's ``embeddings``, a decoder's ``embed_tokens``), then blocks
    0..n−1. The blocks above, final norms, poolers and the head still train; autograd
    then stops at block n, so the backward pass costs only the trained blocks."""
    if n == 0:
        return
    base = model.base_model
    depth = getattr(model.config, "num_hidden_layers", None)
    blocks = next(
        (m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth),
        None,
    )
    if blocks is None:
        raise InputError(
            f"preference_training.frozen_layers: found no list of {depth} transformer blocks "
            f"in {type(model).__name__}; set frozen_layers: 0"
        )
    if n > len(blocks):
        raise InputError(
            f"preference_training.frozen_layers: {n} exceeds the {len(blocks)} transformer "
            f"blocks of {type(model).__name__}; use at most {len(blocks)}"
        )
    in_blocks = {id(p) for p in blocks.parameters()}
    for param in base.parameters():
        if id(param) in in_blocks:
            break
        param.requires_grad_(False)
    for block in blocks[:n]:
        block.requires_grad_(False)


def _model_class(head: Head) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if head == "lm" else AutoModelForSequenceClassification


def _wrap(model: Any, tokenizer: Any, config: PreferenceConfig) -> PreferenceModel:
    cls = PairwiseModel if config.kind == "pairwise" else BradleyTerryModel
    return cls(model, tokenizer, config)


def _check_dir(path: str | Path, field: str) -> None:
    p = Path(path).expanduser()
    if not p.is_dir() and str(path).startswith((".", "/", "~")):
        raise InputError(f"{field}: model directory not found: {path}")


def build_preference_model(
    model_path: str | Path,
    config: PreferenceConfig,
    *,
    tokenizer_path: str | Path | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    field: str = "policy.model",
) -> PreferenceModel:
    """Start a preference model from a pretrained LM: ``head="lm"`` keeps its LM head
    (the zero-shot judge); ``head="classification"`` adds a fresh 1-label score head."""
    _check_dir(model_path, field)
    tokenizer = load_tokenizer(tokenizer_path or model_path, "policy.tokenizer", scoring=True)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if config.head == "classification":
        kwargs["num_labels"] = 1
    try:
        if config.head == "classification":
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        with _quiet_loading():
            model = _model_class(config.head).from_pretrained(str(model_path), **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"{field}: could not load {model_path}: {exc}") from exc
    if config.pooling == "mean":
        score_head(model)
    return _wrap(model.to(device), tokenizer, config)


def load_preference_model(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: str = "float32"
) -> PreferenceModel:
    """Load a directory saved by :meth:`PreferenceModel.save`. Without
    ``nlhf_preference.json``, a causal LM becomes a zero-shot pairwise judge
    (default template) and a 1-label classifier a Bradley–Terry reward model."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise InputError(f"preference.path: model directory not found: {path}")
    config = PreferenceConfig.for_directory(path)
    tokenizer = load_tokenizer(path, "preference.path", scoring=True)
    with _quiet_loading():
        model = _model_class(config.head).from_pretrained(str(path), dtype=DTYPES[dtype])
    return _wrap(model.to(device), tokenizer, config)
