"""Snakemake adapter: csmil.evaluation.compare.compare_dataset."""

from csmil.evaluation.compare import compare_dataset
from csmil.inputs import nest
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
compare_dataset(
    nest(snakemake.input.items())["predictions"],
    p.reference,
    snakemake.output[0],
    n_folds=p.n_folds,
    n_boot=p.n_boot,
    seed=p.seed,
)
