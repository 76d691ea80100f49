"""The conformance kit of nlhf backends (docs/architecture.md §7): subclass
:class:`BackendConformance`.

Also a pytest plugin (entry point ``pytest11: nlhf-conformance``, :mod:`.plugin`) that
applies the declared xfails of ``xfails.yaml``.
"""

from nlhf.testing.base import EXPECTED_CASES, BackendConformance
from nlhf.testing.tolerances import TOLERANCES, Tolerance, assert_close, tolerance

__all__ = [
    "EXPECTED_CASES",
    "TOLERANCES",
    "BackendConformance",
    "Tolerance",
    "assert_close",
    "tolerance",
]
