"""Quiet, forward-compatible torch runs: nlhf calls no deprecated transformers API (the
HF decode path uses ``cache=``; peft's own ``is_gradient_checkpointing`` read is the one
filtered warning), ``save_pretrained`` does not import DeepSpeed when the run does not use
it, and library progress bars follow ``nlhf run --verbose``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nlhf.cli import PROGRESS_BAR_SWITCHES, library_progress_bars

SCRIPT = r"""
import json, logging, sys, warnings
from pathlib import Path
warnings.simplefilter("always")
caught = []
warnings.showwarning = lambda message, category, *a, **k: caught.append(
    f"{category.__name__}: {message}")
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
import torch
from transformers.utils import logging as hf_logging
hf_logging.get_logger().addHandler(Keep())
from nlhf.testing.tiny_models import build_tiny_model
from nlhf.spec.models import LoraSpec
import nlhf_torch.models as models
from nlhf_torch.generation import generate_pairs
from transformers import AutoModelForCausalLM
root = Path(sys.argv[1])
path = build_tiny_model(root / "tiny", "llama", seed=1)
policy = AutoModelForCausalLM.from_pretrained(path).eval()
ids = torch.tensor([[5, 6, 7], [0, 8, 9]]); mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
out = generate_pairs(policy, policy, ids, mask, beta=0.5, max_new_tokens=4, temperature=1.0,
    eos_token_id=None, pad_token_id=0, generator=torch.Generator().manual_seed(0),
    fast_decode=False)
lora = models._apply_lora(AutoModelForCausalLM.from_pretrained(path), LoraSpec(r=2))
policy.save_pretrained(root / "saved")
lora.save_pretrained(root / "adapter")
print(json.dumps({"deepspeed": "deepspeed" in sys.modules, "warnings": caught,
                  "logs": records, "tokens": int(out.y.numel())}))
"""


@pytest.mark.slow  # a fresh interpreter importing torch + transformers + peft: 10-30 s
def test_hf_decode_lora_and_save_use_no_deprecated_api_and_no_deepspeed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tokens"] > 0
    assert result["deepspeed"] is False, "save_pretrained imported DeepSpeed"
    deprecated = [m for m in result["warnings"] + result["logs"] if "deprecat" in m.lower()]
    assert deprecated == [], deprecated
    assert "Setting accelerator to CPU" not in proc.stderr


def test_library_progress_bars_follow_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    for name in PROGRESS_BAR_SWITCHES:
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    try:
        library_progress_bars(False)
        assert not hf_logging.is_progress_bar_enabled()
        assert all(os.environ[name] == "1" for name in PROGRESS_BAR_SWITCHES)
        library_progress_bars(True)
        assert hf_logging.is_progress_bar_enabled()
        assert all(os.environ[name] == "0" for name in PROGRESS_BAR_SWITCHES)
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
