"""Snakemake adapter: csmil.reporting.attention_maps.render_dataset_maps."""

from csmil.reporting.attention_maps import render_dataset_maps
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
render_dataset_maps(
    list(snakemake.input.attention),
    snakemake.params.slides,
    snakemake.output[0],
    prediction_paths=list(snakemake.input.predictions),
    cohort=snakemake.params.cohort,
)
