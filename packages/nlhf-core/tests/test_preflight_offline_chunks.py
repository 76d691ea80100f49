"""``nlhf validate``'s memory lower bound for ``task: offline`` under
``training.logprob_chunk``: policy and reference score each pair's rows in chunks, so the
logits term is B·c·V·4 (hand counts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlhf.spec import preflight
from nlhf.spec.models import RunSpec

CONFIG = (
    '{"vocab_size": 131072, "num_hidden_layers": 4, "hidden_size": 64, "intermediate_size":'
    ' 256, "num_attention_heads": 4, "num_key_value_heads": 4}'
)


def _logits_terms(tmp_path: Path, task: str, chunk: Any) -> dict[str, int]:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(CONFIG)
    raw: dict[str, Any] = {
        "task": task,
        "policy": {"model": str(model)},
        "data": {"path": str(tmp_path / "pairs.jsonl"), "max_length": 64},
        "training": {"batch_size": 4, "logprob_chunk": chunk},
    }
    if task == "offline":
        raw["algorithm"] = {"name": "dpo", "tau": 0.1}
    [estimate] = preflight.estimate_memory(RunSpec.model_validate(raw))
    return {k: v for k, v in estimate.terms.items() if k.startswith("logits")}


def test_offline_logits_term_follows_logprob_chunk(tmp_path: Path) -> None:
    """B = 4 pairs, T = 64, V = 131072: off 4·64·131072·4; auto c = 2²² // (B·V) = 8;
    an explicit 5; a preference model (a reward head's own forward) keeps full logits."""
    assert _logits_terms(tmp_path, "offline", "off") == {
        "logits (B·T·V·4, V=131072)": 134_217_728  # 4·64·131072·4
    }
    assert _logits_terms(tmp_path, "offline", "auto") == {
        "logits (B·c·V·4, c=8, V=131072)": 16_777_216  # 4·8·131072·4
    }
    assert _logits_terms(tmp_path, "offline", 5) == {
        "logits (B·c·V·4, c=5, V=131072)": 10_485_760  # 4·5·131072·4
    }
    assert _logits_terms(tmp_path, "preference_model", 5) == {
        "logits (B·T·V·4, V=131072)": 134_217_728
    }
