"""``task: evaluate`` on the torch backend: win-rates between LLM policies (issue 7).

For policies π_1..π_k (checkpoint directories, or run directories meaning their latest
checkpoint), prompts x_1..x_N from ``data`` and ``n = eval.samples_per_prompt``:

1. each policy samples responses y_i^{x,s} ~ π_i(·|x) (s = 1..n) at the spec's generation
   temperature T, ONCE; the same responses serve every cell of its row and column. Each
   policy has its own random stream (seeded by the spec's seed and the policy's name):
   with one shared seed,
   inverse-CDF sampling would feed the same uniforms to y_i and y_j, coupling them, and
   the paired mean would no longer estimate P(π_j ≻ π_i) = E_{y~π_i, y'~π_j indep.}P(y'≻y);
2. cell (i, j) averages the N·n outcomes o = P(y_j^{x,s} ≻ y_i^{x,s} | x) of the
   preference (oracle / llm_judge / pairwise_model / bradley_terry_reward); the cell (j, i)
   is 1 − it (the preferences are antisymmetric), so the matrix holds
   P(π_column ≻ π_row) (paper Table 1); the CI is Clopper–Pearson if every outcome is 0/1,
   else a bootstrap over prompts (:mod:`nlhf.evaluation.winrate`);
3. per policy: KL(π_T‖μ_T) estimated without bias by the mean of
   log π(y|x) − log μ(y|x) over its samples (log-probs of log_softmax(logits/T), the
   sampling distribution), and the mean response length in tokens (EOS included).

Caching: ``responses/<h>.jsonl`` with h = sha256(policy path + weight-file sizes and
mtimes + reference + prompts + n + T + max_new_tokens + seed), and
``comparisons/<h_row>-<h_col>-<h_pref>.json``. Adding a policy to a finished evaluation
therefore samples one policy and compares k − 1 new pairs; nothing else is recomputed.

Fields missing from the evaluation spec (``policy``, ``preference``, ``data``,
``training.generation``) are taken from the first run directory's ``spec.resolved.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nlhf.errors import InputError
from nlhf.evaluation.tabular import split_name, unique_names
from nlhf.evaluation.winrate import WinRateMatrix, matrix_from_outcomes
from nlhf.runio import atomic_write_text, latest_checkpoint, write_json

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class PolicyEntry:
    """A resolved ``eval.policies`` entry."""

    name: str
    path: Path
    """The model directory (a checkpoint) loaded by ``AutoModelForCausalLM``."""
    run_dir: Path | None = None
    step: int | None = None


def resolve_policy(entry: str, *, reference: str | None = None) -> PolicyEntry:
    """``[NAME=]PATH``: a model/checkpoint directory (has ``config.json``), a run directory
    (its latest ``checkpoints/step-N``), or ``reference`` (the reference model)."""
    name, body = split_name(entry)
    if body == "reference":
        if reference is None:
            raise InputError("eval.policies: 'reference' needs reference.model or policy.model")
        return PolicyEntry(name or "reference", Path(reference))
    path = Path(body)
    if not path.is_dir():
        raise InputError(f"eval.policies: {body}: no such directory (a checkpoint or run dir)")
    if (path / "config.json").is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        step = None
        if run_dir is not None and path.name.startswith("step-"):
            step = int(path.name.split("-", 1)[1]) if path.name[5:].isdigit() else None
        default = f"{run_dir.name}@{step}" if run_dir is not None and step else path.name
        return PolicyEntry(name or default, path, run_dir, step)
    latest = latest_checkpoint(path)
    if latest is None:
        raise InputError(
            f"eval.policies: {body} has neither config.json (a model) nor checkpoints/step-N "
            f"(a run directory)"
        )
    step, ckpt = latest
    return PolicyEntry(name or path.name, ckpt, path, step)


def _run_spec(run_dir: Path | None) -> Any:
    if run_dir is None or not (run_dir / "spec.resolved.yaml").is_file():
        return None
    import yaml
    from nlhf.spec.models import RunSpec

    try:
        return RunSpec.model_validate(
            yaml.safe_load((run_dir / "spec.resolved.yaml").read_text(encoding="utf-8"))
        )
    except Exception:
        return None


def complete_spec(spec: Any, entries: list[PolicyEntry]) -> Any:
    """Fill ``policy``, ``preference``, ``data`` and ``training.generation`` from the first
    run directory's resolved spec when the evaluation spec omits them."""
    base = next((s for e in entries if (s := _run_spec(e.run_dir)) is not None), None)
    spec = spec.model_copy(deep=True)
    given = spec.model_fields_set
    if base is not None:
        for key in ("policy", "preference", "data"):
            if getattr(spec, key) is None:
                setattr(spec, key, getattr(base, key))
        if "training" not in given:
            spec.training.generation = base.training.generation
        if spec.reference.model is None and base.reference.model is not None:
            spec.reference.model = base.reference.model
    missing = [k for k in ("policy", "preference", "data") if getattr(spec, k) is None]
    if missing:
        raise InputError(
            f"{', '.join(missing)}: the evaluation spec needs them (or a run directory among "
            f"eval.policies whose spec.resolved.yaml has them)"
        )
    return spec


