"""Snakemake adapter: csmil.reporting.tables.write_table6."""

from csmil.inputs import nest
from csmil.reporting.tables import write_table6
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
write_table6(nest(snakemake.input.items())["runs"], snakemake.output.csv, snakemake.output.md)
