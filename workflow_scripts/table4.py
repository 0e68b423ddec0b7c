"""Snakemake adapter: csmil.reporting.tables.write_table4."""

from csmil.reporting.tables import write_table4
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
write_table4(p.datasets, p.n_test_bags, snakemake.output.csv, snakemake.output.md)
