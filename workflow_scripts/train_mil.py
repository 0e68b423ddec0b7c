"""Snakemake adapter: csmil.mil.training.train_fold on one fold."""

from csmil.io import read_tsv
from csmil.mil.bags import load_patients
from csmil.mil.training import train_fold
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
splits = read_tsv(snakemake.input.splits, dtype={"patient_id": str})
train_fold(
    load_patients(splits, p.patients, p.phenotypes),
    splits,
    fold=int(snakemake.wildcards.fold),
    method=snakemake.wildcards.method,
    options=dict(p.options),
    paths=dict(snakemake.output.items()),
    n_folds=p.n_folds,
    n_clusters=p.n_clusters,
    seed=p.seed,
    num_threads=snakemake.threads,
    **p.train,
)
