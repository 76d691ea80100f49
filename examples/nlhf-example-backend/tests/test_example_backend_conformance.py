"""The example backend runs nlhf's conformance kit, exactly as a third party would."""

from nlhf.testing import BackendConformance


class TestExampleBackendConformance(BackendConformance):
    backend = "example"
    dtype = "float32"
