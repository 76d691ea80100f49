"""``task: evaluate`` for LLM policies: win-rates between policies (docs/evaluation.md), the
framework-free part shared by every backend.

For policies π_1..π_k (checkpoint directories, or run directories meaning their latest
checkpoint), prompts x_1..x_N from ``data`` and ``n = eval.samples_per_prompt``:

1. each policy samples responses y_i^{x,s} ~ π_i(·|x) (s = 1..n) at the spec's generation
   temperature T, ONCE; the same responses serve every cell of its row and column. Each
   policy has its own random stream (:func:`policy_stream`: seeded by the spec's seed and
   the policy's name): with one shared seed, inverse-CDF sampling would feed the same
   uniforms to y_i and y_j, coupling them, and the paired mean would no longer estimate
   P(π_j ≻ π_i) = E_{y~π_i, y'~π_j indep.}P(y'≻y);
2. cell (i, j) averages the N·n outcomes o = P(y_j^{x,s} ≻ y_i^{x,s} | x) of the
   preference (oracle / llm_judge / pairwise_model / bradley_terry_reward); the cell (j, i)
   is 1 − it (the preferences are antisymmetric), so the matrix holds
   P(π_column ≻ π_row) (paper Table 1); the CI is Clopper–Pearson if every outcome is 0/1,
   else a bootstrap over prompts (:mod:`nlhf.evaluation.winrate`);
3. per policy: KL(π_T‖μ_T) estimated without bias by the mean of
   log π(y|x) − log μ(y|x) over its samples (log-probs of log_softmax(logits/T), the
   sampling distribution), and the mean response length in tokens (EOS included).

Caching: ``responses/<h>.jsonl`` with h = sha256(policy path + weight-file sizes and
mtimes + reference + prompts + n + T + max_new_tokens + seed [+ the backend's
``cache_key``]), and ``comparisons/<h_row>-<h_col>-<h_pref>.json``. Adding a policy to a
finished evaluation therefore samples one policy and compares k − 1 new pairs; nothing
else is recomputed.

Fields missing from the evaluation spec (``policy``, ``preference``, ``data``,
``training.generation``) are taken from the first run directory's ``spec.resolved.yaml``.

A backend supplies an :class:`EvalBackend`: a factory of a :class:`ResponseSampler`
("``samples_per_prompt`` responses per prompt, with their log-probs under the policy and
the reference") and a factory of a :class:`TextPreference` ("P(y≻y'|x) on texts");
:func:`evaluate_llm` does the rest and writes the same files for every backend.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nlhf.data.tokenizer import check_model_path
from nlhf.errors import InputError
from nlhf.evaluation.tabular import split_name, unique_names
from nlhf.evaluation.winrate import WinRateMatrix, matrix_from_outcomes
from nlhf.runio import atomic_write_text, latest_checkpoint, write_json
from nlhf.training.progress import Progress

if TYPE_CHECKING:
    from nlhf.spec.models import RunSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
RESPONSE_KEYS = (
    "prompt_index",
    "sample",
    "response",
    "length",
    "logp_policy",
    "logp_reference",
    "tokens",
)
"""Keys of one row of ``responses/<h>.jsonl`` (after its ``{"meta": ...}`` line);
``tokens`` are the sampled ids (mask 1, EOS included), ``length = len(tokens)``."""


@dataclass
class PolicyEntry:
    """A resolved ``eval.policies`` entry."""

    name: str
    path: Path
    """The model directory (a checkpoint) the backend loads."""
    run_dir: Path | None = None
    step: int | None = None
    base_model: str | None = None
    """For a LoRA checkpoint (a peft ``adapter_config.json`` instead of ``config.json``):
    the model the adapter was trained on, its run's ``policy.model`` (else the evaluation
    spec's); the backend loads it and applies the adapter."""


ADAPTER_CONFIG = "adapter_config.json"


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file()


