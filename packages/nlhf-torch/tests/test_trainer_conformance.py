"""The trainer conformance kit (:mod:`nlhf.testing.trainer`) on the torch backend."""

from nlhf.testing.trainer import TrainerConformance


class TestTorchTrainer(TrainerConformance):
    backend = "torch"
