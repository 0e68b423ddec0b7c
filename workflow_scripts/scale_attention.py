"""Snakemake adapter: csmil.reporting.figures.scale_attention_report."""

from csmil.reporting.figures import scale_attention_report
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
scale_attention_report(
    p.runs, snakemake.output.summary, snakemake.output.tests, p.plots, method=p.method
)
