"""Prepare the tiny judge LM that ``specs/preference-hh.yaml`` starts from (offline).

Trains a byte-level BPE tokenizer on the shipped hh-rlhf slice plus the judge template,
then saves a seeded random tiny Llama (hidden 64, 2 layers, 512 positions) with
``nlhf_torch.tiny.build_tiny_model``. Run from the repository root::

    .venv/bin/python scripts/prepare_preference_hh.py            # -> runs/models/tiny-llama-hh
    .venv/bin/nlhf run specs/preference-hh.yaml --backend torch
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from nlhf.spec.models import DEFAULT_JUDGE_TEMPLATE
from nlhf_torch.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"
OUT = ROOT / "runs" / "models" / "tiny-llama-hh"


def corpus(path: Path) -> list[str]:
    """Dialogue texts of ``path`` plus the judge prompt with both answers."""
    texts = [DEFAULT_JUDGE_TEMPLATE + " 1", DEFAULT_JUDGE_TEMPLATE + " 2"]
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts += [row["chosen"], row["rejected"]]
    return texts


def prepare(out: Path = OUT, data: Path = DATA, *, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Build the model into ``out`` unless it is already there; return ``out``."""
    if (out / "config.json").exists():
        return out
    return build_tiny_model(
        out,
        "llama",
        corpus=corpus(data),
        vocab_size=vocab_size,
        seed=seed,
        hidden_size=64,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    print(prepare(args.out, args.data, vocab_size=args.vocab_size))
