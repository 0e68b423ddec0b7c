"""Training time per epoch of every MIL method on a finished run's features.

Loads one dataset's feature stores, phenotype tables and splits from a results folder (the
default run's, say), trains each method on fold 0 for a few epochs with one thread and prints
seconds per epoch (the training loop alone: bag sampling, forward, backward, validation) and the
parameter count. Models and tables are written to a temporary folder, not into the run.

    .venv/bin/python benchmarks/bench_mil.py --results results --dataset micro --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pandas as pd

from csmil.mil.bags import load_patients
from csmil.mil.results import read_history
from csmil.mil.splits import read_splits
from csmil.mil.training import TrainSettings, train_fold
from csmil.runtime import setup_logging

METHODS = {
    "deepattnmisl_20x": {},
    "gated_attention": {},
    "deepattnmisl_multi": {},
    "msdamil": {},
    "dsmil": {},
    "dtfd": {},
    "hipt": {},
    "hagmil": {},
    "csmil": {},
    "csmil_noshare": {"model": "csmil", "shared_embedding": False},
    "csmil_concat": {"model": "csmil", "fusion": "concat"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--dataset", default="micro")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-folds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    setup_logging(level=logging.WARNING)
    root = Path(args.results) / args.dataset
    splits = read_splits(root / "splits.tsv")
    phen = {p: root / "phenotypes" / f"{p}.tsv" for p in splits["patient_id"]}
    feats = {p: sorted((root / "features").glob(f"{p}_s*.h5")) for p in splits["patient_id"]}
    patients = load_patients(splits, feats, phen)
    settings = TrainSettings(epochs=args.epochs, n_test_bags=10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, options in METHODS.items():
            out = train_fold(
                patients,
                splits,
                0,
                method,
                options,
                settings=settings,
                out_dir=Path(tmp) / method,
                n_folds=args.n_folds,
                num_threads=args.threads,
            )
            hist = read_history(Path(tmp) / method / "history.tsv")
            rows.append(
                {
                    "method": method,
                    "parameters": out["n_params"],
                    "seconds_per_epoch": hist["seconds"].mean(),
                }
            )
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
