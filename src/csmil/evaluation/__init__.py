"""Evaluation: metrics over out-of-fold predictions, DeLong and bootstrap tests, comparisons.

Rule file ``rules/evaluation.smk``.
"""
