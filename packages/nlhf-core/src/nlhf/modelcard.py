"""Model cards: the ``README.md`` of every model directory a Nash run saves (each
``checkpoints/step-N/``, the last one being the final model) and of ``nlhf export``.

A card is a Hugging Face model card (https://huggingface.co/docs/hub/model-cards): YAML
front matter (``base_model``, ``library_name``, ``tags``, ``license`` when known,
``pipeline_tag``) and a Markdown body naming the algorithm, the spec fields that define the
objective and the optimisation (τ, β, steps, learning rate, LoRA), the prompt data, the
metrics of the last logged step and the nlhf version. Written here once, from the
:class:`~nlhf.spec.models.RunSpec`; backends write the weights and the tokenizer beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from nlhf.runio import atomic_write_text, read_metrics
from nlhf.spec.models import RunSpec

CARD_FILE = "README.md"

ALGORITHMS = {
    "nash_md_pg": "Nash-MD-PG: policy gradient against the geometric mixture "
    "π̃_β ∝ π_θ^(1−β)·μ^β (Munos et al., 2023, §7)",
    "self_play": "self-play policy gradient: Nash-MD-PG with β = 0, the opponent is π_θ "
    "(Munos et al., 2023, §7)",
    "best_response": "best response to the reference: Nash-MD-PG with β = 1, the opponent "
    "is μ (Munos et al., 2023, §7)",
    "nash_ema_pg": "Nash-EMA-PG: the opponent is an exponential moving average of θ "
    "(Munos et al., 2023, §7)",
    "rlhf_pg": "regularised RLHF policy gradient on a scalar reward (the baseline of "
    "Munos et al., 2023, §7)",
    "online_ipo": "online IPO / IPO-MD (Calandriello et al., 2024, 'Human alignment of "
    "large language models through online preference optimisation')",
    "sppo": "SPPO: self-play preference optimisation, squared loss on K samples per prompt "
    "(Wu et al., 2024, arXiv:2405.00675)",
    "inpo": "INPO: iterative Nash policy optimisation, pairwise squared loss (Zhang et al., "
    "ICLR 2025, arXiv:2407.00617)",
    "onpo": "ONPO: optimistic Nash policy optimisation, INPO's loss with the optimistic "
    "gradient (Zhang et al., 2025, arXiv:2502.16852)",
    "mpo": "MPO: magnetic preference optimisation, KL to a periodically refreshed magnet "
    "(Wang et al., ICLR 2025, arXiv:2410.16714)",
    "egpo": "EGPO: extragradient preference optimisation (Zhou et al., COLM 2025, "
    "arXiv:2503.08942)",
    "dpo": "DPO on fixed preference pairs (Rafailov et al., 2023, arXiv:2305.18290)",
    "ipo": "IPO on fixed preference pairs (Azar et al., 2023, arXiv:2310.12036)",
}
"""One line per LLM algorithm (the tables of :mod:`nlhf.training.algorithms` and the
offline DPO/IPO of :mod:`nlhf.training.offline`)."""

METRIC_KEYS = ("loss", "kl", "preference", "reward", "len_y", "len_y_prime", "tau", "beta", "lr")
"""The metrics a card shows, from the last record of ``metrics.jsonl``."""


def _looks_local(name: str) -> bool:
    from nlhf.data.tokenizer import _looks_local as local

    return local(name) or Path(name).expanduser().exists()


def read_front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a model card (``---`` … ``---`` at the top), or ``{}``."""
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---\n"):
        return {}
    head, sep, _ = text[4:].partition("\n---")
    if not sep:
        return {}
    try:
        data = yaml.safe_load(head)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_model_metadata(model: str) -> dict[str, Any]:
    """``base_model`` and ``license`` of the policy's starting point: a hub id is its own
    ``base_model``; a local directory passes on its own card's ``base_model`` and
    ``license`` (a hub snapshot, an earlier ``nlhf export``) and a packaged model's licence
    (:mod:`nlhf.packaged`)."""
    if not _looks_local(model):
        return {"base_model": model}
    found: dict[str, Any] = {}
    card = read_front_matter(Path(model).expanduser() / CARD_FILE)
    for key in ("base_model", "license"):
        if card.get(key):
            found[key] = card[key]
    if "license" not in found:
        from nlhf.packaged import packaged_model

        entry = packaged_model(model)
        if entry is not None:
            found["license"] = entry.licence.split()[0].lower()  # "Apache-2.0 (…)" → apache-2.0
    return found


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return "`" + json.dumps(value) + "`"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _rows(pairs: list[tuple[str, Any]]) -> list[str]:
    lines = ["| field | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in pairs if v is not None]
    return lines


def card_metadata(spec: RunSpec, *, merged: bool = False) -> dict[str, Any]:
    """The front matter of the card of ``spec``'s policy (``merged``: an exported model
    with its LoRA adapter folded into the weights)."""
    assert spec.policy is not None and spec.algorithm is not None
    adapter = spec.policy.lora is not None and not merged
    meta: dict[str, Any] = dict(base_model_metadata(spec.policy.model))
    meta["library_name"] = "peft" if adapter else "transformers"
    tags = ["nlhf", "nash-learning-from-human-feedback", spec.algorithm.name.replace("_", "-")]
    if spec.policy.lora is not None:
        tags.append("lora")
    meta["tags"] = tags
    meta["pipeline_tag"] = "text-generation"
    return meta


def model_card(
    spec: RunSpec,
    *,
    step: int,
    metrics: Mapping[str, Any] | None = None,
    backend: str | None = None,
    merged: bool = False,
) -> str:
    """The ``README.md`` of the policy of ``spec`` after ``step`` optimiser steps; ``metrics``
    is the last logged ``metrics.jsonl`` record (None: not logged yet)."""
    from nlhf import __version__

    assert spec.policy is not None and spec.algorithm is not None
    pol, algo, tr, data = spec.policy, spec.algorithm, spec.training, spec.data
    meta = card_metadata(spec, merged=merged)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    name = algo.name
    title = f"{Path(spec.output.dir).name or 'nlhf'}: {name} policy, step {step}"
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        f"# {title}",
        "",
        f"A policy trained with [nlhf](https://arxiv.org/abs/2312.00886) {__version__} "
        f"(Nash Learning from Human Feedback, Munos et al., 2023) from `{pol.model}`"
        + (f" on backend `{backend}`" if backend else "")
        + f", after {step} of {tr.steps} optimiser steps.",
        "",
        f"- Algorithm: `{name}`, {ALGORITHMS.get(name, name)}.",
        (
            f"- Preference: `{spec.preference.name}`"
            + _preference_detail(spec)
            + "; the policy maximises its preference over the opponent, regularised by "
            "τ·KL(π ‖ μ)"
            if spec.preference is not None
            else "- Preference: the fixed (chosen, rejected) pairs of the data below, no "
            "sampling; τ sets the strength of the implicit KL to μ"
        )
        + " with μ the reference"
        + (f" `{spec.reference.model}`." if spec.reference.model else " (the initial policy)."),
        "- Weights: "
        + (
            "the base model with its LoRA adapter folded in (`nlhf export`)."
            if merged and pol.lora is not None
            else (
                "a peft LoRA adapter on the base model (`nlhf export` merges it)."
                if pol.lora is not None
                else "every weight of the model was trained."
            )
        ),
        "",
        "## Training spec",
        "",
        *_rows(
            [
                ("algorithm.name", name),
                ("algorithm.tau", getattr(algo, "tau", None)),
                ("algorithm.beta", getattr(algo, "beta", None)),
                ("algorithm.ema_decay", getattr(algo, "ema_decay", None)),
                ("algorithm.kl_estimator", getattr(algo, "kl_estimator", None)),
                ("training.steps", tr.steps),
                ("training.batch_size", tr.batch_size),
                ("training.grad_accum", tr.grad_accum),
                ("training.lr", tr.lr),
                ("training.lr_schedule", tr.lr_schedule),
                ("training.warmup_steps", tr.warmup_steps),
                ("training.optimizer.name", tr.optimizer.name),
                ("training.max_grad_norm", tr.max_grad_norm),
                ("training.generation.max_new_tokens", tr.generation.max_new_tokens),
                ("training.generation.temperature", tr.generation.temperature),
                ("policy.model", pol.model),
                ("policy.dtype", pol.dtype),
                ("policy.chat_template", pol.chat_template),
                ("policy.lora.r", pol.lora.r if pol.lora else None),
                ("policy.lora.alpha", pol.lora.alpha if pol.lora else None),
                ("policy.lora.dropout", pol.lora.dropout if pol.lora else None),
                ("policy.lora.target_modules", pol.lora.target_modules if pol.lora else None),
                ("seed", spec.seed),
            ]
        ),
        "",
        "## Data",
        "",
    ]
    if data is not None:
        lines += _rows(
            [
                ("data.path", data.path),
                ("data.format", data.format),
                ("data.split", data.split),
                ("data.limit", data.limit),
                ("data.max_prompt_length", data.max_prompt_length),
            ]
        )
    lines += ["", "## Metrics", ""]
    if metrics:
        shown = [(k, metrics[k]) for k in METRIC_KEYS if metrics.get(k) is not None]
        lines.append(f"The last logged step ({metrics.get('step', step)}) of `metrics.jsonl`:")
        lines.append("")
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in shown]
    else:
        lines.append("No step was logged before this checkpoint.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        *(
            [
                "from peft import AutoPeftModelForCausalLM",
                'model = AutoPeftModelForCausalLM.from_pretrained("PATH")',
            ]
            if pol.lora is not None and not merged
            else [
                "from transformers import AutoModelForCausalLM",
                'model = AutoModelForCausalLM.from_pretrained("PATH")',
            ]
        ),
        "from transformers import AutoTokenizer",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")  # with its chat template',
        "```",
        "",
        f"Written by nlhf {__version__}.",
        "",
    ]
    return "\n".join(lines)


