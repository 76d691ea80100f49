"""What the jax backend declares it runs (:data:`nlhf_jax.plugin.CAPABILITIES`) agrees with
its code: the mesh axes a batch is split over, the algorithms of the core loop, the
preferences it builds, and no float64 (JAX truncates it to float32 unless the global
``jax_enable_x64`` is on, which nlhf never sets); ``JaxBackend.train`` refuses the rest
before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.jax

import jax.numpy as jnp  # noqa: E402
from nlhf.errors import SpecError  # noqa: E402
from nlhf.spec import RunSpec  # noqa: E402
from nlhf.training.algorithms import RULES  # noqa: E402
from nlhf_jax.backend import JaxBackend  # noqa: E402
from nlhf_jax.plugin import CAPABILITIES  # noqa: E402
from nlhf_jax.preference.scorers import SUPPORTED  # noqa: E402
from nlhf_jax.sharding import BATCH_AXES  # noqa: E402


def test_declared_lists_match_the_code() -> None:
    assert CAPABILITIES.batch_axes == BATCH_AXES
    assert set(CAPABILITIES.algorithms) == set(RULES)
    assert set(CAPABILITIES.preferences) == set(SUPPORTED)


def test_float64_is_not_declared_because_jax_would_truncate_it() -> None:
    if jax.config.jax_enable_x64:
        pytest.skip("JAX_ENABLE_X64 is set for this process: float64 is kept")
    with pytest.warns(UserWarning, match="truncated to dtype float32"):
        x = jnp.asarray([1.0], dtype=jnp.float64)
    assert x.dtype == jnp.float32
    assert "float64" not in CAPABILITIES.dtypes


def test_train_refuses_before_any_model_loads(tmp_path: Path) -> None:
    spec = RunSpec.model_validate(
        {
            "policy": {"model": str(tmp_path / "no-such-model"), "dtype": "float64"},
            "preference": {"name": "bradley_terry_reward", "path": "rm"},
            "data": {"path": "p.jsonl"},
            "algorithm": {"name": "nash_md_pg"},
            "distributed": {"engine": "deepspeed"},
        }
    )
    with pytest.raises(SpecError) as info:
        JaxBackend().train(spec, tmp_path / "out")
    assert info.value.issues == [
        "distributed.engine: 'deepspeed' is not supported by backend 'jax' (supported: none, "
        "jax); use --backend torch",
        "policy.dtype: 'float64' is not supported by backend 'jax' (supported: float32, "
        "bfloat16, float16); use --backend torch",
    ]
    assert not (tmp_path / "out").exists()


def test_declared_model_types_are_the_decoders_architectures() -> None:
    from nlhf_jax.models.decoder import ARCHITECTURES
    from nlhf_jax.plugin import CAPABILITIES

    assert CAPABILITIES.model_types is not None
    assert sorted(CAPABILITIES.model_types) == sorted(ARCHITECTURES)
