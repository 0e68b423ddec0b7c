"""Snakemake adapter: csmil.reporting.markdown.table5."""

import logging

from csmil.inputs import nest
from csmil.reporting.markdown import table5, write_table
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
metrics = nest(snakemake.input.items())["metrics"]
df = table5(metrics, snakemake.params.methods, snakemake.params.cohorts)
write_table(
    df,
    snakemake.output.csv,
    snakemake.output.md,
    title="Table 5: classification on the toy cohorts (pooled out-of-fold test patients)",
)
logging.getLogger("csmil").info("Table 5:\n%s", df.to_string(index=False))
