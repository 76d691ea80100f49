"""Guard of the conformance kit (langchain standard-tests / array-api-tests style):
fails when a kit case disappears, or when a backend's subclass overrides a case (in
tests/conformance or examples/) without a declared xfail reason."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from nlhf.testing import EXPECTED_CASES, BackendConformance
from nlhf.testing.plugin import load_xfails

ROOT = Path(__file__).resolve().parents[2]

#: Frozen here as well as in the kit: removing a case means editing both, on purpose.
FROZEN_CASES = frozenset(
    {
        "test_kernels_protocol",
        "test_preference_loss",
        "test_preference_loss_grad",
        "test_mixture_logprobs",
        "test_sample",
        "test_kl_value",
        "test_kl_grad",
        "test_nash_md_pg_loss",
        "test_nash_md_pg_grad",
        "test_tabular_nash_md_trajectory",
        "test_sequence_logprobs",
        "test_sequence_logprobs_grad",
        "test_online_ipo_loss",
        "test_online_ipo_grad",
        "test_generate_pairs",
        "test_model_sequence_logprobs",
        "test_offline_ipo_loss",
        "test_offline_ipo_grad",
        "test_dpo_loss",
        "test_dpo_grad",
        "test_sppo_loss",
        "test_sppo_grad",
        "test_inpo_loss",
        "test_inpo_grad",
        "test_egpo_loss",
        "test_egpo_grad",
    }
)


def conformance_files(root: Path = ROOT) -> list[Path]:
    files = sorted((root / "tests" / "conformance").glob("*.py"))
    files += sorted((root / "examples").glob("*/tests/**/*.py"))
    files += sorted((root / "packages").glob("*/tests/**/*.py"))
    return files


def subclasses_in(path: Path) -> list[dict]:
    """BackendConformance subclasses of a file, found by parsing (no imports, so files of
    backends whose framework is missing are still checked)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
        if "BackendConformance" not in bases:
            continue
        info = {"file": path, "name": node.name, "backend": "", "xfails": {}, "overrides": []}
        for stmt in node.body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in ("backend", "xfails"):
                        try:
                            info[target.id] = ast.literal_eval(stmt.value)
                        except ValueError:
                            info[target.id] = None  # not a literal: cannot be verified
            if (
                isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
                and stmt.name in EXPECTED_CASES
            ):
                info["overrides"].append(stmt.name)
        found.append(info)
    return found


def problems(info: dict, xfails: dict[str, dict[str, str]]) -> list[str]:
    """Overridden cases of one subclass that have no xfail reason."""
    out = []
    where = f"{info['file'].name}::{info['name']}"
    if not isinstance(info["backend"], str) or not info["backend"]:
        return [f"{where}: `backend` must be a string literal"]
    if info["xfails"] is None:
        return [f"{where}: `xfails` must be a literal dict so the guard can read it"]
    table = {**xfails.get(info["backend"], {}), **info["xfails"]}
    for case in info["overrides"]:
        reasons = [
            r for k, r in table.items() if re.sub(r"\[.*\]$", "", k) == case and str(r).strip()
        ]
        if not reasons:
            out.append(f"{where} overrides {case} without an xfail reason for {info['backend']!r}")
    return out


def test_kit_cases_are_all_present() -> None:
    methods = {n for n in dir(BackendConformance) if n.startswith("test_")}
    assert methods == set(EXPECTED_CASES), "kit cases differ from EXPECTED_CASES"
    missing = FROZEN_CASES - set(EXPECTED_CASES)
    assert not missing, f"conformance cases removed from the kit: {sorted(missing)}"


def test_no_case_overridden_without_reason() -> None:
    xfails = load_xfails()
    found = [info for path in conformance_files() for info in subclasses_in(path)]
    backends = {info["backend"] for info in found}
    assert {"numpy", "example"} <= backends, f"guard found only {sorted(backends)}"
    errors = [msg for info in found for msg in problems(info, xfails)]
    assert not errors, "\n".join(errors)


def test_xfail_entries_name_real_cases_with_reasons() -> None:
    for backend, entries in load_xfails().items():
        for case, reason in entries.items():
            assert re.sub(r"\[.*\]$", "", case) in EXPECTED_CASES, f"{backend}: unknown case {case}"
            assert reason.strip(), f"{backend}.{case}: empty reason"


def test_guard_catches_a_silent_override(tmp_path: Path) -> None:
    (tmp_path / "test_conformance_fake.py").write_text(
        "from nlhf.testing import BackendConformance\n"
        "class TestFake(BackendConformance):\n"
        "    backend = 'fake'\n"
        "    xfails = {'test_kl_grad[k3]': 'no k3 yet'}\n"
        "    def test_sample(self):\n"
        "        pass\n"
        "    def test_kl_grad(self):\n"
        "        pass\n"
    )
    (info,) = subclasses_in(tmp_path / "test_conformance_fake.py")
    assert info["overrides"] == ["test_sample", "test_kl_grad"]
    errs = problems(info, {})
    assert len(errs) == 1 and "test_sample" in errs[0]
    assert problems(info, {"fake": {"test_sample": "sampler not wired"}}) == []


@pytest.mark.parametrize("bad", ["backend = NAME", "xfails = dict(a='b')"])
def test_guard_rejects_unreadable_declarations(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "test_x.py"
    path.write_text(f"class TestX(BackendConformance):\n    backend = 'x'\n    {bad}\n")
    (info,) = subclasses_in(path)
    assert problems(info, {})
