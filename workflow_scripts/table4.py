"""Snakemake adapter: csmil.reporting.tables.write_table4."""

from csmil.inputs import nest
from csmil.reporting.tables import write_table4
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
p, out = snakemake.params, snakemake.output
files = nest(snakemake.input.items())["datasets"]
datasets = {ds: {**paths, "slides": p.slides[ds]} for ds, paths in files.items()}
write_table4(datasets, p.n_test_bags, out.csv, out.md)
