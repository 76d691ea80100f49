"""Hostile specs through the real CLI: every one is refused with exit 2, a ``FILE:LINE:COL``
location naming the offending field, no traceback, within seconds.

Cases are generated (spec fields × bad values) from two valid base specs, a tabular one and
an LLM one (a local model directory with a ``config.json``, so the memory estimate can read
the vocabulary size); a few run through ``python -m nlhf.cli`` in a subprocess to prove the
console entry point prints no traceback either.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nlhf
import pytest
import yaml
from nlhf import cli
from nlhf import plugins as plugins_mod
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

TABULAR: dict[str, Any] = {
    "spec_version": 1,
    "task": "nash",
    "seed": 0,
    "preference": {"name": "tabular", "matrix": [[0.5, 0.9], [0.1, 0.5]]},
    "reference": {"probs": [0.5, 0.5]},
    "algorithm": {"name": "nash_md", "tau": 0.1, "steps": 100},
    "output": {"dir": "OUT"},
}
LLM: dict[str, Any] = {
    "spec_version": 1,
    "task": "nash",
    "seed": 0,
    "policy": {"model": "MODEL"},
    "preference": {"name": "oracle", "function": "population"},
    "data": {"path": "PROMPTS", "format": "prompt"},
    "algorithm": {"name": "nash_md_pg", "beta": 0.125, "tau": 0.05},
    "training": {"steps": 10, "batch_size": 8, "lr": 0.0005, "generation": {"max_new_tokens": 4}},
    "output": {"dir": "OUT"},
}
MODEL_CONFIG = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
"""A tiny Llama's config.json (no weights: validation never loads the model)."""


@dataclass(frozen=True)
class Case:
    id: str
    field: str
    """Dotted field path the error must name (``""``: only the location is checked)."""
    build: Callable[[Path], str]
    """Spec text, given a scratch directory (placeholders already filled in)."""


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def _fill(text: str, tmp: Path) -> str:
    model = tmp / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(MODEL_CONFIG))
    prompts = tmp / "prompts.jsonl"
    prompts.write_text('{"prompt": "Which fruit?"}\n')
    return (
        text.replace("MODEL", str(model))
        .replace("PROMPTS", str(prompts))
        .replace("OUT", str(tmp / "out"))
    )


def _mutated(base: dict[str, Any], *changes: tuple[str, Any]) -> Callable[[Path], str]:
    data = base
    for dotted, value in changes:
        data = _set(data, dotted, value)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=200)
    return lambda tmp: _fill(text, tmp)


def _raw(text: str) -> Callable[[Path], str]:
    return lambda tmp: _fill(text, tmp)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", repr(value))[:20]


# ------------------------------------------------------------------------ the cases
INT_FIELDS = {
    "seed": None,
    "algorithm.steps": None,
    "algorithm.log_every": None,
    "training.steps": None,
    "training.batch_size": None,
    "training.grad_accum": None,
    "training.warmup_steps": None,
    "training.epochs": None,
    "training.log_every": None,
    "training.eval_every": None,
    "training.generation.max_new_tokens": None,
    "training.generation.top_k": None,
    "output.checkpoint_every": None,
    "output.keep_last": None,
}
BAD_INTS = [True, 2.5, "ten", 1e26, -3]
FLOAT_FIELDS = [
    "training.lr",
    "training.max_grad_norm",
    "training.optimizer.eps",
    "training.optimizer.weight_decay",
    "training.generation.temperature",
    "algorithm.tau",
    "algorithm.eta",
]
BAD_FLOATS = [float("inf"), float("nan"), True]
LLM_FLOAT_FIELDS = ["algorithm.beta", "algorithm.tau"]
BAD_MATRICES = {
    "non_square": [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]],
    "ragged": [[0.5, 0.9], [0.1]],
    "not_antisymmetric": [[0.5, 0.9], [0.2, 0.5]],
    "not_antisymmetric_3": [[0.5, 0.6, 0.7], [0.4, 0.5, 0.6], [0.3, 0.3, 0.5]],
    "above_one": [[0.5, 1.5], [-0.5, 0.5]],
    "below_zero": [[0.5, -0.1], [1.1, 0.5]],
    "diagonal": [[0.4, 0.9], [0.1, 0.6]],
    "nan": [[0.5, float("nan")], [float("nan"), 0.5]],
    "inf": [[0.5, float("inf")], [0.1, 0.5]],
    "empty": [],
    "empty_row": [[]],
    "one_by_one": [[0.5]],
    "strings": [["a", "b"], ["c", "d"]],
}


