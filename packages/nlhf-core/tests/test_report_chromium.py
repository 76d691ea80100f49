"""``nlhf report`` output in a real browser: Debian's headless Chromium opens the page,
a probe script records every JavaScript error, console message and image that failed to
decode (``naturalWidth == 0``) into the DOM (``--dump-dom``), Chromium's own log is read for
console lines, and a screenshot is saved under the run directory. A control page with a
broken image and a console error shows that the probe sees such failures."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest

pytestmark = pytest.mark.slow

FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
PROBE = """<script>
window.__nlhf = [];
window.addEventListener("error", (e) => __nlhf.push("error: " +
  (e.message || (e.target && e.target.outerHTML ? e.target.outerHTML.slice(0, 120) : e))), true);
for (const level of ["error", "warn", "log", "info"]) {
  const original = console[level];
  console[level] = (...args) => { __nlhf.push("console." + level + ": " + args.join(" "));
    original.apply(console, args); };
}
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "nlhf-probe";
  probe.textContent = JSON.stringify({
    images: [...document.images].map((i) => ({alt: i.alt, complete: i.complete,
      width: i.naturalWidth, height: i.naturalHeight})),
    errors: __nlhf});
  document.body.appendChild(probe);
});
</script>"""
CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    why = (
        "headless Chromium is not installed (Debian: apt-get install chromium; "
        "scripts/install.sh installs it when run as root)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run this test")
    pytest.skip(why)


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def open_page(page: Path, profile: Path) -> dict[str, Any]:
    """Load ``page`` with the probe injected first into its head: images, errors and the
    console lines of Chromium's log."""
    text = page.read_text(encoding="utf-8")
    assert text.count("<head>") == 1
    probed = page.with_name(f".probe-{page.name}")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        proc = _run(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], profile)
    finally:
        probed.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="nlhf-probe">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, f"the probe did not run; DOM tail: {proc.stdout[-500:]}"
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    result["console"] = [m.group(1) for m in map(CONSOLE.search, proc.stderr.splitlines()) if m]
    return result


def _report(tmp_path: Path) -> Path:
    """A tabular run (training curves + simplex) with a win-rate matrix (heatmap) beside
    it, and its ``nlhf report``."""
    from nlhf.cli import main
    from nlhf.evaluation.winrate import matrix_from_outcomes
    from nlhf.spec.load import load_spec_text
    from nlhf.tabular.runner import train_spec

    run = tmp_path / "run"
    spec = load_spec_text(
        "spec_version: 1\ntask: nash\npreference: {name: tabular, game: bt3}\n"
        f"algorithm: {{name: nash_md, tau: 0.1, steps: 120}}\noutput: {{dir: {run}}}\n"
    )
    train_spec(spec, run, progress=False)
    outcomes = {(0, 1): np.array([1.0, 1.0, 0.0, 1.0]), (0, 2): np.array([0.0, 1.0, 0.0, 0.0])}
    matrix_from_outcomes(["nash", "rlhf", "sft"], outcomes).write(run)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run)])
    assert exc.value.code in (0, None)
    return run


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    run = _report(tmp_path)
    page = run / "report.html"
    result = open_page(page, tmp_path / "profile")
    assert result["errors"] == [] and result["console"] == [], result
    images = result["images"]
    assert len(images) == 3  # win-rate heatmap, training curves, simplex
    for image in images:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
    shot = run / "report-screenshot.png"
    proc = _run(["--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()], tmp_path / "p")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    assert float(pixels[..., :3].std()) > 0.05  # not a blank page


def test_the_probe_sees_broken_images_and_console_errors(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body>"
        '<img alt="truncated" src="data:image/png;base64,iVBORw0KGgo=">'
        '<img alt="missing" src="missing.png">'
        "<script>console.error('boom', 3)</script></body></html>",
        encoding="utf-8",
    )
    result = open_page(page, tmp_path / "profile")
    assert [(i["alt"], i["width"]) for i in result["images"]] == [("truncated", 0), ("missing", 0)]
    assert "console.error: boom 3" in result["errors"]
    assert sum(e.startswith("error: <img") for e in result["errors"]) == 2
    assert any("boom 3" in line for line in result["console"])