def _fingerprint(path: Path) -> list[Any]:
    files = sorted(p for p in Path(path).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class Sampler:
    """Samples and scores responses of one policy against the reference μ."""

    def __init__(self, spec: Any, reference: Any, prompts: list[str], device: torch.device):
        self.spec = spec
        self.reference = reference
        self.prompts = prompts
        self.device = device

    @torch.no_grad()
    def sample(self, entry: PolicyEntry, seed: int) -> list[dict[str, Any]]:
        """``samples_per_prompt`` responses per prompt from ``entry``, drawn from a
        generator seeded by ``seed`` (distinct per policy: see :func:`evaluate_spec`)."""
        from nlhf.data.tokenizer import tokenize_prompts

        from nlhf_torch.generation import generate_pairs, sequence_logits
        from nlhf_torch.kernels import sequence_logprobs
        from nlhf_torch.models import load_causal_lm, load_tokenizer
        from nlhf_torch.trainer import decode, left_pad

        spec = self.spec
        gen = spec.training.generation
        temp = gen.temperature
        n = spec.eval.samples_per_prompt
        tok_path = entry.path if (entry.path / "tokenizer_config.json").is_file() else None
        tokenizer = load_tokenizer(
            str(tok_path or spec.policy.tokenizer or spec.policy.model), "policy.tokenizer"
        )
        model = load_causal_lm(str(entry.path), spec.policy.dtype, f"eval.policies: {entry.name}")
        model.to(self.device).eval()
        _, ids = tokenize_prompts(self.prompts, tokenizer, spec.data, spec.policy.chat_template)
        if len(ids) != len(self.prompts):
            raise InputError("data.truncation: drop is not supported by evaluation; use left")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        pairs_per_prompt = math.ceil(n / 2)
        jobs = [(x, r) for r in range(pairs_per_prompt) for x in range(len(ids))]
        batch = spec.training.batch_size
        rows: list[dict[str, Any]] = []
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            input_ids, attn = left_pad(
                [ids[x] for x, _ in chunk], tokenizer.pad_token_id, self.device
            )
            out = generate_pairs(
                model,
                model,
                input_ids,
                attn,
                beta=0.0,
                max_new_tokens=gen.max_new_tokens,
                temperature=temp,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                opponent="policy",
                generator=generator,
            )
            for half, (toks, mask) in enumerate(
                ((out.y, out.y_mask), (out.y_prime, out.y_prime_mask))
            ):
                lp = sequence_logprobs(
                    sequence_logits(model, input_ids, attn, toks, mask), toks, mask, temp
                )
                lq = sequence_logprobs(
                    sequence_logits(self.reference, input_ids, attn, toks, mask), toks, mask, temp
                )
                texts = decode(tokenizer, toks, mask)
                for b, (x, r) in enumerate(chunk):
                    s = 2 * r + half
                    if s >= n:
                        continue
                    rows.append(
                        {
                            "prompt_index": x,
                            "sample": s,
                            "response": texts[b],
                            "length": int(mask[b].sum()),
                            "logp_policy": float(lp[b]),
                            "logp_reference": float(lq[b]),
                        }
                    )
        rows.sort(key=lambda r: (r["prompt_index"], r["sample"]))
        return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def evaluate_spec(spec: Any, output: Path | None = None, *, plugins: Any = None) -> dict[str, Any]:
    """Run a ``task: evaluate`` spec on torch (module docstring); write ``winrate.csv``,
    ``winrate.json``, ``summary.json``, ``spec.resolved.yaml``, ``responses/``,
    ``comparisons/`` and (``output.plots``) ``plots/winrate.{png,svg}``; return the
    summary. ``plugins`` overrides the process-wide plugin set (tests)."""
    from nlhf.data.prompts import load_prompts
    from nlhf.runio import write_resolved_spec, write_summary

    from nlhf_torch.models import load_causal_lm
    from nlhf_torch.preferences import build_preference

    start = time.perf_counter()
    if spec.eval is None or not spec.eval.policies:
        raise InputError("eval.policies: list the checkpoints or run directories to compare")
    is_ref = [split_name(e)[1] == "reference" for e in spec.eval.policies]
    found = [
        None if r else resolve_policy(e) for e, r in zip(spec.eval.policies, is_ref, strict=True)
    ]
    spec = complete_spec(spec, [e for e in found if e is not None])
    ref_path = spec.reference.model or spec.policy.model
    entries = [
        x if x is not None else resolve_policy(e, reference=ref_path)
        for e, x in zip(spec.eval.policies, found, strict=True)
    ]
    names = unique_names([e.name for e in entries], [str(e.path) for e in entries])
    for entry, name in zip(entries, names, strict=True):
        entry.name = name
    out = Path(output if output is not None else spec.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_spec(out, spec)

    prompts = load_prompts(spec.data)
    if spec.eval.num_prompts is not None:
        prompts = prompts[: spec.eval.num_prompts]
    n = spec.eval.samples_per_prompt
    gen = spec.training.generation
    ref_fp = [str(Path(ref_path).resolve()), _fingerprint(Path(ref_path))]
    sampling = {
        "prompts": prompts,
        "n": n,
        "temperature": gen.temperature,
        "max_new_tokens": gen.max_new_tokens,
        "seed": spec.seed,
        "chat_template": spec.policy.chat_template,
        "reference": ref_fp,
        "seeding": "per-policy",
    }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sampler: Sampler | None = None
    hashes: list[str] = []
    responses: list[list[dict[str, Any]]] = []
    cached = 0
    for entry in entries:
        # the random stream depends on (seed, name) only, so results are reproducible
        stream = int(_hash({"seed": spec.seed, "name": entry.name}), 16) % 2**63
        policy_id = [str(entry.path.resolve()), _fingerprint(entry.path), stream]
        h = _hash({"policy": policy_id, **sampling})
        path = out / "responses" / f"{h}.jsonl"
        if path.is_file():
            rows = _read_jsonl(path)
            cached += 1
        else:
            if sampler is None:
                reference = load_causal_lm(ref_path, spec.policy.dtype, "reference.model")
                reference.to(device).eval().requires_grad_(False)
                sampler = Sampler(spec, reference, prompts, device)
            # independent streams per policy: a shared seed would couple y_i and y_j
            # (same uniforms) and bias P(π_j ≻ π_i), which needs y_i ⊥ y_j
            rows = sampler.sample(entry, stream)
            meta = {"policy": str(entry.path), "name": entry.name, **sampling}
            atomic_write_text(
                path,
                json.dumps({"meta": meta}) + "\n" + "".join(json.dumps(r) + "\n" for r in rows),
            )
        rows = [r for r in rows if "meta" not in r]
        if len(rows) != len(prompts) * n:
            raise InputError(f"{path}: {len(rows)} responses, expected {len(prompts) * n}")
        hashes.append(h)
        responses.append(rows)

    pref_hash = _hash(spec.preference.model_dump(mode="json"))
    preference = None
    outcomes: dict[tuple[int, int], np.ndarray] = {}
    groups: dict[tuple[int, int], np.ndarray] = {}
    new_cells = 0
    k = len(entries)
    for i in range(k):
        for j in range(i + 1, k):
            fwd = out / "comparisons" / f"{hashes[i]}-{hashes[j]}-{pref_hash}.json"
            bwd = out / "comparisons" / f"{hashes[j]}-{hashes[i]}-{pref_hash}.json"
            if fwd.is_file():
                o = np.asarray(json.loads(fwd.read_text())["outcomes"], dtype=float)
            elif bwd.is_file():
                o = 1.0 - np.asarray(json.loads(bwd.read_text())["outcomes"], dtype=float)
            else:
                if preference is None:
                    preference = build_preference(spec, device, plugins=plugins)
                xs = [prompts[r["prompt_index"]] for r in responses[i]]
                ys_row = [r["response"] for r in responses[i]]
                ys_col = [r["response"] for r in responses[j]]
                # P(y_col ≻ y_row | x): column beats row
                o = torch.as_tensor(
                    preference.prob(xs, ys_col, ys_row), dtype=torch.float64
                ).numpy()
                write_json(fwd, {"row": entries[i].name, "column": entries[j].name, "outcomes": o})
                new_cells += 1
            outcomes[(i, j)] = o
            groups[(i, j)] = np.array([r["prompt_index"] for r in responses[i]])
    result: WinRateMatrix = matrix_from_outcomes(
        names, outcomes, confidence=spec.eval.confidence, groups=groups, seed=spec.seed
    )
    per_policy: dict[str, dict[str, Any]] = {}
    for entry, rows in zip(entries, responses, strict=True):
        log_ratio = np.array([r["logp_policy"] - r["logp_reference"] for r in rows])
        lengths = np.array([r["length"] for r in rows], dtype=float)
        per_policy[entry.name] = {
            "kl_to_reference": float(log_ratio.mean()),
            "kl_stderr": float(log_ratio.std(ddof=1) / math.sqrt(len(rows)))
            if len(rows) > 1
            else 0.0,
            "mean_length": float(lengths.mean()),
            "samples": len(rows),
            "checkpoint": str(entry.path),
            "step": entry.step,
        }
    result.per_policy = per_policy
    result.meta = {
        "backend": "torch",
        "kind": "sampled",
        "preference": spec.preference.model_dump(mode="json"),
        "prompts": len(prompts),
        "samples_per_prompt": n,
        "temperature": gen.temperature,
        "max_new_tokens": gen.max_new_tokens,
        "reference": ref_path,
    }
    result.write(out)
    plots: list[str] = []
    if spec.output.plots:
        from nlhf.evaluation.plots import save_figure, winrate_heatmap

        plots = save_figure(winrate_heatmap(result), out / "plots" / "winrate")
    summary = {
        "task": "evaluate",
        "backend": "torch",
        "policies": names,
        "matrix": result.mean.tolist(),
        "column_average": result.column_average().tolist(),
        "per_policy": per_policy,
        "responses_cached": cached,
        "responses_sampled": k - cached,
        "cells_compared": new_cells,
        "plots": plots,
        "seconds": time.perf_counter() - start,
        "device": str(device),
    }
    write_summary(out, summary)
    return summary
