"""Snakemake adapter: csmil.mil.phenotypes.cluster_patient."""

from csmil.mil.phenotypes import cluster_patient
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
cluster_patient(
    list(snakemake.input),
    snakemake.output[0],
    n_clusters=snakemake.params.n_clusters,
    seed=snakemake.params.seed,
)