def _cases() -> list[Case]:
    cases: list[Case] = []
    for dotted in INT_FIELDS:
        for value in BAD_INTS:
            if value == -3 and dotted in ("training.generation.top_k", "training.warmup_steps"):
                continue  # ge=0 fields: -3 is covered below by the positive fields
            cases.append(
                Case(f"int-{dotted}-{_slug(value)}", dotted, _mutated(TABULAR, (dotted, value)))
            )
    for dotted in FLOAT_FIELDS:
        for value in BAD_FLOATS:
            cases.append(
                Case(f"float-{dotted}-{_slug(value)}", dotted, _mutated(TABULAR, (dotted, value)))
            )
    for dotted in LLM_FLOAT_FIELDS:
        for value in BAD_FLOATS:
            cases.append(
                Case(f"llm-{dotted}-{_slug(value)}", dotted, _mutated(LLM, (dotted, value)))
            )
    for betas in ([1.0, 0.9], [0.9, 1.5], [-0.1, 0.9], [0.9, float("nan")], [0.9]):
        cases.append(
            Case(
                f"betas-{_slug(betas)}",
                "training.optimizer.betas",
                _mutated(TABULAR, ("training.optimizer.betas", betas)),
            )
        )
    for name, matrix in BAD_MATRICES.items():
        cases.append(
            Case(
                f"matrix-{name}",
                "preference.matrix",
                _mutated(TABULAR, ("preference.matrix", matrix)),
            )
        )
    cases += [
        Case(
            "reference-too-long",
            "reference.probs",
            _mutated(TABULAR, ("reference.probs", [0.2, 0.3, 0.5])),
        ),
        Case(
            "reference-vs-game",
            "reference.probs",
            _mutated(
                TABULAR,
                ("preference", {"name": "tabular", "game": "rps"}),
                ("reference.probs", [0.5, 0.5]),
            ),
        ),
        Case(
            "reference-vs-random-size",
            "reference.probs",
            _mutated(
                TABULAR,
                ("preference", {"name": "tabular", "game": "random", "size": 4}),
                ("reference.probs", [0.5, 0.5]),
            ),
        ),
        Case(
            "seed-of-fixed-game",
            "preference.seed",
            _mutated(TABULAR, ("preference", {"name": "tabular", "game": "dice", "seed": 3})),
        ),
        Case(
            "random-game-too-big",
            "preference.size",
            _mutated(
                TABULAR,
                ("preference", {"name": "tabular", "game": "random", "size": 10**6}),
                ("reference", {}),
            ),
        ),
        Case(
            "grad-accum-3-of-8",
            "training.grad_accum",
            _mutated(LLM, ("training.grad_accum", 3)),
        ),
        Case(
            "grad-accum-2-of-5",
            "training.grad_accum",
            _mutated(LLM, ("training.batch_size", 5), ("training.grad_accum", 2)),
        ),
        Case(
            "grad-accum-above-batch",
            "training.grad_accum",
            _mutated(LLM, ("training.grad_accum", 16)),
        ),
        Case(
            "oracle-typo",
            "preference.function",
            _mutated(LLM, ("preference.function", "populaton")),
        ),
        Case(
            "oracle-unknown",
            "preference.function",
            _mutated(LLM, ("preference.function", "no_such_oracle")),
        ),
        Case(
            "oracle-unknown-option",
            "preference.options",
            _mutated(LLM, ("preference.options", {"colour": "red"})),
        ),
        Case(
            "oracle-option-type",
            "preference.options",
            _mutated(
                LLM,
                ("preference.function", "population_typed"),
                ("preference.options", {"eval_samples": "many"}),
            ),
        ),
        Case("llm-tau-inf", "algorithm.tau", _mutated(LLM, ("algorithm.tau", float("inf")))),
        Case(
            "llm-tau-schedule-inf",
            "algorithm.tau",
            _mutated(LLM, ("algorithm.tau", {"kind": "linear", "start": 0.1, "end": float("inf")})),
        ),
        Case(
            "ema-decay-inf",
            "algorithm.ema_decay",
            _mutated(LLM, ("algorithm", {"name": "nash_ema_pg", "ema_decay": float("inf")})),
        ),
        Case(
            "algorithm-steps-1e26-text",
            "algorithm.steps",
            _raw(
                "spec_version: 1\ntask: nash\n"
                "preference: {name: tabular, game: rps}\n"
                "algorithm: {name: nash_md, tau: 0.1, steps: 1e26}\n"
                "output: {dir: OUT}\n"
            ),
        ),
        Case(
            "algorithm-steps-huge-int",
            "algorithm.steps",
            _mutated(TABULAR, ("algorithm.steps", 10**26)),
        ),
        Case("seed-huge", "seed", _mutated(TABULAR, ("seed", 2**70))),
        Case("output-dir-empty", "output.dir", _mutated(TABULAR, ("output.dir", ""))),
        Case("output-dir-blank", "output.dir", _mutated(TABULAR, ("output.dir", "   "))),
        # ---- memory: sizes no machine has room for (class 8)
        Case(
            "memory-batch-size",
            "training.batch_size",
            _mutated(LLM, ("training.batch_size", 2_000_000)),
        ),
        Case(
            "memory-max-new-tokens",
            "training.generation.max_new_tokens",
            _mutated(LLM, ("training.generation.max_new_tokens", 50_000_000)),
        ),
        Case(
            "memory-max-prompt-length",
            "data.max_prompt_length",
            _mutated(LLM, ("data.max_prompt_length", 100_000_000)),
        ),
    ]
    cases += _output_cases() + _yaml_bombs()
    return cases


