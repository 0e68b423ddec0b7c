"""Snakemake adapter: csmil.evaluation.metrics.evaluate_method."""

from csmil.evaluation.metrics import evaluate_method
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
evaluate_method(
    list(snakemake.input.predictions),
    snakemake.output.metrics,
    snakemake.output.curves,
    n_folds=snakemake.params.n_folds,
)
