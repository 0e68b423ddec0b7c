"""Snakemake adapter: csmil.reporting.tables.write_comparison_tables (Tables 1-3)."""

from csmil.inputs import nest
from csmil.reporting.tables import write_comparison_tables
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
write_comparison_tables(
    nest(snakemake.input.items())["compare"],
    p.methods,
    p.variants,
    p.bag_mode,
    p.reference,
    dict(snakemake.output.items()),
    n_boot=p.n_boot,
)
