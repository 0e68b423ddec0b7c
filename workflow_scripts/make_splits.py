"""Snakemake adapter: csmil.mil.splits.update_splits (splits.tsv and its ledger,
where rules/common.smk expects it: csmil.mil.splits.ledger_path)."""

import pandas as pd

from csmil.mil.splits import update_splits
from csmil.runtime import setup_logging

setup_logging(snakemake.log[0])
update_splits(
    pd.DataFrame(snakemake.params.patients),
    snakemake.output.splits,
    n_folds=snakemake.params.n_folds,
    seed=snakemake.params.seed,
)
