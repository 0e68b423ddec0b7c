"""Snakemake adapter: csmil.reporting.figures.scale_attention_report."""

from csmil.inputs import nest
from csmil.reporting.figures import scale_attention_report
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p, out = snakemake.params, snakemake.output
scale_attention_report(
    nest(snakemake.input.items())["runs"],
    out.summary,
    out.tests,
    dict(zip(p.datasets, out.plots, strict=True)),
    method=p.method,
)
