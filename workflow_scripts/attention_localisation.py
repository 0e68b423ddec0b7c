"""Snakemake adapter: csmil.reporting.attention_maps.attention_localisation."""

from csmil.inputs import nest
from csmil.reporting.attention_maps import attention_localisation
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
files = nest(snakemake.input.items())
runs = [
    {"dataset": ds, "method": m, "attention": folds, "slides": files["slides"][ds]}
    for ds, methods in files["attention"].items()
    for m, folds in methods.items()
]
attention_localisation(runs, snakemake.output[0])