def resolve_policy(entry: str, *, reference: str | None = None) -> PolicyEntry:
    """``[NAME=]PATH``: a model/checkpoint directory (``config.json``, or a LoRA adapter's
    ``adapter_config.json``), a run directory (its latest ``checkpoints/step-N``), or
    ``reference`` (the reference model)."""
    name, body = split_name(entry)
    if body == "reference":
        if reference is None:
            raise InputError("eval.policies: 'reference' needs reference.model or policy.model")
        return PolicyEntry(name or "reference", Path(reference))
    path = Path(body)
    if not path.is_dir():
        raise InputError(f"eval.policies: {body}: no such directory (a checkpoint or run dir)")
    if _is_checkpoint(path):
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        step = None
        if run_dir is not None and path.name.startswith("step-"):
            step = int(path.name.split("-", 1)[1]) if path.name[5:].isdigit() else None
        default = f"{run_dir.name}@{step}" if run_dir is not None and step else path.name
        return PolicyEntry(name or default, path, run_dir, step)
    latest = latest_checkpoint(path)
    if latest is None:
        raise InputError(
            f"eval.policies: {body} has neither config.json (a model), {ADAPTER_CONFIG} (a "
            "LoRA checkpoint) nor checkpoints/step-N (a run directory)"
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


def complete_spec(spec: RunSpec, entries: list[PolicyEntry]) -> RunSpec:
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


def fingerprint(path: Path) -> list[Any]:
    """``[name, size, mtime_ns]`` of each weight file in ``path`` (the cache's notion of
    "the same checkpoint"); empty for a hub id, which has no local files."""
    if not Path(path).is_dir():
        return []
    files = sorted(p for p in Path(path).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def content_hash(data: Any) -> str:
    """First 16 hex digits of sha256 of ``data`` as sorted-key JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def policy_stream(seed: int, name: str) -> int:
    """The seed in [0, 2⁶³) of the policy ``name``'s random stream: depends on (seed, name)
    only, so results are reproducible and two policies never share uniforms."""
    return int(content_hash({"seed": seed, "name": name}), 16) % 2**63


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class ResponseSampler(Protocol):
    """A backend's sampler, built once per evaluation (holding the reference μ)."""

    def sample(self, entry: PolicyEntry, seed: int) -> list[dict[str, Any]]:
        """``eval.samples_per_prompt`` responses per prompt from ``entry``'s model, drawn
        from a stream seeded by ``seed``: one dict per (prompt_index, sample) with the keys
        :data:`RESPONSE_KEYS` (log-probs at the generation temperature)."""
        ...


class TextPreference(Protocol):
    def prob(self, prompts: list[str], ys: list[str], yps: list[str]) -> Any:
        """P(ys[b] ≻ yps[b] | prompts[b]) for each b, array-like (B,) in [0, 1]."""
        ...


@dataclass
class EvalBackend:
    """What :func:`evaluate_llm` needs from a backend."""

    name: str
    device: str
    make_sampler: Callable[[Any, str, list[str]], ResponseSampler]
    """``(spec, reference_path, prompts)`` -> sampler; called only if a policy has no
    cached responses (so a fully cached evaluation loads no model)."""
    make_preference: Callable[[Any], TextPreference]
    """``spec`` -> preference; called only if a comparison is not cached."""
    cache_key: dict[str, Any] = field(default_factory=dict)
    """Extra fields of the responses hash (e.g. ``{"backend": "jax"}``: backends draw
    different streams from one seed, so their responses are cached apart)."""
    check: Callable[[Any], None] | None = None
    """Raise on a completed spec the backend cannot run, before any model loads."""


def _resolve(spec: RunSpec) -> tuple[RunSpec, list[PolicyEntry], str]:
    """(completed spec, entries with unique names, reference path)."""
    if spec.eval is None or not spec.eval.policies:
        raise InputError("eval.policies: list the checkpoints or run directories to compare")
    is_ref = [split_name(e)[1] == "reference" for e in spec.eval.policies]
    found = [
        None if r else resolve_policy(e) for e, r in zip(spec.eval.policies, is_ref, strict=True)
    ]
    spec = complete_spec(spec, [e for e in found if e is not None])
    assert spec.eval is not None and spec.policy is not None  # checked above / by complete_spec
    ref_path = spec.reference.model or spec.policy.model
    check_model_path(ref_path, "reference.model" if spec.reference.model else "policy.model")
    entries = [
        x if x is not None else resolve_policy(e, reference=ref_path)
        for e, x in zip(spec.eval.policies, found, strict=True)
    ]
    names = unique_names([e.name for e in entries], [str(e.path) for e in entries])
    for entry, name in zip(entries, names, strict=True):
        entry.name = name
        if not (entry.path / "config.json").is_file() and (entry.path / ADAPTER_CONFIG).is_file():
            run = _run_spec(entry.run_dir)
            entry.base_model = (run.policy if run and run.policy else spec.policy).model
    return spec, entries, ref_path


def policy_stats(entry: PolicyEntry, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """KL(π‖μ) ≈ mean of log π(y|x) − log μ(y|x) over the policy's own samples (unbiased;
    ``kl_stderr`` = sample std / √m), the mean length in tokens, the checkpoint and step."""
    log_ratio = np.array([r["logp_policy"] - r["logp_reference"] for r in rows])
    lengths = np.array([r["length"] for r in rows], dtype=float)
    return {
        "kl_to_reference": float(log_ratio.mean()),
        "kl_stderr": float(log_ratio.std(ddof=1) / math.sqrt(len(rows))) if len(rows) > 1 else 0.0,
        "mean_length": float(lengths.mean()),
        "samples": len(rows),
        "checkpoint": str(entry.path),
        "step": entry.step,
    }


def evaluate_llm(spec: RunSpec, output: Path | None, backend: EvalBackend) -> dict[str, Any]:
    """Run a ``task: evaluate`` spec (module docstring); write ``winrate.csv``,
    ``winrate.json``, ``summary.json``, ``spec.resolved.yaml``, ``responses/``,
    ``comparisons/`` and (``output.plots``) ``plots/winrate.{png,svg}``; return the
    summary."""
    from nlhf.data.prompts import load_prompts
    from nlhf.runio import write_resolved_spec, write_summary
    from nlhf.tracking import track

    start = time.perf_counter()
    spec, entries, ref_path = _resolve(spec)
    # _resolve raised an InputError unless every section below is set
    assert spec.eval is not None and spec.policy is not None
    assert spec.data is not None and spec.preference is not None
    if backend.check is not None:
        backend.check(spec)
    names = [e.name for e in entries]
    out = Path(output if output is not None else spec.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_spec(out, spec)

    prompts = load_prompts(spec.data)
    if spec.eval.num_prompts is not None:
        prompts = prompts[: spec.eval.num_prompts]
    n = spec.eval.samples_per_prompt
    gen = spec.training.generation
    sampling = {
        "prompts": prompts,
        "n": n,
        "temperature": gen.temperature,
        "max_new_tokens": gen.max_new_tokens,
        "seed": spec.seed,
        "chat_template": spec.policy.chat_template,
        "reference": [str(Path(ref_path).resolve()), fingerprint(Path(ref_path))],
        "seeding": "per-policy",
        **backend.cache_key,
    }
    sampler: ResponseSampler | None = None
    hashes: list[str] = []
    responses: list[list[dict[str, Any]]] = []
    cached = 0
    k = len(entries)
    with Progress(k + k * (k - 1) // 2, "evaluate") as bar:  # sample each policy, compare each pair
        for entry in entries:
            bar.advance(policy=entry.name)
            stream = policy_stream(spec.seed, entry.name)
            policy_id = [str(entry.path.resolve()), fingerprint(entry.path), stream]
            if entry.base_model is not None:  # a LoRA adapter: its base model counts too
                base = Path(entry.base_model)
                policy_id.append([str(base.resolve()), fingerprint(base) if base.is_dir() else []])
            h = content_hash({"policy": policy_id, **sampling})
            path = out / "responses" / f"{h}.jsonl"
            if path.is_file():
                rows = read_jsonl(path)
                cached += 1
            else:
                if sampler is None:
                    sampler = backend.make_sampler(spec, ref_path, prompts)
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

        pref_hash = content_hash(spec.preference.model_dump(mode="json"))
        preference: TextPreference | None = None
        outcomes: dict[tuple[int, int], np.ndarray] = {}
        groups: dict[tuple[int, int], np.ndarray] = {}
        new_cells = 0
        for i in range(k):
            for j in range(i + 1, k):
                bar.advance(pair=f"{entries[i].name} vs {entries[j].name}")
                fwd = out / "comparisons" / f"{hashes[i]}-{hashes[j]}-{pref_hash}.json"
                bwd = out / "comparisons" / f"{hashes[j]}-{hashes[i]}-{pref_hash}.json"
                if fwd.is_file():
                    o = np.asarray(json.loads(fwd.read_text())["outcomes"], dtype=float)
                elif bwd.is_file():
                    o = 1.0 - np.asarray(json.loads(bwd.read_text())["outcomes"], dtype=float)
                else:
                    if preference is None:
                        preference = backend.make_preference(spec)
                    xs = [prompts[r["prompt_index"]] for r in responses[i]]
                    ys_row = [r["response"] for r in responses[i]]
                    ys_col = [r["response"] for r in responses[j]]
                    # P(y_col ≻ y_row | x): column beats row
                    o = np.asarray(preference.prob(xs, ys_col, ys_row), dtype=np.float64).reshape(
                        -1
                    )
                    write_json(
                        fwd, {"row": entries[i].name, "column": entries[j].name, "outcomes": o}
                    )
                    new_cells += 1
                outcomes[(i, j)] = o
                groups[(i, j)] = np.array([r["prompt_index"] for r in responses[i]])
    result: WinRateMatrix = matrix_from_outcomes(
        names, outcomes, confidence=spec.eval.confidence, groups=groups, seed=spec.seed
    )
    per_policy = {e.name: policy_stats(e, rows) for e, rows in zip(entries, responses, strict=True)}
    result.per_policy = per_policy
    result.meta = {
        "backend": backend.name,
        "kind": "sampled",
        "preference": spec.preference.model_dump(mode="json"),
        "prompts": len(prompts),
        "samples_per_prompt": n,
        "temperature": gen.temperature,
        "max_new_tokens": gen.max_new_tokens,
        "reference": ref_path,
    }
    result.write(out)
    with track(spec, out, "evaluate"):  # output.report_to: the plots and the summary
        plots: list[str] = []
        if spec.output.plots:
            from nlhf.evaluation.plots import save_figure, winrate_heatmap

            plots = save_figure(winrate_heatmap(result), out / "plots" / "winrate")
        summary = {
            "task": "evaluate",
            "backend": backend.name,
            "policies": names,
            "matrix": result.mean.tolist(),
            "column_average": result.column_average().tolist(),
            "per_policy": per_policy,
            "responses_cached": cached,
            "responses_sampled": k - cached,
            "cells_compared": new_cells,
            "plots": plots,
            "seconds": time.perf_counter() - start,
            "device": backend.device,
        }
        write_summary(out, summary)
    return summary
