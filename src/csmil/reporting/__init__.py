"""Reporting: the paper's tables, ROC/PR and scale-attention figures, attention maps.

Rule files ``rules/tables.smk`` and ``rules/figures.smk``. Reads what training and evaluation
wrote through their format owners; imports nothing of training's internals.
"""
