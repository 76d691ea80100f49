"""The quickstart (issue 3, part 7): Nash-MD-PG vs RLHF on a non-transitive population.

The seeds' central claim, measured on a real (tiny) transformer in a few minutes on CPU:

1. **Assets** (:func:`prepare_assets`, run automatically by ``train_nash`` when a spec's
   ``policy.model`` lies in a missing directory named ``quickstart-assets``, e.g.
   ``runs/quickstart-assets/policy``): a byte-level BPE tokenizer trained with
   ``tokenizers`` on shipped text, a tiny Llama, briefly fine-tuned (soft-target SFT) so
   that for prompts like ``"Pick a fruit:"`` it answers `` apple``/`` banana``/`` cherry``
   then EOS with probabilities ≈ ``SFT_PROBS`` (this is μ), and ``prompts.jsonl``.
2. **Oracle** ``population`` (registered by :mod:`nlhf_torch.plugin` through
   ``nlhf_register_oracles``): annotator types with Condorcet-cycle tastes over the
   answers, by default the tabular ``population`` game (45% apple>banana>cherry,
   30% banana>cherry>apple, 25% cherry>apple>banana), so P(y_i≻y_j) = Σ_k w_k·1[type k
   ranks i above j]; an unknown answer loses to every known one (P = 0) and ties other
   unknown answers (½). Its scalar ``reward`` for ``rlhf_pg`` is the Bradley–Terry
   reward fitted by maximum likelihood to P (uniform pairs): the reward an RLHF pipeline
   would learn from these annotators (``reward: borda`` gives mean_j P(y≻y_j) instead).
3. **Measurement**: the oracle's ``summary`` (added to ``summary.json`` by the trainer)
   computes the policy's exact answer distribution π(y|x) (teacher-forced, at the
   sampling temperature) and a sampled estimate, μ the same way from the reference, and
   the tabular regularised NE π*_τ = softmax(log μ + Pπ*_τ/τ)
   (:func:`nlhf.tabular.solvers.regularized_nash`), and reports total variations.

``python -m nlhf_torch.quickstart`` runs ``specs/quickstart.yaml`` (Nash-MD-PG) and the
same spec with ``algorithm.name: rlhf_pg`` and prints both distances.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ANSWERS = (" apple", " banana", " cherry")
SFT_PROBS = (0.25, 0.5, 0.25)
PROMPTS = (
    "Pick a fruit:",
    "Name a fruit:",
    "Choose a fruit:",
    "Your favourite fruit:",
    "Say one fruit:",
    "Which fruit?",
    "A fruit, please:",
    "Fruit of the day:",
)
ASSETS_DIR_NAME = "quickstart-assets"
CORPUS = [
    *(p + a for p in PROMPTS for a in ANSWERS),
    "apple banana cherry fruit pick name choose say which please favourite day",
    "The quick brown fox jumps over the lazy dog.",
    "Nash learning from human feedback finds the policy preferred to any other.",
]
QUICKSTART_SPEC = "specs/quickstart.yaml"


# ----------------------------------------------------------------------- oracle
def bradley_terry_fit(P: np.ndarray, iters: int = 2000) -> np.ndarray:
    """Maximum-likelihood BT rewards for comparisons drawn uniformly over ordered pairs:
    maximise Σ_{i≠j} P_ij log σ(r_i − r_j) (concave; gradient ascent, centred r)."""
    n = len(P)
    r = np.zeros(n)
    off = 1.0 - np.eye(n)
    for _ in range(iters):
        s = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))
        r += (0.5 / n) * ((P - s) * off).sum(1) * 2
        r -= r.mean()
    return r


class PopulationOracle:
    """P(y≻y'|x) of a population of annotator types with cyclic rankings (module doc).

    ``types``: [[weight, [ranking best-first as answer indices]], ...] (weights sum to 1);
    default: :data:`nlhf.tabular.games.POPULATION_TYPES`.
    """

    def __init__(
        self,
        answers: Sequence[str] = ANSWERS,
        types: Sequence[Sequence[Any]] | None = None,
        reward: str = "bradley_terry",
        eval_samples: int = 64,
    ) -> None:
        from nlhf.errors import InputError
        from nlhf.tabular.games import POPULATION_TYPES, population_matrix

        self.answers = tuple(answers)
        k = len(self.answers)
        raw = types if types is not None else POPULATION_TYPES
        parsed = tuple((float(w), tuple(int(i) for i in ranking)) for w, ranking in raw)
        if abs(sum(w for w, _ in parsed) - 1.0) > 1e-9:
            raise InputError("preference.options.types: the weights must sum to 1")
        for _, ranking in parsed:
            if sorted(ranking) != list(range(k)):
                raise InputError(
                    f"preference.options.types: each ranking must order all {k} answers "
                    f"(indices 0..{k - 1}); got {list(ranking)}"
                )
        self.P = population_matrix(parsed, k)
        if reward == "bradley_terry":
            self.rewards = bradley_terry_fit(self.P)
        elif reward == "borda":
            self.rewards = self.P.mean(1)
        else:
            raise InputError(f"preference.options.reward: {reward!r}; use bradley_terry or borda")
        self.reward_kind = reward
        self.eval_samples = eval_samples
        self._index = {a.strip(): i for i, a in enumerate(self.answers)}

    def index(self, y: str) -> int:
        """Answer index of a decoded completion, −1 when it is not one of the answers."""
        return self._index.get(y.strip(), -1)

    def __call__(self, prompts: list[str], ys: list[str], y_primes: list[str]) -> list[float]:
        out = []
        for y, yp in zip(ys, y_primes, strict=True):
            i, j = self.index(y), self.index(yp)
            if i < 0 or j < 0:
                out.append(0.5 if i == j else (0.0 if i < 0 else 1.0))
            else:
                out.append(float(self.P[i, j]))
        return out

    def reward(self, prompts: list[str], ys: list[str]) -> list[float]:
        """r(y): the fitted reward of a known answer; unknown answers get min r − 1."""
        low = float(self.rewards.min()) - 1.0
        return [float(self.rewards[i]) if (i := self.index(y)) >= 0 else low for y in ys]

    # ------------------------------------------------------------- measurement
    def summary(
        self, *, policy: Any, reference: Any, tokenizer: Any, prompts: list[str], spec: Any
    ) -> dict[str, Any]:
        """Answer distributions of policy and reference vs the tabular regularised NE."""
        from nlhf.algorithms.schedules import schedule_value
        from nlhf.tabular.solvers import regularized_nash

        temp = spec.training.generation.temperature
        tau = schedule_value(spec.algorithm.tau, spec.training.steps - 1, spec.training.steps)
        uniq = list(dict.fromkeys(prompts))
        pi = answer_probs(policy, tokenizer, uniq, self.answers, temp)
        mu = answer_probs(reference, tokenizer, uniq, self.answers, temp)
        sampled = sample_answers(policy, tokenizer, uniq, self, self.eval_samples, temp, spec.seed)
        rows = []
        for x in range(len(uniq)):
            mu_x = mu[x] / mu[x].sum()
            ne = regularized_nash(self.P, mu_x, tau)
            pi_x = pi[x] / pi[x].sum()
            rows.append((pi_x, mu_x, ne, pi[x].sum(), sampled[x]))
        pi_m = np.mean([r[0] for r in rows], 0)
        mu_m = np.mean([r[1] for r in rows], 0)
        ne_m = np.mean([r[2] for r in rows], 0)
        samp_m = np.mean([r[4] for r in rows], 0)
        rl = mu_m * np.exp(self.rewards / tau) if tau > 0 else None

        def tv(a: np.ndarray, b: np.ndarray) -> float:
            return float(0.5 * np.abs(a - b).sum())

        names = [a.strip() for a in self.answers]
        return {
            "answers": names,
            "tau": tau,
            "policy": dict(zip(names, pi_m.round(4).tolist(), strict=True)),
            "policy_sampled": dict(zip([*names, "other"], samp_m.round(4).tolist(), strict=True)),
            "reference": dict(zip(names, mu_m.round(4).tolist(), strict=True)),
            "regularized_nash": dict(zip(names, ne_m.round(4).tolist(), strict=True)),
            "rlhf_optimum": (
                dict(zip(names, (rl / rl.sum()).round(4).tolist(), strict=True))
                if rl is not None
                else None
            ),
            "tv_policy_to_nash": float(np.mean([tv(r[0], r[2]) for r in rows])),
            "tv_reference_to_nash": float(np.mean([tv(r[1], r[2]) for r in rows])),
            "tv_sampled_to_nash": float(np.mean([tv(r[4][:-1], r[2]) for r in rows])),
            "known_answer_mass": float(np.mean([r[3] for r in rows])),
            "max_answer_prob": float(pi_m.max()),
            "reward": self.reward_kind,
            "rewards": dict(zip(names, self.rewards.round(4).tolist(), strict=True)),
            "preference_matrix": self.P.tolist(),
        }


def population_oracle(**options: Any) -> PopulationOracle:
    """Factory registered as oracle ``population`` (options: answers, types, reward,
    eval_samples)."""
    return PopulationOracle(**options)


# ------------------------------------------------------------------ measurement
def answer_probs(
    model: Any, tokenizer: Any, prompts: list[str], answers: Sequence[str], temperature: float
) -> np.ndarray:
    """Exact π(answer + EOS | x) for every prompt × answer, (X, K), at ``temperature``:
    exp Σ_n log_softmax(ℓ_n/T)[y_n] from one teacher-forced forward."""
    import torch

    from nlhf_torch.generation import sequence_logits
    from nlhf_torch.kernels import sequence_logprobs
    from nlhf_torch.trainer import left_pad

    device = next(p for p in _params(model)).device if _params(model) else torch.device("cpu")
    eos = tokenizer.eos_token_id
    p_ids = [tokenizer(x)["input_ids"] for x in prompts]
    a_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers]
    rows_p = [p for p in p_ids for _ in answers]
    rows_a = [a for _ in p_ids for a in a_ids]
    ids, mask = left_pad(rows_p, tokenizer.pad_token_id, device)
    width = max(len(a) for a in rows_a)
    comp = torch.full((len(rows_a), width), tokenizer.pad_token_id, dtype=torch.long)
    cmask = torch.zeros_like(comp)
    for i, a in enumerate(rows_a):
        comp[i, : len(a)] = torch.tensor(a)
        cmask[i, : len(a)] = 1
    comp, cmask = comp.to(device), cmask.to(device)
    with torch.no_grad():
        logits = sequence_logits(model, ids, mask, comp, cmask)
        lp = sequence_logprobs(logits, comp, cmask, temperature)
    return lp.exp().double().cpu().numpy().reshape(len(prompts), len(answers))


def _params(model: Any) -> list[Any]:
    return list(model.parameters())


def sample_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    oracle: PopulationOracle,
    n: int,
    temperature: float,
    seed: int,
) -> np.ndarray:
    """Frequencies of each answer (and ``other``) among ``n`` samples per prompt, (X, K+1)."""
    import torch

    from nlhf_torch.generation import generate_pairs
    from nlhf_torch.trainer import decode, left_pad

    params = _params(model)
    device = params[0].device if params else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed + 1)
    k = len(oracle.answers)
    counts = np.zeros((len(prompts), k + 1))
    half = max(n // 2, 1)
    rows = [tokenizer(x)["input_ids"] for x in prompts for _ in range(half)]
    ids, mask = left_pad(rows, tokenizer.pad_token_id, device)
    pairs = generate_pairs(
        model,
        model,
        ids,
        mask,
        beta=0.0,
        max_new_tokens=8,
        temperature=temperature,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        opponent="policy",
        generator=gen,
    )
    texts = decode(tokenizer, pairs.y, pairs.y_mask) + decode(
        tokenizer, pairs.y_prime, pairs.y_prime_mask
    )
    b = len(rows)
    for r, text in enumerate(texts):
        x = (r % b) // half
        i = oracle.index(text)
        counts[x, i if i >= 0 else k] += 1
    return counts / counts.sum(1, keepdims=True)


# ----------------------------------------------------------------------- assets
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
    has π(a_k EOS | x) = μ_k (μ = :data:`SFT_PROBS`); full-batch Adam, ``sft_steps`` steps.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nlhf_torch.generation import sequence_logits
    from nlhf_torch.kernels import sequence_logprobs
    from nlhf_torch.tiny import build_tiny_model, build_tokenizer
    from nlhf_torch.trainer import left_pad

    t0 = time.perf_counter()
    assets = Path(assets)
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
    eos = tok.eos_token_id
    p_ids = [tok(x)["input_ids"] for x in PROMPTS]
    a_ids = [tok(a, add_special_tokens=False)["input_ids"] + [eos] for a in ANSWERS]
    rows_p = [p for p in p_ids for _ in ANSWERS]
    rows_a = [a for _ in p_ids for a in a_ids]
    ids, mask = left_pad(rows_p, tok.pad_token_id, torch.device("cpu"))
    width = max(len(a) for a in rows_a)
    comp = torch.full((len(rows_a), width), tok.pad_token_id, dtype=torch.long)
    cmask = torch.zeros_like(comp)
    for i, a in enumerate(rows_a):
        comp[i, : len(a)] = torch.tensor(a)
        cmask[i, : len(a)] = 1
    weights = torch.tensor(SFT_PROBS, dtype=torch.float32).repeat(len(PROMPTS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss_value = float("nan")
    for _ in range(sft_steps):
        lp = sequence_logprobs(sequence_logits(model, ids, mask, comp, cmask), comp, cmask, 1.0)
        loss = -(weights * lp).sum() / len(PROMPTS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    probs = answer_probs(model, tok, list(PROMPTS), ANSWERS, 1.0).mean(0)
    info = {
        "answers": [a.strip() for a in ANSWERS],
        "target": list(SFT_PROBS),
        "achieved": probs.round(4).tolist(),
        "sft_loss": loss_value,
        "answer_tokens": [len(a) - 1 for a in a_ids],
        "seconds": time.perf_counter() - t0,
    }
    (tmp / "quickstart.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if policy_dir.exists():
        import shutil

        shutil.rmtree(policy_dir)
    tmp.rename(policy_dir)
    (assets / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8"
    )
    return info


def maybe_prepare(spec: Any) -> dict[str, Any] | None:
    """Build the quickstart assets when ``spec.policy.model`` is missing and lies in a
    directory named ``quickstart-assets`` (e.g. ``runs/quickstart-assets/policy``)."""
    policy = getattr(spec, "policy", None)
    if policy is None:
        return None
    path = Path(policy.model).expanduser()
    if path.exists() or path.parent.name != ASSETS_DIR_NAME or path.name != "policy":
        return None
    print(f"quickstart: building the tiny SFT policy in {path.parent} (first run only)")
    return prepare_assets(path.parent, seed=spec.seed)


# ------------------------------------------------------------------------- main
def run_quickstart(spec: Any, output: str | Path) -> dict[str, Any]:
    """Train ``spec`` (Nash-MD-PG) and the same spec with ``rlhf_pg``; compare both."""
    from nlhf.spec import RunSpec

    from nlhf_torch.trainer import train_nash

    output = Path(output)
    t0 = time.perf_counter()
    maybe_prepare(spec)
    nash = train_nash(spec, output / spec.algorithm.name)
    data = spec.model_dump()
    data["algorithm"] = {
        "name": "rlhf_pg",
        "tau": data["algorithm"]["tau"],
        "kl_estimator": data["algorithm"]["kl_estimator"],
    }
    rlhf_spec = RunSpec.model_validate(data)
    rlhf = train_nash(rlhf_spec, output / "rlhf_pg")
    report = {
        "nash": nash.get("oracle"),
        "rlhf": rlhf.get("oracle"),
        "seconds_per_step": {
            spec.algorithm.name: nash["seconds_per_step"],
            "rlhf_pg": rlhf["seconds_per_step"],
        },
        "generated_tokens_per_s": {
            spec.algorithm.name: nash["tokens_per_s"],
            "rlhf_pg": rlhf["tokens_per_s"],
        },
        "wall_seconds": time.perf_counter() - t0,
    }
    from nlhf.runio import write_summary

    write_summary(output, report)
    return report


def format_report(report: dict[str, Any]) -> str:
    nash, rlhf = report["nash"], report["rlhf"]
    lines = [
        f"answers                 {'  '.join(f'{a:>7}' for a in nash['answers'])}",
    ]
    for label, dist in (
        ("reference μ (SFT)", nash["reference"]),
        (f"regularised NE (τ={nash['tau']:g})", nash["regularized_nash"]),
        ("Nash-MD-PG policy", nash["policy"]),
        ("RLHF-PG policy", rlhf["policy"]),
    ):
        lines.append(f"{label:<24}{'  '.join(f'{v:7.3f}' for v in dist.values())}")
    lines += [
        f"TV(μ, NE)               {nash['tv_reference_to_nash']:.3f}",
        f"TV(Nash-MD-PG, NE)      {nash['tv_policy_to_nash']:.3f}",
        f"TV(RLHF-PG, NE)         {rlhf['tv_policy_to_nash']:.3f}  "
        f"(largest answer prob {rlhf['max_answer_prob']:.3f})",
        f"s/step {report['seconds_per_step']}; generated tokens/s "
        f"{ {k: round(v, 1) for k, v in report['generated_tokens_per_s'].items()} }",
        f"wall {report['wall_seconds']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from nlhf.spec.load import load_spec

    parser = argparse.ArgumentParser(
        prog="python -m nlhf_torch.quickstart",
        description="Nash-MD-PG vs RLHF-PG on a non-transitive population (offline, CPU).",
    )
    parser.add_argument("--spec", default=QUICKSTART_SPEC)
    parser.add_argument("--out", default=None, help="default: the spec's output.dir")
    parser.add_argument(
        "--set", action="append", default=[], help="override, e.g. training.steps=50"
    )
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = load_spec(args.spec, args.set)
    report = run_quickstart(spec, args.out or spec.output.dir)
    print(format_report(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
