"""Snakemake adapter: csmil.predict.predict_slides."""

from pathlib import Path

from csmil.inputs import nest
from csmil.predict import predict_slides
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
files = nest(snakemake.input.items())
predict_slides(
    files["slides"],
    files["models"],
    files["encoders"],
    Path(snakemake.output.predictions).parent,
    n_bags=p.n_bags,
    tissue_threshold=p.tissue_threshold,
    mask_mpp=p.mask_mpp,
    batch_size=p.batch_size,
    seed=p.seed,
    num_threads=snakemake.threads,
)
