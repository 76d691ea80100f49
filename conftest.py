"""Repository-wide pytest setup: offline Hugging Face, quiet logs, no tokenizer threads;
the session fixture ``tiny_ckpts`` (tiny checkpoints built without torch)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Under pytest-xdist (scripts/test.sh runs one worker per CPU) each worker, and every process
# its tests start, gets an equal share of the CPUs as OpenMP/BLAS threads instead of all of
# them each: oversubscribed OpenMP threads spin and slow every worker down.
if _workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, len(os.sched_getaffinity(0)) // int(_workers)))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)


#: The checkpoints of ``tiny_ckpts``: name -> (arch, head, tie_word_embeddings).
TINY_CKPTS = {
    "llama": ("llama", "causal_lm", False),
    "llama_tied": ("llama", "causal_lm", True),
    "qwen2": ("qwen2", "causal_lm", False),
    "qwen2_tied": ("qwen2", "causal_lm", True),
    "llama_rm": ("llama", "sequence_classification", False),
}


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Llama / Qwen2 checkpoints (and a Llama reward model) sharing one tokenizer,
    built once per session with NumPy + safetensors (no torch): every weight ~ N(0, 0.3²)
    and every RMSNorm scale ~ 1 + N(0, 0.3²), so logits are O(1) and Qwen2's biases are
    non-zero."""
    from nlhf.testing.tiny_models import build_tiny_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny_ckpts")
    tok = build_tokenizer(root / "tokenizer")
    return {
        name: build_tiny_model(
            root / name,
            arch,
            tokenizer_dir=tok,
            seed=100 + i,
            head=head,
            tie_word_embeddings=tied,
            std=0.3,
            bias_std=0.3,
            norm_std=0.3,
        )
        for i, (name, (arch, head, tied)) in enumerate(TINY_CKPTS.items())
    }
