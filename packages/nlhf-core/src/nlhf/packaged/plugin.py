"""Entry point (group ``nlhf``) that builds the packaged models a spec names
(:mod:`nlhf.packaged`) before it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nlhf

if TYPE_CHECKING:
    from nlhf.spec import RunSpec


@nlhf.hookimpl
def nlhf_prepare_spec(spec: RunSpec) -> None:
    """Build ``runs/models/<name>`` directories ``spec`` names that are missing."""
    from nlhf.packaged import ensure_packaged_models

    ensure_packaged_models(spec)
