"""Quickstart assets built once per test session, shared by every test that needs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from nlhf_quickstart.assets import prepare_assets


@pytest.fixture(scope="session")
def quickstart_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``…/quickstart-assets`` with the SFT-ed policy and prompts, as ``nlhf run`` builds
    them for ``specs/quickstart.yaml`` (seed 0, 150 SFT steps; about 40 s on 2 CPU cores)."""
    root = tmp_path_factory.mktemp("quickstart") / "quickstart-assets"
    prepare_assets(root, seed=0)
    return root


@pytest.fixture(scope="session")
def quickstart_overrides(quickstart_assets: Path) -> list[str]:
    """``--set`` overrides pointing ``specs/quickstart.yaml`` at :func:`quickstart_assets`."""
    return [
        f"policy.model={quickstart_assets / 'policy'}",
        f"data.path={quickstart_assets / 'prompts.jsonl'}",
    ]
