"""The quickstart comparison: the spec's Nash algorithm and the same spec with ``rlhf_pg``,
each trained on the torch backend, and a table of both against the regularised NE."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nlhf.plugins import get_backend
from nlhf.runio import write_summary
from nlhf.spec import RunSpec


def rlhf_variant(spec: RunSpec) -> RunSpec:
    """``spec`` with ``algorithm: rlhf_pg`` (same τ and KL estimator)."""
    data = spec.model_dump()
    data["algorithm"] = {
        "name": "rlhf_pg",
        "tau": data["algorithm"]["tau"],
        "kl_estimator": data["algorithm"]["kl_estimator"],
    }
    return RunSpec.model_validate(data)


def run_quickstart(spec: RunSpec, output: str | Path, backend: str = "torch") -> dict[str, Any]:
    """Train ``spec`` (Nash-MD-PG) into ``output/<algorithm>`` and its :func:`rlhf_variant`
    into ``output/rlhf_pg``; write and return the comparison (``summary.json``). The
    assets must exist (:func:`nlhf_quickstart.assets.ensure_assets`)."""
    output = Path(output)
    t0 = time.perf_counter()
    engine = get_backend(backend)
    nash = engine.train(spec, output / spec.algorithm.name)
    rlhf = engine.train(rlhf_variant(spec), output / "rlhf_pg")
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
    write_summary(output, report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The comparison as a fixed-width table."""
    nash, rlhf = report["nash"], report["rlhf"]
    lines = [f"answers                 {'  '.join(f'{a:>7}' for a in nash['answers'])}"]
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
