"""nlhf's jax trainer on the benchmark workload (docs/benchmarks.md), a child process of
``run.py``.

Drives the core :class:`nlhf.training.NashLoop` on the jax stepper
(:func:`nlhf.training.nash_loop`, the objects behind ``nlhf run --backend jax``) with the spec of :func:`nlhf_torch_bench.nash_spec` and calls ``trainer.step(n)``;
its metrics record carries ``step_seconds`` (jitted decode loop + decode to text +
preference + jitted loss/backward/optax update) and ``generated_tokens``.

Two adaptations, both through public seams:

- the jax trainer accepts only ``oracle`` preferences, so the spec names the oracle
  ``bench_reward`` and a local plugin passed as the trainer's ``plugins`` argument
  supplies it: P(y≻y'|x) = σ(r(x,y) − r(x,y')) with r the *same* reward checkpoint loaded
  as :class:`nlhf_jax.models.DecoderForSequenceClassification` and jitted (prompt +
  completion re-tokenized, right-padded to a multiple of 16 tokens) — the computation of
  the torch backend's ``bradley_terry_reward`` (the plugin set is
  ``nlhf.plugins.build_plugins(extra=[plugin])``);
- ``trainer.eos`` is set to ``None`` so every completion has exactly ``max_new_tokens``
  tokens (as on the torch and TRL sides).

With ``--threads 1`` XLA is limited to one thread (``XLA_FLAGS``), like torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import Workload, time_trainer_steps

ORACLE = "bench_reward"


class RewardOracle:
    """P(y≻y'|x) = σ(r(x,y) − r(x,y')) from a jitted jax sequence-classification model."""

    def __init__(self, reward_dir: Path, tokenizer_dir: Path) -> None:
        import jax
        from flax import nnx
        from nlhf_jax.models import load_model
        from tokenizers import Tokenizer

        model = load_model(reward_dir, head="sequence_classification")
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.pad = int(model.config.pad_token_id)

        def score(state: Any, ids: Any, mask: Any) -> Any:
            return nnx.merge(self.graphdef, state)(ids, mask)[:, 0]

        self._score = jax.jit(score)

    def reward(self, prompts: list[str], ys: list[str]) -> Any:
        import numpy as np

        rows = [
            e.ids
            for e in self.tokenizer.encode_batch([p + y for p, y in zip(prompts, ys, strict=True)])
        ]
        width = -(-max(len(r) for r in rows) // 16) * 16
        ids = np.full((len(rows), width), self.pad, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return np.asarray(self._score(self.state, ids, mask), np.float64)

    def __call__(self, prompts: list[str], ys: list[str], y_primes: list[str]) -> list[float]:
        import numpy as np

        r = self.reward(list(prompts) * 2, list(ys) + list(y_primes))
        n = len(ys)
        return (1.0 / (1.0 + np.exp(-(r[:n] - r[n:])))).tolist()


class _OraclePlugin:
    """A local nlhf plugin (``nlhf.plugins.build_plugins(extra=...)``) registering the oracle."""

    def __init__(self, fn: RewardOracle) -> None:
        self.fn = fn

    def register(self) -> Any:
        from nlhf.hookspecs import hookimpl

        fn = self.fn

        class Plugin:
            __name__ = "nlhf_bench_reward"

            @hookimpl
            def nlhf_register_oracles(self, register: Any) -> None:
                register(ORACLE, lambda **options: fn)

        return Plugin()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, help="a JSON file written by run.py")
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    t_start = time.perf_counter()
    w = Workload.from_json(Path(args.workload).read_text())
    assets = Path(args.assets)

    import jax
    from nlhf.spec import RunSpec
    from nlhf.training import nash_loop
    from nlhf_torch_bench import nash_spec

    oracle = RewardOracle(assets / "reward", assets / "policy")
    from nlhf.plugins import build_plugins

    plugins = build_plugins(extra=[_OraclePlugin(oracle).register()])
    with tempfile.TemporaryDirectory() as out_dir:
        data = nash_spec(w, assets, out_dir)
        data["preference"] = {"name": "oracle", "function": ORACLE}
        spec = RunSpec.model_validate(data)
        trainer = nash_loop(spec, Path(out_dir), backend="jax", plugins=plugins)
        if not hasattr(trainer.stepper, "eos"):
            raise RuntimeError("the jax stepper has no `eos`; update the benchmark")
        trainer.stepper.eos = None  # exactly max_new_tokens tokens per completion
        result = time_trainer_steps(
            trainer,
            w,
            method="nlhf_jax",
            backend="jax",
            threads=args.threads,
            t_start=t_start,
            progress=Path(args.out),
            versions={"jax": jax.__version__},
        )
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
