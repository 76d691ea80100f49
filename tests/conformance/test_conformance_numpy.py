"""The built-in ``numpy`` backend (the float64 oracle itself) passes the conformance kit:
its numerical gradients (complex step) agree with the oracle's analytic ones, and its
tabular Nash-MD trajectory with an independent implementation."""

from nlhf.testing import BackendConformance


class TestNumpyConformance(BackendConformance):
    backend = "numpy"
    dtype = "float64"
    capabilities = frozenset({"tabular"})
