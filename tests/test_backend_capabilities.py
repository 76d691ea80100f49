"""What the installed backends declare they run (numpy, torch, jax, the example backend),
checked the way ``nlhf validate SPEC --backend NAME`` checks it: one case per rule on the
quickstart spec, the CLI's output format in a fresh interpreter (located lines, exit 2, no
traceback, neither torch nor jax imported), and every spec in specs/ clean on the backends
it is meant for. The rules themselves are tested on synthetic capabilities in
packages/nlhf-core/tests/test_capabilities.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nlhf import cli
from nlhf.errors import SpecError
from nlhf.spec import load_spec
from nlhf.spec.capabilities import capabilities_of, check_spec_file
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "specs" / "quickstart.yaml"
TABULAR = REPO / "specs" / "tabular-rps.yaml"
START = next(  # the spec's first key, where problems of absent sections are located
    i for i, line in enumerate(QUICKSTART.read_text().splitlines(), 1) if line[:1].isalpha()
)
runner = CliRunner()


def problems(
    backend: str, overrides: list[str], spec: Path = QUICKSTART, nproc: int = 1
) -> list[str]:
    pytest.importorskip({"torch": "nlhf_torch", "jax": "nlhf_jax"}.get(backend, "nlhf"))
    try:
        check_spec_file(load_spec(spec, overrides), backend, spec, overrides, nproc=nproc)
    except SpecError as exc:
        return exc.issues
    return []


def test_the_issue_example() -> None:
    """`nlhf validate specs/quickstart.yaml --backend jax --set distributed.engine=deepspeed`"""
    assert problems("jax", ["distributed.engine=deepspeed"]) == [
        "--set distributed.engine=deepspeed: distributed.engine: 'deepspeed' is not supported "
        "by backend 'jax' (supported: none, jax); use --backend torch"
    ]
    assert problems("torch", ["distributed.engine=jax"]) == [
        "--set distributed.engine=jax: distributed.engine: 'jax' is not supported by backend "
        "'torch' (supported: none, deepspeed); use --backend jax"
    ]


DTYPE = ["policy.dtype=float64"]
TOP_K = ["training.generation.top_k=5"]
PREF_LORA = ["task=preference_model", "preference=null", "algorithm=null", "policy.lora.r=4"]
LORA_REF = ["policy.lora.r=4", "reference.model=other"]
MESH = ["distributed.engine=jax", "distributed.mesh.data=3"]
RLHF_JUDGE = ["algorithm={name: rlhf_pg}", "preference={name: llm_judge, model: judge}"]
EVAL_DS = ["task=evaluate", "algorithm=null", "eval.policies=[a]", "distributed.engine=deepspeed"]


@pytest.mark.parametrize(
    ("backend", "overrides", "expected"),
    [
        (
            "jax",
            DTYPE,
            "--set policy.dtype=float64: policy.dtype: 'float64' is not supported by "
            "backend 'jax' (supported: float32, bfloat16, float16); use --backend torch",
        ),
        ("torch", DTYPE, None),
        (
            "torch",
            TOP_K,
            "--set training.generation.top_k=5: training.generation.top_k: 5 is not "
            "supported by backend 'torch': it samples from the full vocabulary (exact Nash-MD-PG "
            "gradients need it); set top_k: 0",
        ),
        ("jax", TOP_K, "training.generation.top_k: 5 is not supported by backend 'jax'"),
        (
            "torch",
            PREF_LORA,
            "--set policy.lora.r=4: policy.lora: LoRA is not supported by "
            "backend 'torch' for task 'preference_model' (LoRA tasks: nash, offline); remove "
            "policy.lora to "
            "train every parameter; use --backend jax",
        ),
        ("jax", PREF_LORA, None),
        ("torch", ["policy.lora.r=4"], None),
        (
            "torch",
            LORA_REF,
            "reference.model: with policy.lora the reference is the policy with "
            "its adapter disabled; remove reference.model",
        ),
        (
            "jax",
            LORA_REF,
            "reference.model: with policy.lora the reference is the policy with "
            "its adapter disabled; remove reference.model",
        ),
        (
            "jax",
            MESH,
            "training.batch_size: micro-batches of 32 prompts (batch_size / grad_accum) "
            "cannot be split over the 3 data-parallel devices of distributed.mesh {'data': 3}",
        ),
        ("jax", [*MESH[:1], "distributed.mesh.data=4"], None),
        (
            "torch",
            RLHF_JUDGE,
            "algorithm.name: rlhf_pg needs a scalar reward r(x, y), and "
            "preference 'llm_judge' gives P(y ≻ y′) only",
        ),
        (
            "jax",
            RLHF_JUDGE,
            "algorithm.name: rlhf_pg needs a scalar reward r(x, y), and "
            "preference 'llm_judge' gives P(y ≻ y′) only",
        ),
        ("torch", [*RLHF_JUDGE[:1], "preference={name: bradley_terry_reward, path: rm}"], None),
        (
            "torch",
            [
                "distributed={engine: deepspeed}",
                "training.grad_accum=2",
                "training.generation.batch_size=32",
            ],
            "training.generation.batch_size: under DeepSpeed each rank samples its share of "
            "every micro-batch, so generation calls are micro-batches",
        ),
        (
            "torch",
            ["distributed={engine: deepspeed}", "algorithm={name: mpo, tau: 0.1}"],
            "algorithm.name: mpo is not supported under distributed.engine: deepspeed yet",
        ),
        (
            "torch",
            EVAL_DS,
            "distributed.engine: 'deepspeed' is not supported by backend 'torch' "
            "for task 'evaluate' (supported: none)",
        ),
        (
            "numpy",
            [],
            "task: 'nash' with an LLM policy is not supported by backend 'numpy' (LLM "
            "tasks: none; tabular tasks: nash); use --backend jax or torch",
        ),
        (
            "example",
            [],
            "task: 'nash' with an LLM policy is not supported by backend 'example' "
            "(LLM tasks: none; tabular tasks: none); use --backend jax or torch",
        ),
    ],
)
def test_one_rule_per_backend(backend: str, overrides: list[str], expected: str | None) -> None:
    got = problems(backend, overrides)
    if expected is None:
        assert got == []
        return
    assert len(got) == 1 and expected in got[0], got


def test_tabular_specs() -> None:
    (got,) = problems("example", [], TABULAR)
    assert got.endswith(
        "task: 'nash' with a tabular preference is not supported by backend 'example' (LLM "
        "tasks: none; tabular tasks: none); use --backend jax or numpy or torch"
    )
    assert problems("numpy", ["algorithm.name=omd"], TABULAR) == []
    (got,) = problems("torch", ["distributed.engine=deepspeed"], TABULAR)
    assert "distributed.engine: 'deepspeed': tabular runs are single-process" in got


@pytest.mark.parametrize(
    ("backend", "overrides", "spec", "expected"),
    [
        (
            "torch",
            [],
            QUICKSTART,
            f"{QUICKSTART}:{START}:1: distributed.engine: 'none' runs one "
            "process; --nproc 2 on backend 'torch' needs deepspeed: add `distributed: {engine: "
            "deepspeed}` to the spec (or --set distributed.engine=deepspeed), or run with --nproc 1",
        ),
        ("torch", ["distributed.engine=deepspeed"], QUICKSTART, None),
        (
            "jax",
            [],
            QUICKSTART,
            "--nproc 2: backend 'jax' has no distributed launch; run with "
            "--nproc 1; use --backend torch",
        ),
        (
            "numpy",
            [],
            TABULAR,
            "--nproc 2: backend 'numpy' has no distributed launch; run with --nproc 1",
        ),
        ("torch", [], TABULAR, "--nproc 2: tabular runs are single-process; run with --nproc 1"),
    ],
)
def test_launch_rules(backend: str, overrides: list[str], spec: Path, expected: str | None) -> None:
    got = problems(backend, overrides, spec, nproc=2)
    assert got == ([] if expected is None else [expected])


def test_backend_objects_carry_the_registered_capabilities() -> None:
    from nlhf.backends.numpy_backend import NumpyBackend

    assert NumpyBackend.capabilities is capabilities_of("numpy")
    torch_backend = pytest.importorskip("nlhf_torch.backend")
    jax_backend = pytest.importorskip("nlhf_jax.backend")
    assert torch_backend.TorchBackend.capabilities is capabilities_of("torch")
    assert jax_backend.JaxBackend.capabilities is capabilities_of("jax")


# ------------------------------------------------------------------ the CLI, for real
CLI = """
import sys
from nlhf.cli import main
for args in {commands!r}:
    print("COMMAND", flush=True)
    print("COMMAND", file=sys.stderr, flush=True)
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    print("CODE", code, flush=True)
heavy = sorted(m for m in ("torch", "jax", "flax", "transformers") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_cli_in_a_fresh_interpreter_imports_no_framework() -> None:
    """The example of docs/plugins.md §3 and ``nlhf backends``, by the console entry
    point, in one fresh interpreter (one start-up: the fast tier stays fast)."""
    commands = [
        ["validate", str(QUICKSTART), "--backend", "jax", "--set", "distributed.engine=deepspeed"],
        ["backends"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", CLI.format(commands=commands)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert proc.stdout.rstrip().endswith("HEAVY []"), proc.stdout + proc.stderr
    outs = proc.stdout.split("COMMAND\n")[1:]
    errs = proc.stderr.split("COMMAND\n")[1:]
    assert outs[0].splitlines()[-1] == "CODE 2"
    assert errs[0].splitlines() == [
        "--set distributed.engine=deepspeed: distributed.engine: 'deepspeed' is not supported "
        "by backend 'jax' (supported: none, jax); use --backend torch",
        "error: 1 problem in the spec",
    ]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "CODE 0" in outs[1]
    table = outs[1].split("what each backend runs")[1]
    for row in (
        "none, deepspeed (nash, preference_model); none (evaluate, offline)",  # torch
        "none, jax (nash, preference_model); none (evaluate, offline)",  # jax
        "deepspeed (nash, preference_model)",  # torch --nproc N
        "float32, bfloat16, float16",  # jax dtypes
        "nash: nash_md, omd, self_play, best_response",  # tabular
    ):
        assert row in table, row


def test_cli_validate_locates_problems_in_the_file(tmp_path: Path) -> None:
    spec = tmp_path / "ds.yaml"
    spec.write_text(QUICKSTART.read_text() + "distributed: {engine: deepspeed, zero_stage: 2}\n")
    line = len(QUICKSTART.read_text().splitlines()) + 1
    app = cli.get_app(plugins=False)
    result = runner.invoke(app, ["validate", str(spec), "-b", "jax"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{spec}:{line}:23: distributed.engine: 'deepspeed' is not supported by backend 'jax' "
        "(supported: none, jax); use --backend torch",
        "error: 1 problem in the spec",
    ]
    result = runner.invoke(app, ["validate", str(spec), "-b", "torch", "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"{spec}: ok (task nash, algorithm nash_md_pg, preference oracle; runs on backend torch "
        "with --nproc 2)"
    )


def test_model_types_are_checked_before_loading(tmp_path: Path) -> None:
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2"}')
    spec = tmp_path / "gpt2.yaml"
    text = QUICKSTART.read_text()
    spec.write_text(text + f"reference: {{model: {gpt2}}}\n")
    line = len(text.splitlines()) + 1
    app = cli.get_app(plugins=False)
    result = runner.invoke(app, ["validate", str(spec), "-b", "jax"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"{spec}:{line}:20: reference.model: {gpt2} is a 'gpt2' model; backend 'jax' loads "
        "the model types gemma2, gemma3_text, llama, mistral, phi3, qwen2, qwen3; use "
        "--backend torch"
    )
    assert runner.invoke(app, ["validate", str(spec), "-b", "torch"]).exit_code == 0


# --------------------------------------------------------------- the example specs
MEANT_FOR = {
    "quickstart.yaml": ("torch", "jax"),
    "compare-algorithms.yaml": ("torch", "jax"),
    "preference-hh.yaml": ("torch", "jax"),
    "offline-dpo.yaml": ("torch", "jax"),
    "offline-ipo.yaml": ("torch", "jax"),
    **{
        f"quickstart-{name}.yaml": ("torch", "jax")
        for name in ("sppo", "inpo", "onpo", "mpo", "egpo")
    },
}
SPECS = sorted((REPO / "specs").glob("*.yaml"))
CASES = [
    (path, backend)
    for path in SPECS
    for backend in MEANT_FOR.get(path.name, ("numpy", "torch", "jax"))
]


def test_every_spec_has_its_backends() -> None:
    assert {p.name for p in SPECS} >= set(MEANT_FOR)
    assert all(p.name.startswith("tabular-") or p.name in MEANT_FOR for p in SPECS)


@pytest.mark.parametrize(("path", "backend"), CASES, ids=[f"{p.stem}-{b}" for p, b in CASES])
def test_example_specs_validate_clean(path: Path, backend: str) -> None:
    assert problems(backend, [], path) == []
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(path), "-b", backend])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f"; runs on backend {backend})")


def test_capabilities_are_json_data() -> None:
    """Declared as data: each backend's capabilities round-trip through JSON."""
    for name in ("numpy", "torch", "jax"):
        caps = capabilities_of(name)
        assert caps is not None
        assert type(caps).model_validate(json.loads(caps.model_dump_json())) == caps
