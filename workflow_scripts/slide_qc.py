"""Snakemake adapter: csmil.slides.qc.qc_table of a dataset's patch stores."""

from pathlib import Path

from csmil.runtime import setup_logging
from csmil.slides.qc import qc_table, write_qc_table

setup_logging(snakemake.log[0])
# A patch store is named after its slide (<slide>.h5); qc_table checks the id it holds.
stores = {Path(p).name.removesuffix(".h5"): p for p in snakemake.input.stores}
write_qc_table(qc_table(stores, snakemake.params.excluded), snakemake.output[0])
