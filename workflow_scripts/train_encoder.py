"""Snakemake adapter: csmil.encoders.training.train_simsiam."""

from csmil.encoders.training import SimSiamSettings, train_simsiam
from csmil.inputs import read_listing
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
settings = SimSiamSettings(
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
)
train_simsiam(
    read_listing(snakemake.input.pretraining)["patches"],
    scale=snakemake.wildcards.scale,
    out_path=snakemake.output.encoder,
    settings=settings,
    num_threads=snakemake.threads,
)
