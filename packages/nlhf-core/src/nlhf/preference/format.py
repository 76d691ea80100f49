"""The on-disk record of a saved preference model (``nlhf_preference.json``) and the judge
text, shared by every backend so a model saved by one loads in another."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from nlhf.data.pairs import Truncation
from nlhf.errors import InputError
from nlhf.spec.models import DEFAULT_JUDGE_TEMPLATE, BradleyTerryPreference

CONFIG_NAME = "nlhf_preference.json"
Kind = Literal["pairwise", "bradley_terry"]
Head = Literal["lm", "classification"]
Pooling = Literal["model", "mean"]
"""How a ``classification`` head reads the sequence: ``model``, the architecture's own
read-out (BERT: the pooled ``[CLS]`` token; decoders: the last non-pad token); ``mean``, the
attention-masked mean of the last hidden states (the pooling sentence encoders such as
all-MiniLM-L6-v2 are trained with, Reimers & Gurevych 2019, arXiv:1908.10084)."""


@dataclass
class PreferenceConfig:
    """What ``nlhf_preference.json`` records about a saved preference model."""

    kind: Kind = "pairwise"
    head: Head = "lm"
    template: str = DEFAULT_JUDGE_TEMPLATE
    answer_tokens: tuple[str, str] = (" 1", " 2")
    max_length: int = 1024
    max_prompt_length: int | None = None
    """The training run's ``data.max_prompt_length`` (prompts cut from the left to it before
    the ``max_length`` budget); ``None``: only ``max_length`` cuts them."""
    truncation: Truncation = "left"
    """The training run's ``data.truncation``: how :class:`nlhf.data.pairs.PairBudget` cut
    its over-long pairs, and so how scoring cuts them (models saved before it was
    recorded: ``left``, the default)."""
    pooling: Pooling = "model"
    format_version: int = 1

    def save(self, directory: Path) -> None:
        data = asdict(self)
        data["answer_tokens"] = list(self.answer_tokens)
        (Path(directory) / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> PreferenceConfig:
        data = json.loads((Path(directory) / CONFIG_NAME).read_text())
        data["answer_tokens"] = tuple(data["answer_tokens"])
        return cls(**data)

    @classmethod
    def for_reward(cls, spec: BradleyTerryPreference) -> PreferenceConfig:
        """How a ``bradley_terry_reward`` reads ``prompt + response``: as it was trained when
        its directory holds ``nlhf_preference.json`` (a ``task: preference_model`` output:
        its ``pooling``, its training ``max_length`` unless the spec sets ``max_length``, its
        ``max_prompt_length`` (the saved ``max_length`` for models saved before that was
        recorded, as :meth:`for_directory`) and ``truncation``), else the architecture's own
        pooled output at the spec's ``max_length`` with no prompt budget
        (``max_prompt_length`` None). The rows themselves:
        :func:`nlhf.data.tokenizer.reward_texts_as_trained`."""
        path = Path(spec.path)
        if not (path / CONFIG_NAME).is_file():
            return cls(kind="bradley_terry", head="classification", max_length=spec.max_length)
        saved = cls.for_directory(path)
        if saved.kind != "bradley_terry":
            raise InputError(
                f"preference.path: {spec.path} is a {saved.kind} preference model ("
                f"{CONFIG_NAME}), not a Bradley–Terry reward; use preference.name: pairwise_model"
            )
        if "max_length" in spec.model_fields_set:  # the spec's budget, the saved prompt cut
            return replace(saved, max_length=spec.max_length)
        return saved

    @classmethod
    def for_directory(cls, directory: Path, field: str = "preference.path") -> PreferenceConfig:
        """The config of a model directory: its ``nlhf_preference.json`` when present
        (``max_prompt_length`` the saved ``max_length`` for models saved before that was
        recorded, as ``nlhf preference-eval`` reads them), else from ``config.json``'s
        architectures — a causal LM is a zero-shot pairwise judge (default template), a
        sequence classifier a Bradley–Terry reward model, neither with a prompt budget."""
        directory = Path(directory)
        if (directory / CONFIG_NAME).exists():
            saved = cls.load(directory)
            return replace(saved, max_prompt_length=saved.max_prompt_length or saved.max_length)
        try:
            raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            archs = " ".join(raw.get("architectures") or [])
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{field}: {directory} is not a model directory: {exc}") from exc
        if archs.endswith("ForCausalLM"):
            return cls(kind="pairwise", head="lm")
        if "ForSequenceClassification" in archs:
            return cls(kind="bradley_terry", head="classification")
        raise InputError(
            f"{field}: {directory} has no {CONFIG_NAME} and its architecture "
            f"({archs or 'unknown'}) is neither a causal LM nor a sequence classifier"
        )


def render_judge(template: str, prompt: str, response_1: str, response_2: str) -> str:
    """Fill ``{prompt}``, ``{response_1}``, ``{response_2}`` (plain replacement, so braces
    elsewhere in the template or the texts are left alone)."""
    return (
        template.replace("{prompt}", prompt)
        .replace("{response_1}", response_1)
        .replace("{response_2}", response_2)
    )


def judge_answer_ids(spec: Any, tokenizer: Any) -> tuple[list[int], int, int]:
    """An ``llm_judge`` preference's answers under ``tokenizer`` (anything with
    ``encode(text, add_special_tokens=False)``): the ids of their shared prefix and of
    their first differing tokens (:func:`nlhf.data.tokenizer.answer_ids`; answers of
    several tokens each are fine, one being a prefix of the other is refused), after
    checking that ``spec.template`` has the ``{prompt}``, ``{response_1}`` and
    ``{response_2}`` placeholders."""
    from nlhf.data.tokenizer import answer_ids

    ids = answer_ids(tokenizer, tuple(spec.answer_tokens), field="preference.answer_tokens")
    for key in ("prompt", "response_1", "response_2"):
        if "{" + key + "}" not in spec.template:
            raise InputError(f"preference.template: missing the placeholder {{{key}}}")
    return ids
