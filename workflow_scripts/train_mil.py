"""Snakemake adapter: csmil.mil.training.train_folds on every fold of one method."""

from csmil.inputs import nest, read_listing
from csmil.mil.bags import load_patients
from csmil.mil.splits import read_splits
from csmil.mil.training import OUTPUT_NAMES, TrainSettings, train_folds
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
files = nest({**read_listing(snakemake.input.cohort), "splits": snakemake.input.splits})
splits = read_splits(files["splits"])
folds = list(range(p.n_folds))
train_folds(
    load_patients(splits, files["features"], files["phenotypes"]),
    splits,
    folds,
    method=snakemake.wildcards.method,
    options=dict(p.options),
    settings=TrainSettings(**p.train, n_clusters=p.n_clusters),
    paths=[{name: getattr(snakemake.output, name)[i] for name in OUTPUT_NAMES} for i in folds],
    n_folds=p.n_folds,
    seeds=p.seeds,
    num_threads=snakemake.threads,
)
