"""Snakemake adapter: csmil.reporting.attention_maps.render_dataset_maps."""

from csmil.inputs import nest
from csmil.reporting.attention_maps import render_dataset_maps
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
files = nest(snakemake.input.items())
render_dataset_maps(
    files["attention"],
    files["slides"],
    snakemake.output[0],
    prediction_paths=files["predictions"],
    cohort=snakemake.params.cohort,
)
