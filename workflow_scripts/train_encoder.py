"""Snakemake adapter: csmil.encoders.simsiam.train_simsiam."""

from csmil.encoders.simsiam import train_simsiam
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
train_simsiam(
    list(snakemake.input),
    scale=snakemake.wildcards.scale,
    out_path=snakemake.output.encoder,
    backbone=p.backbone,
    layers=tuple(p.layers),
    pooling=p.pooling,
    epochs=p.epochs,
    batch_size=p.batch_size,
    base_lr=p.base_lr,
    warmup_epochs=p.warmup_epochs,
    schedule_epochs=p.schedule_epochs,
    max_patches=p.max_patches,
    augment=dict(p.augment),
    seed=p.seed,
    num_threads=snakemake.threads,
)