def _output_cases() -> list[Case]:
    def file_as_dir(tmp: Path) -> str:
        (tmp / "taken").write_text("not a directory")
        return _mutated(TABULAR, ("output.dir", str(tmp / "taken")))(tmp)

    def under_file(tmp: Path) -> str:
        (tmp / "afile").write_text("not a directory")
        return _mutated(TABULAR, ("output.dir", str(tmp / "afile" / "run")))(tmp)

    def deep_under_file(tmp: Path) -> str:
        (tmp / "bfile").write_text("not a directory")
        return _mutated(TABULAR, ("output.dir", str(tmp / "bfile" / "a" / "b")))(tmp)

    def dev_null(tmp: Path) -> str:
        return _mutated(TABULAR, ("output.dir", "/dev/null/run"))(tmp)

    return [
        Case("output-is-a-file", "output.dir", file_as_dir),
        Case("output-under-a-file", "output.dir", under_file),
        Case("output-deep-under-a-file", "output.dir", deep_under_file),
        Case("output-under-dev-null", "output.dir", dev_null),
    ]


def _billion_laughs(levels: int) -> str:
    lines = ["spec_version: 1", "task: nash", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        refs = ", ".join([f"*a{k - 1}"] * 10)
        lines.append(f"a{k}: &a{k} [{refs}]")
    lines.append(f"preference: {{name: tabular, game: rps, extra: *a{levels - 1}}}")
    return "\n".join(lines) + "\n"


def _yaml_bombs() -> list[Case]:
    deep_list = "spec_version: 1\nalgorithm: " + "[" * 5000 + "]" * 5000 + "\n"
    deep_map = "spec_version: 1\nalgorithm: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n"
    nested_block = "spec_version: 1\nalgorithm:\n" + "".join(
        f"{'  ' * (k + 1)}k{k}:\n" for k in range(300)
    )
    merge = ["spec_version: 1", "m0: &m0 {x0: 1}"]
    for k in range(1, 40):
        merge.append(f"m{k}: &m{k} {{<<: [*m{k - 1}, *m{k - 1}], x{k}: 1}}")
    merge.append("algorithm: *m39")
    return [
        Case("yaml-billion-laughs-9", "", _raw(_billion_laughs(9))),
        Case("yaml-billion-laughs-40", "", _raw(_billion_laughs(40))),
        Case("yaml-deep-list-5000", "", _raw(deep_list)),
        Case("yaml-deep-map-3000", "", _raw(deep_map)),
        Case("yaml-deep-block-300", "", _raw(nested_block)),
        Case("yaml-merge-chain-40", "", _raw("\n".join(merge) + "\n")),
    ]


CASES = _cases()
runner = CliRunner()


def population(
    answers: tuple[str, ...] = ("a", "b"), reward: str = "bradley_terry", eval_samples: int = 64
) -> Any:
    """An oracle factory with explicit keyword options (checked by signature)."""
    return lambda prompts, ys, yps: [0.5] * len(ys)


class TypedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eval_samples: int = 64


class OraclePlugin:
    """The oracles the LLM cases use: ``population`` (options checked against the
    factory's signature) and ``population_typed`` (against a ``params_model``)."""

    __name__ = "adversarial_oracles"

    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("population", population)
        register("population_typed", population, params_model=TypedOptions)


@pytest.fixture(autouse=True)
def oracle_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLHF_PLUGINS", "")  # installed plugins do not change the answers
    built = plugins_mod.build_plugins(extra=[OraclePlugin()])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)


MAX_SECONDS = 10.0
"""An answer within seconds, on a slow shared CI core."""


def test_adversarial_there_are_at_least_100_distinct_cases() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_adversarial_spec_is_refused_located_without_traceback(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(case.build(tmp_path))
    start = time.monotonic()
    result = runner.invoke(cli.get_app(), ["validate", str(path)])
    elapsed = time.monotonic() - start
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    assert result.exit_code == 2, output
    located = re.findall(rf"^{re.escape(str(path))}:(\d+):(\d+): (.*)$", result.stderr, re.M)
    assert located, output
    if case.field:
        assert any(msg.startswith(f"{case.field}") for _, _, msg in located), output
    assert elapsed < MAX_SECONDS, f"{elapsed:.1f} s"


SUBPROCESS_CASES = ["yaml-billion-laughs-40", "yaml-deep-list-5000", "output-under-a-file"]


@pytest.mark.slow  # a fresh interpreter per case: 2-5 s each on a shared CPU
@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_adversarial_console_entry_prints_no_traceback(case_id: str, tmp_path: Path) -> None:
    """The installed entry point (a fresh interpreter, real plugins): exit 2, located, no
    traceback, and memory stays small (a 3 GiB address-space limit would kill a bomb)."""
    [case] = [c for c in CASES if c.id == case_id]
    path = tmp_path / "spec.yaml"
    path.write_text(case.build(tmp_path))
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
        "from nlhf.cli import main; sys.argv = ['nlhf', 'validate', sys.argv[1]]; main()"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: ", proc.stderr, re.M), proc.stderr
    assert elapsed < 30, f"{elapsed:.1f} s"
