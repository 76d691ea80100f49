"""nlhf-torch: the PyTorch + transformers (+ DeepSpeed) backend of nlhf.

Registered through the ``nlhf`` entry point (:mod:`nlhf_torch.plugin`); heavy imports
happen only when the backend is instantiated.
"""

__version__ = "0.1.0"
