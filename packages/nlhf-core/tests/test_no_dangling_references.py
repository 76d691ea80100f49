"""No tracked file points readers at something they cannot open: the design notes that
lived outside the repository, or numbers of the project's tracker (the patterns are
:data:`DANGLING`). Cite docs/architecture.md and the other docs/*.md, the
paper (Munos et al., arXiv:2312.00886, "paper §7") or a public source ("TRL #6802", a
URL) instead."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

DANGLING = {
    "the out-of-repo design notes": re.compile(r"\bDESIGN(?:\.md)?\s*§|\bDESIGN\.md\b"),
    "a tracker issue number": re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE),
}


DESIGN, ISSUE = "DES" + "IGN", "iss" + "ue"


def dangling(line: str) -> list[str]:
    """What ``line`` refers to that a reader of the repository cannot see (a line with a
    GitHub URL cites a public issue: allowed)."""
    found = [what for what, pattern in DANGLING.items() if pattern.search(line)]
    if "github.com/" in line:
        found = [what for what in found if what != "a tracker issue number"]
    return found


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # the dangling samples are assembled, so this file itself cites nothing
        (f"formula ({DESIGN} §5).", ["the out-of-repo design notes"]),
        (f"see ../shared/{DESIGN}.md", ["the out-of-repo design notes"]),
        (f'"""Loader ({ISSUE} 3, parts 4 and 6)."""', ["a tracker issue number"]),
        (f"# fused decode ({ISSUE} #8)", ["a tracker issue number"]),
        (f"({ISSUE.title()}s 5 and 6)", ["a tracker issue number"]),
        ("TRL #6802: the EOS check over prompt + completion", []),
        ("for issue in exc.issues: print(issue)", []),
        ("one issue per line, issues[0] first", []),
        (f"https://github.com/huggingface/trl/issues/6802 ({ISSUE} 6802)", []),
        ("the design (docs/architecture.md §5, paper §7)", []),
    ],
)
def test_pattern_catches_references_and_spares_prose(line: str, expected: list[str]) -> None:
    assert dangling(line) == expected


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to scan")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode("utf-8")
    return [name for name in listed.split("\0") if name and name != THIS]


def test_no_tracked_file_cites_what_readers_cannot_see() -> None:
    files = _tracked_files()
    assert len(files) > 50, f"git ls-files listed only {len(files)} files under {REPO}"
    problems = []
    for name in files:
        path = REPO / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary (checkpoints, archives): no prose to check
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for what in dangling(line):
                problems.append(f"{name}:{number}: cites {what}: {line.strip()[:120]}")
    assert not problems, (
        "references readers of this repository cannot follow; point to docs/*.md, the "
        "paper or a public source instead:\n" + "\n".join(problems)
    )
