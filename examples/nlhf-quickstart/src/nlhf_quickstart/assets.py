"""The quickstart's assets: ``ASSETS/policy`` (a tokenizer trained on shipped text and a
tiny Llama, SFT-ed so that π(answer | x) ≈ μ) and ``ASSETS/prompts.jsonl``.

:func:`ensure_assets` is what the ``nlhf_prepare_spec`` hook runs: it builds them when a
spec's ``policy.model`` is ``<dir named quickstart-assets>/policy`` and they are missing
(e.g. ``runs/quickstart-assets/policy`` of ``specs/quickstart.yaml``), and does nothing
for any other spec.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlhf_quickstart.task import ANSWERS, CORPUS, PROMPTS, SFT_PROBS

if TYPE_CHECKING:
    from nlhf.spec import RunSpec

ASSETS_DIR_NAME = "quickstart-assets"


def assets_dir(spec: RunSpec) -> Path | None:
    """The assets directory ``spec`` uses: the parent of ``policy.model`` when that is
    ``<…>/quickstart-assets/policy``; else ``None``."""
    policy = getattr(spec, "policy", None)
    if policy is None or not policy.model:
        return None
    path = Path(policy.model).expanduser()
    if path.parent.name != ASSETS_DIR_NAME or path.name != "policy":
        return None
    return path.parent


def assets_ready(assets: Path) -> bool:
    """Whether a finished build is in ``assets`` (the policy is moved in place last but
    one, the prompts written last)."""
    return (assets / "policy" / "config.json").is_file() and (assets / "prompts.jsonl").is_file()


def ensure_assets(spec: RunSpec) -> dict[str, Any] | None:
    """Build the assets ``spec`` needs when they are missing (seeded by ``spec.seed``);
    return the build's info, or ``None`` when nothing was built."""
    assets = assets_dir(spec)
    if assets is None or assets_ready(assets):
        return None
    print(f"quickstart: building the tiny SFT policy in {assets} (first run only)", flush=True)
    return prepare_assets(assets, seed=spec.seed)


def prepare_assets(
    assets: str | Path,
    *,
    seed: int = 0,
    sft_steps: int = 150,
    hidden_size: int = 64,
    layers: int = 2,
) -> dict[str, Any]:
    """Build ``assets/policy`` (tokenizer + SFT-ed tiny Llama) and ``assets/prompts.jsonl``.

    SFT with soft targets: minimise mean_x Σ_k μ_k·(−log π(a_k EOS | x)), whose optimum
    has π(a_k EOS | x) = μ_k (μ = :data:`~nlhf_quickstart.task.SFT_PROBS`); full-batch
    Adam, ``sft_steps`` steps. The model is built in ``assets/.policy.tmp`` and renamed
    into place, so an interrupted build leaves no half-written ``policy``.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars inside `nlhf run`'s output
    try:
        return _build(Path(assets), seed, sft_steps, hidden_size, layers)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _build(
    assets: Path, seed: int, sft_steps: int, hidden_size: int, layers: int
) -> dict[str, Any]:
    import torch
    from nlhf_torch.tiny import build_tiny_model, build_tokenizer  # the one import of them
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nlhf_quickstart.measure import answer_logprobs, answer_probs

    t0 = time.perf_counter()
    policy_dir = assets / "policy"
    tmp = assets / ".policy.tmp"
    build_tokenizer(tmp, CORPUS, vocab_size=400)
    build_tiny_model(
        tmp,
        "llama",
        tokenizer_dir=tmp,
        seed=seed,
        hidden_size=hidden_size,
        layers=layers,
        intermediate_size=2 * hidden_size,
    )
    tok = AutoTokenizer.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(tmp)
    torch.manual_seed(seed)
    weights = torch.tensor(SFT_PROBS, dtype=torch.float32).repeat(len(PROMPTS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss_value = float("nan")
    for _ in range(sft_steps):
        lp = answer_logprobs(model, tok, PROMPTS, ANSWERS, 1.0)
        loss = -(weights * lp).sum() / len(PROMPTS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    probs = answer_probs(model, tok, PROMPTS, ANSWERS, 1.0).mean(0)
    info = {
        "answers": [a.strip() for a in ANSWERS],
        "target": list(SFT_PROBS),
        "achieved": probs.round(4).tolist(),
        "sft_loss": loss_value,
        "answer_tokens": [len(tok(a, add_special_tokens=False)["input_ids"]) for a in ANSWERS],
        "seconds": time.perf_counter() - t0,
    }
    (tmp / "quickstart.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if policy_dir.exists():
        shutil.rmtree(policy_dir)
    tmp.rename(policy_dir)
    (assets / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8"
    )
    return info
