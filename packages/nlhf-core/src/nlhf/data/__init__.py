"""Dataset loading (``data:`` section): sources (:mod:`.source`), prompt datasets for
``task: nash`` and pairwise datasets for ``task: preference_model``. ``datasets`` is
imported lazily, only when data is actually loaded."""
