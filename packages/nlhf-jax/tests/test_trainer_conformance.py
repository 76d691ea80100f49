"""The trainer conformance kit (:mod:`nlhf.testing.trainer`) on the jax backend, compared
with torch when it is installed."""

import pytest
from nlhf.testing.trainer import TrainerConformance

pytestmark = pytest.mark.jax


class TestJaxTrainer(TrainerConformance):
    backend = "jax"
