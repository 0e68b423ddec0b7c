"""Snakemake adapter: csmil.predict.predict_slides."""

from csmil.predict import predict_slides
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
predict_slides(
    list(snakemake.input.slides),
    list(snakemake.input.models),
    p.encoders,
    p.out_dir,
    n_bags=p.n_bags,
    tissue_threshold=p.tissue_threshold,
    mask_mpp=p.mask_mpp,
    batch_size=p.batch_size,
    seed=p.seed,
    num_threads=snakemake.threads,
)
