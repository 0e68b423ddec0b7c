"""Snakemake adapter: csmil.reporting.figures.roc_pr_figure."""

from csmil.inputs import nest
from csmil.reporting.figures import roc_pr_figure
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
files = nest(snakemake.input.items())
roc_pr_figure(
    files["curves"],
    files["metrics"],
    snakemake.output[0],
    title=f"{snakemake.wildcards.dataset}: pooled out-of-fold test patients",
    reference=snakemake.params.reference,
)
