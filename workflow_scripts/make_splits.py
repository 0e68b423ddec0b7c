"""Snakemake adapter: csmil.splits.update_splits."""

import pandas as pd

from csmil.runtime import setup_logging
from csmil.splits import update_splits

setup_logging(snakemake.log[0])
update_splits(
    pd.DataFrame(snakemake.params.patients),
    snakemake.output[0],
    n_folds=snakemake.params.n_folds,
    seed=snakemake.params.seed,
)
