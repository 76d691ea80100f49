"""The YAML run spec: models (:mod:`nlhf.spec.models`) and loading with located errors
(:mod:`nlhf.spec.load`)."""

from nlhf.spec.models import (
    BradleyTerryPreference,
    DataSpec,
    DeepSpeedSpec,
    EvalSpec,
    GenerationSpec,
    JaxMeshSpec,
    LLMJudgePreference,
    OraclePreference,
    OutputSpec,
    PairwiseModelPreference,
    PluginPreference,
    PolicySpec,
    ReferenceSpec,
    RunSpec,
    TabularPreference,
    TrainingSpec,
)

__all__ = [
    "BradleyTerryPreference",
    "DataSpec",
    "DeepSpeedSpec",
    "EvalSpec",
    "GenerationSpec",
    "JaxMeshSpec",
    "LLMJudgePreference",
    "OraclePreference",
    "OutputSpec",
    "PairwiseModelPreference",
    "PluginPreference",
    "PolicySpec",
    "ReferenceSpec",
    "RunSpec",
    "TabularPreference",
    "TrainingSpec",
]

from nlhf.spec.load import load_spec, load_spec_text

__all__ += ["load_spec", "load_spec_text"]
