"""Snakemake adapter: csmil.reporting.figures.roc_pr_figure."""

from csmil.reporting.figures import roc_pr_figure
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
roc_pr_figure(
    p.curves,
    p.metrics,
    snakemake.output[0],
    title=f"{snakemake.wildcards.dataset}: pooled out-of-fold test patients",
    reference=p.reference,
)
