"""nlhf-torch: the PyTorch + transformers (+ DeepSpeed) backend of nlhf.

Registered through the ``nlhf`` entry point (:mod:`nlhf_torch.plugin`); heavy imports
happen only when the backend is instantiated.
"""

from importlib import metadata as _metadata

try:  # the installed distribution's version, set from the repository's VERSION file
    __version__ = _metadata.version("nlhf-torch")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
