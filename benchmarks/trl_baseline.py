"""The baseline: TRL 1.13.0's ``NashMDTrainer`` on the benchmark workload (docs/benchmarks.md).

Runs inside ``benchmarks/.trl-venv`` (made by ``run.py``; TRL is never a dependency of
nlhf) as a child process of ``run.py``::

    benchmarks/.trl-venv/bin/python benchmarks/trl_baseline.py --workload W.json \\
        --assets DIR --out RESULT.json --variant defaults|no_gc [--threads 1]

Settings matched to nlhf's run: the same policy weights (trained copy) and reference
(a second, frozen load), the same reward model as ``reward_funcs`` (TRL's
P = σ(r − r') is nlhf's ``bradley_terry_reward``), batch 8, ``mixture_coef`` = β = 0.5,
``beta`` = τ = 0.1, temperature 0.9, ``max_new_tokens`` = ``min_new_tokens`` = 32 (EOS
cannot end a completion early, so both sides generate exactly 32 tokens per row), AdamW
with the same learning rate, ``max_grad_norm`` 1.0, no ``missing_eos_penalty``.

Variants:

- ``defaults``: everything else as TRL ships it — ``gradient_checkpointing=True`` (which
  also turns the policy's KV cache off during generation) and ``bf16=True``
  (CPU autocast to bfloat16).
- ``no_gc``: ``gradient_checkpointing=False`` and ``bf16=False`` (float32, like nlhf): its
  fairest setting.

Per-step wall time is taken by a ``TrainerCallback`` between ``on_step_begin`` and
``on_step_end`` (generation, reward, log-probs, loss, backward and optimizer step); the
generation part of it by timing ``NashMDTrainer._generate_completions`` (the policy's and
the mixture's ``generate`` calls).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import Workload, load_prompts, peak_rss_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, help="a JSON file written by run.py")
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", choices=["defaults", "no_gc"], default="defaults")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    t_start = time.perf_counter()
    w = Workload.from_json(Path(args.workload).read_text())
    assets = Path(args.assets)

    import torch

    torch.set_num_threads(args.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.nash_md import NashMDConfig, NashMDTrainer

    transformers.logging.set_verbosity_error()

    variant, out = args.variant, args.out
    setup_seconds = 0.0

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = self.c0 = 0.0
            self.seconds: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)
            n = len(self.seconds)
            partial = {  # the finished steps so far, in case the runner's timeout stops us
                "method": f"trl_{variant}",
                "partial": True,
                "step_seconds": self.seconds,
                "step_cpu_seconds": self.cpu,
                "generation_seconds": gen_seconds[:n],
                "generated_tokens": counted[:n],
                "setup_seconds": setup_seconds,
                "peak_rss_mb_self": peak_rss_mb(),
            }
            Path(out).write_text(json.dumps(partial))

    tok = AutoTokenizer.from_pretrained(assets / "policy")
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(
        assets / "reward", dtype=torch.float32
    )
    prompts = load_prompts(assets / "prompts.jsonl")
    dataset = Dataset.from_dict({"prompt": prompts})
    extra: dict = {}
    if args.variant == "no_gc":
        extra = dict(gradient_checkpointing=False, bf16=False)
    with tempfile.TemporaryDirectory() as out_dir:
        config = NashMDConfig(
            output_dir=out_dir,
            per_device_train_batch_size=w.batch_size,
            gradient_accumulation_steps=1,
            max_steps=w.steps,
            learning_rate=w.lr,
            mixture_coef=w.beta,
            beta=w.tau,
            temperature=w.temperature,
            max_new_tokens=w.max_new_tokens,
            generation_kwargs={"min_new_tokens": w.max_new_tokens},
            missing_eos_penalty=None,
            seed=w.seed,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=w.device == "cpu",
            **extra,
        )
        timer = StepTimer()
        trainer = NashMDTrainer(
            model=policy,
            ref_model=reference,
            reward_funcs=reward,
            args=config,
            train_dataset=dataset,
            processing_class=tok,
            callbacks=[timer],
        )
        counted: list[int] = []
        gen_seconds: list[float] = []
        process = trainer._process_completions

        def counting(model_output, mixture_output, prompts):
            model_data, mixture_data = process(model_output, mixture_output, prompts)
            n = prompts["input_ids"].shape[1]
            counted.append(
                int(model_data["attention_mask"][:, n:].sum())
                + int(mixture_data["attention_mask"][:, n:].sum())
            )
            return model_data, mixture_data

        trainer._process_completions = counting  # count the tokens really generated
        generate = trainer._generate_completions

        def timed_generate(model, prompts):
            t0 = time.perf_counter()
            out = generate(model, prompts)
            gen_seconds.append(time.perf_counter() - t0)
            return out

        trainer._generate_completions = timed_generate  # generation time of each step
        setup_seconds = time.perf_counter() - t_start
        rss_setup = peak_rss_mb()
        trainer.train()
    steps = len(timer.seconds)
    result = {
        "method": f"trl_{args.variant}",
        "backend": "trl",
        "variant": args.variant,
        "workload": json.loads(w.to_json()),
        "threads": args.threads,
        "step_seconds": timer.seconds,
        "step_cpu_seconds": timer.cpu,
        "generated_tokens": counted[:steps],
        "generation_seconds": gen_seconds[:steps],
        "setup_seconds": setup_seconds,
        "peak_rss_mb_after_setup": rss_setup,
        "peak_rss_mb_self": peak_rss_mb(),
        "settings": {
            "gradient_checkpointing": config.gradient_checkpointing,
            "bf16": config.bf16,
            "use_cache_in_generate": not config.gradient_checkpointing,
        },
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "pid": os.getpid(),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
