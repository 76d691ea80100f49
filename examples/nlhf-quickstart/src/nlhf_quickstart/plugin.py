"""Entry point of the quickstart plugin (group ``nlhf``). Imports nothing heavy: the
oracle and the asset builder load only when a spec uses them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nlhf

if TYPE_CHECKING:
    from nlhf.spec import RunSpec


def _population_oracle(**options: Any) -> Any:
    from nlhf_quickstart.population import PopulationOracle

    return PopulationOracle(**options)


@nlhf.hookimpl
def nlhf_register_oracles(register: Any) -> None:
    register(
        "population",
        _population_oracle,
        description="annotator types with cyclic tastes over fixed answers (the quickstart); "
        "options: answers, types, reward, eval_samples",
    )


@nlhf.hookimpl
def nlhf_prepare_spec(spec: RunSpec) -> None:
    """Build the quickstart's tiny SFT policy and prompts when ``spec`` needs them."""
    from nlhf_quickstart.assets import ensure_assets

    ensure_assets(spec)
