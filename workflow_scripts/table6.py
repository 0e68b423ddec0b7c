"""Snakemake adapter: csmil.report_tables.write_table6."""

from csmil.report_tables import write_table6
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
write_table6(snakemake.params.runs, snakemake.output.csv, snakemake.output.md)
