"""Hugging Face tokenizers for every backend: loading (``transformers.AutoTokenizer``,
imported lazily so core stays framework-free) and prompt tokenization, so torch and jax
turn the same prompt into the same token ids (chat template included); and the
framework-free tokenizer side of preference models (scoring set-up, answer tokens, the
tokens a judge template adds), shared by both backends' preference models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlhf.data.pairs import PairBudget
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig, render_judge

if TYPE_CHECKING:
    from nlhf.preference.scorers import Comparisons


def _looks_local(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is a filesystem path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_model_path(name: str, field: str, *, marker: str = "config.json") -> None:
    """A path that should be local but is absent gets a clear error (before transformers
    tries the hub, which is offline in tests and CI)."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / marker).exists():
            raise InputError(
                f"{field}: {name} has no {marker}; point it at a directory written by "
                f"save_pretrained (or a hub id)"
            )
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if _looks_local(name) or offline:
        hint = " (HF_HUB_OFFLINE is set, so hub ids cannot be downloaded)" if offline else ""
        raise InputError(f"{field}: model path not found: {name}{hint}")


def load_tokenizer(
    name: str | Path, field: str = "policy.tokenizer", *, scoring: bool = False, **kwargs: Any
) -> Any:
    """The one tokenizer loader of every backend: ``AutoTokenizer.from_pretrained(name,
    **kwargs)``; pad falls back to EOS; errors name ``field``. ``scoring=True`` also sets
    it up for a preference model (:func:`prepare_scoring_tokenizer`)."""
    name = str(name)
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # both backends depend on transformers
        raise InputError(
            f"{field}: tokenizers need transformers: pip install transformers"
        ) from exc

    check_model_path(name, field, marker="tokenizer_config.json")
    try:
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as exc:
        raise InputError(f"{field}: could not load a tokenizer from {name}: {exc}") from exc
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise InputError(f"{field}: the tokenizer of {name} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return prepare_scoring_tokenizer(tok) if scoring else tok


def uses_chat_template(tokenizer: Any, chat_template: bool | None) -> bool:
    """``policy.chat_template``, defaulting to whether the tokenizer has a template."""
    return chat_template if chat_template is not None else bool(tokenizer.chat_template)


HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def dialogue_messages(prompt: str) -> list[dict[str, str]]:
    """The chat messages of ``prompt``. An HH-RLHF dialogue prefix (what ``data.format:
    hh_rlhf`` makes: ``"\\n\\nHuman: …\\n\\nAssistant: …\\n\\nHuman: …\\n\\nAssistant:"``) becomes
    its alternating user / assistant turns, the final empty ``Assistant:`` left to the
    template's generation prompt; any other text is one user turn."""
    if not (prompt.startswith("\n\nHuman:") and prompt.endswith("\n\nAssistant:")):
        return [{"role": "user", "content": prompt}]
    parts = HH_TURN.split(prompt)[1:]  # role, text, role, text, ..., "Assistant", ""
    turns = [(HH_ROLES[parts[i]], parts[i + 1].strip()) for i in range(0, len(parts), 2)]
    roles = [role for role, _ in turns[:-1]]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        return [{"role": "user", "content": prompt}]  # not alternating: leave it whole
    return [{"role": role, "content": text} for role, text in turns[:-1]]


def format_prompt(
    tokenizer: Any, prompt: str, chat_template: bool | None, field: str = "policy.chat_template"
) -> str:
    """Render ``prompt`` with the tokenizer's chat template, followed by the assistant's
    generation prompt, when asked (default: when it has one): one user turn, or the turns
    of an HH-RLHF dialogue (:func:`dialogue_messages`)."""
    if not uses_chat_template(tokenizer, chat_template):
        return prompt
    if not tokenizer.chat_template:
        raise InputError(f"{field}: the tokenizer has no chat template; set chat_template: false")
    return tokenizer.apply_chat_template(
        dialogue_messages(prompt), tokenize=False, add_generation_prompt=True
    )


def chat_wrapper(
    tokenizer: Any, chat_template: bool | None, field: str
) -> Callable[[str], str] | None:
    """``text -> chat-formatted text`` (:func:`format_prompt`) when ``chat_template`` asks
    for it (default: when the tokenizer has one), else ``None``; e.g. an instruct model's
    judge text."""
    if not uses_chat_template(tokenizer, chat_template):
        return None
    format_prompt(tokenizer, "", chat_template, field)  # a template that renders, or the error
    return lambda text: format_prompt(tokenizer, text, chat_template, field)


def tokenize_prompts(
    prompts: list[str], tokenizer: Any, data: Any, chat_template: bool | None
) -> tuple[list[str], list[list[int]]]:
    """Token ids of each prompt; over-long prompts follow ``data.truncation`` (``left`` and
    ``right`` both keep the prompt's last ``max_prompt_length`` tokens, since responses are
    generated; ``drop`` skips it; ``error`` stops)."""
    texts, ids = [], []
    limit = data.max_prompt_length
    templated = uses_chat_template(tokenizer, chat_template)
    for i, prompt in enumerate(prompts):
        text = format_prompt(tokenizer, prompt, chat_template)
        tok = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        if not tok:
            raise InputError(f"data: prompt {i} is empty after tokenization")
        if len(tok) > limit:
            if data.truncation == "drop":
                continue
            if data.truncation == "error":
                raise InputError(
                    f"data.max_prompt_length: prompt {i} has {len(tok)} tokens > {limit}; "
                    f"raise the limit or set data.truncation: left"
                )
            tok = tok[-limit:]
        texts.append(prompt)
        ids.append(tok)
    if not ids:
        raise InputError(f"data: every prompt is longer than max_prompt_length={limit}")
    return texts, ids


# ---------------------------------------------------------------- preference models
def prepare_scoring_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer set up for preference scoring, in place (and returned): right padding
    (the last real token is read per row), left truncation (keep the end, where the
    answer is read) and a pad token (the EOS token if there is none). Saved with the
    model, so every backend reloads the same settings."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError("the tokenizer has neither a pad nor an EOS token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer


def answer_ids(
    tokenizer: Any, answers: tuple[str, str], *, field: str = "preference_training.answer_tokens"
) -> tuple[list[int], int, int]:
    """Token ids of the shared prefix of the two answers and of their first differing
    tokens: v = logit(first differing token of answer 1) − logit(... of answer 2), read
    after the judge text followed by the shared prefix (e.g. " 1"/" 2" -> "Ġ" + "1"/"2"
    for a tokenizer without a "Ġ1" token). ``field`` names the spec field in errors."""
    a = tokenizer.encode(answers[0], add_special_tokens=False)
    b = tokenizer.encode(answers[1], add_special_tokens=False)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == len(a) or n == len(b):
        raise InputError(
            f"{field}: {answers[0]!r} and {answers[1]!r} tokenise to "
            f"{a} and {b}; one is a prefix of the other, so no token tells them apart. "
            "Pick answers that differ in a token"
        )
    return a[:n], a[n], b[n]


def text_overhead(tokenizer: Any, config: PreferenceConfig) -> int:
    """Tokens a preference model of ``config`` adds around prompt and responses: special
    tokens, the judge template (pairwise) and the shared answer prefix (``head="lm"``)."""
    if config.kind == "bradley_terry":
        return len(tokenizer.encode(""))
    empty = render_judge(config.template, "", "", "")
    suffix = answer_ids(tokenizer, config.answer_tokens)[0] if config.head == "lm" else []
    return len(tokenizer.encode(empty)) + len(suffix)


def scoring_budget(tokenizer: Any, config: PreferenceConfig) -> PairBudget | None:
    """The :class:`~nlhf.data.pairs.PairBudget` that ``task: preference_model`` cut the
    pairs of a model of ``config`` with (:func:`nlhf.preference.run.prepare_preference_run`):
    ``max_length`` less the tokens the model adds (:func:`text_overhead`) and
    :data:`nlhf.preference.run.LENGTH_SLACK`, the prompt's last ``max_prompt_length``
    tokens, ``truncation`` (``drop`` and ``error`` trained on no over-long pair; online,
    where a comparison cannot be dropped, they cut as ``left``), both responses jointly for
    a pairwise model, the longer one for a Bradley–Terry reward. ``None`` for a model with
    no recorded training budget (``max_prompt_length`` None: a bare classifier or judge)."""
    from nlhf.preference.run import LENGTH_SLACK

    if config.max_prompt_length is None:
        return None
    reserve = text_overhead(tokenizer, config) + LENGTH_SLACK
    if config.max_length <= reserve:
        raise InputError(
            f"preference.max_length: {config.max_length} tokens leave no room for the text "
            f"after the {reserve} the preference model adds (special tokens, template + "
            f"{LENGTH_SLACK} of slack); raise it"
        )
    return PairBudget(
        config.max_length - reserve,
        config.max_prompt_length,
        policy="right" if config.truncation == "right" else "left",
        codec=tokenizer,
        joint=config.kind == "pairwise",
    )


def reward_texts_as_trained(
    tokenizer: Any, config: PreferenceConfig
) -> Callable[[Sequence[str], Sequence[str]], list[str]]:
    """``(prompts, ys) -> texts``: what a Bradley–Terry reward of ``config`` reads for each
    ``prompt + response``. A model trained by ``task: preference_model`` (``config`` has a
    ``max_prompt_length``, :meth:`~nlhf.preference.format.PreferenceConfig.for_reward`)
    gets its rows built as its training rows were: cut by
    :meth:`nlhf.data.pairs.PairBudget.reward_text` with its training budget
    (:func:`scoring_budget`: the prompt's last ``max_prompt_length`` tokens, its
    ``truncation``), before the model's own left truncation to ``max_length``; other
    classifiers read ``prompt + response``."""
    from nlhf.preference.scorers import reward_texts

    budget = scoring_budget(tokenizer, config)
    if budget is None:
        return reward_texts

    def texts(prompts: Sequence[str], ys: Sequence[str]) -> list[str]:
        return [budget.reward_text(x, y) for x, y in zip(prompts, ys, strict=True)]

    return texts


def pairs_as_trained(
    tokenizer: Any, config: PreferenceConfig
) -> Callable[[Sequence[str], Sequence[str], Sequence[str]], Comparisons]:
    """``(prompts, ys, y_primes) -> (prompts, ys, y_primes)``: the comparisons a trained
    preference model of ``config`` (``pairwise_model``, either kind) reads, cut as its
    training pairs were by :meth:`nlhf.data.pairs.PairBudget.cut` with its training budget
    (:func:`scoring_budget`), y in the place of ``chosen`` and y' of ``rejected``; the
    model then builds its texts (the judge text in both orders, or ``prompt + response``)
    as in training. Unchanged for a model without a recorded budget."""
    budget = scoring_budget(tokenizer, config)

    def pairs(prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]) -> Comparisons:
        if budget is None:
            return list(prompts), list(ys), list(y_primes)
        cut = [budget.cut(x, a, b) for x, a, b in zip(prompts, ys, y_primes, strict=True)]
        return [c[0] for c in cut], [c[1] for c in cut], [c[2] for c in cut]

    return pairs
