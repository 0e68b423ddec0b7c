"""Snakemake adapter: csmil.mil.training.train_fold on one fold."""

from csmil.inputs import nest, read_listing
from csmil.mil.bags import load_patients
from csmil.mil.splits import read_splits
from csmil.mil.training import TrainSettings, train_fold
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
files = nest({**read_listing(snakemake.input.cohort), "splits": snakemake.input.splits})
splits = read_splits(files["splits"])
train_fold(
    load_patients(splits, files["features"], files["phenotypes"]),
    splits,
    fold=int(snakemake.wildcards.fold),
    method=snakemake.wildcards.method,
    options=dict(p.options),
    settings=TrainSettings(**p.train, n_clusters=p.n_clusters),
    paths=dict(snakemake.output.items()),
    n_folds=p.n_folds,
    seed=p.seed,
    num_threads=snakemake.threads,
)