def _preference_detail(spec: RunSpec) -> str:
    pref = spec.preference
    for field in ("path", "model", "function", "url"):
        value = getattr(pref, field, None)
        if isinstance(value, str):
            return f" ({field} `{value}`)"
    return ""


def last_metrics(output: Path, step: int) -> dict[str, Any] | None:
    """The last ``metrics.jsonl`` record of the run in ``output`` at or before ``step``."""
    records = [r for r in read_metrics(output) if int(r.get("step", 0)) <= step]
    return records[-1] if records else None


def write_model_card(
    directory: Path,
    spec: RunSpec,
    *,
    step: int,
    metrics: Mapping[str, Any] | None = None,
    backend: str | None = None,
    merged: bool = False,
) -> Path:
    """Write ``directory/README.md`` (:func:`model_card`) atomically."""
    path = Path(directory) / CARD_FILE
    text = model_card(spec, step=step, metrics=metrics, backend=backend, merged=merged)
    atomic_write_text(path, text)
    return path


def checkpoint_files(
    write_state: Callable[[Path], object], spec: RunSpec, output: Path, step: int, backend: str
) -> Callable[[Path], None]:
    """The ``write_core`` callback of a Nash checkpoint (:meth:`NashStepper.save`): core's
    trainer state (``write_state``), then the model card with the run's last logged
    metrics."""

    def write(directory: Path) -> None:
        write_state(directory)
        metrics = last_metrics(output, step)
        write_model_card(directory, spec, step=step, metrics=metrics, backend=backend)

    return write
