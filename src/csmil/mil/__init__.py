"""Multiple-instance learning: phenotypes, persistent splits, bags, the model registry, training.

Rule files ``rules/phenotypes.smk``, ``rules/splits.smk`` and ``rules/training.smk``.
"""
