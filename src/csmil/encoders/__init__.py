"""Encoders: SimSiam pre-training per scale, patch augmentation, embedding and the feature store.

Rule files ``rules/encoders.smk`` (train an encoder per scale) and ``rules/embedding.smk``
(every patch of a slide through the encoders, into its feature store).
"""
