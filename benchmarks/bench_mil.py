"""MIL training throughput: the folds of a method one by one (before) and as one stacked model
(after), on the same cohort and device, in one run.

The cohort is a finished run's features (``--results``), or by default a synthetic one of the
default toy size: 64 patients, about 110 patches each, 192-d features per scale, 10 folds.
For each method, both ways train every fold for ``--epochs`` epochs with one compute thread
and print: training bags per second, epochs per second of the whole K-fold cross-validation
(K fold-epochs count as one), seconds per cross-validation epoch, and the speed-up. Times
cover training only (bag sampling, forward, backward, optimiser, validation), not testing.
Outputs go to a temporary folder.

    .venv/bin/python benchmarks/bench_mil.py                      # CPU, and CUDA when present
    .venv/bin/python benchmarks/bench_mil.py --results results --dataset micro --epochs 5
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from csmil import SCALES
from csmil.mil.bags import PatientBags, load_patients
from csmil.mil.splits import read_splits
from csmil.mil.training import TrainSettings, train_folds
from csmil.runtime import setup_logging

METHODS = {
    "csmil": {"scale_normalisation": "softmax"},
    "csmil_concat": {"model": "csmil", "fusion": "concat"},
    "deepattnmisl_20x": {},
    "gated_attention": {},
    "deepattnmisl_multi": {},
    "dsmil": {},
    "hagmil": {},
    "dtfd": {},
    "hipt": {},
}


def synthetic_cohort(
    n_patients: int, n_folds: int, tiles: int, dim: int, seed: int = 0
) -> tuple[list[PatientBags], pd.DataFrame]:
    """Half positive patients of ``tiles`` +- 20% patches, 8 phenotype clusters; positives
    have a shifted cluster, so the models learn something."""
    rng = np.random.default_rng(seed)
    patients, rows = [], []
    for i in range(n_patients):
        pid, label = f"P{i:03d}", i % 2
        n = int(rng.integers(int(tiles * 0.8), int(tiles * 1.2) + 1))
        clusters = rng.integers(0, 8, size=n).astype(np.int64)
        feats = {s: rng.normal(size=(n, dim)).astype(np.float32) for s in SCALES}
        if label:
            hit = clusters == 7
            for s in SCALES:
                feats[s][hit, :8] += 1.0
        slide = f"{pid}_s0"
        patients.append(
            PatientBags(
                pid,
                label,
                feats,
                clusters,
                np.array([slide] * n, dtype=object),
                np.arange(n),
                {slide: n},
                {c: clusters for c in ("10x", "5x", "all")},
            )
        )
        rows.append((pid, label, (i // 2) % n_folds))
    return patients, pd.DataFrame(rows, columns=["patient_id", "label", "fold"])


def run_cohort(args) -> tuple[list[PatientBags], pd.DataFrame, str]:
    if args.results is None:
        patients, splits = synthetic_cohort(args.patients, args.n_folds, args.tiles, args.dim)
        what = f"synthetic: {args.patients} patients, ~{args.tiles} patches, {args.dim}-d"
        return patients, splits, what
    root = Path(args.results) / args.dataset
    splits = read_splits(root / "splits.tsv")
    phen = {p: root / "phenotypes" / f"{p}.tsv" for p in splits["patient_id"]}
    feats = {p: sorted((root / "features").glob(f"{p}_s*.h5")) for p in splits["patient_id"]}
    patients = load_patients(splits, feats, phen)
    return patients, splits, f"{root}: {len(patients)} patients, {patients[0].dim}-d"


def measure(patients, splits, method, options, settings, device, stacked, tmp) -> dict:
    folds = sorted(int(f) for f in splits["fold"].unique())
    out = train_folds(
        patients,
        splits,
        folds,
        method,
        options,
        settings=settings,
        out_dirs=[Path(tmp) / f"{method}_{stacked}_{f}" for f in folds],
        seeds=list(range(len(folds))),
        device=device,
        num_threads=1,
        stacked=stacked,
    )
    seconds = sum(s["seconds_train"] for s in out)
    bags = sum(s["n_train"] for s in out) * settings.epochs
    return {
        "seconds": seconds,
        "bags_per_s": bags / seconds,
        "cv_epochs_per_s": settings.epochs / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=None, help="a run's results folder (default: synthetic)")
    ap.add_argument("--dataset", default="micro")
    ap.add_argument("--patients", type=int, default=64)
    ap.add_argument("--tiles", type=int, default=110)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--n-folds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if present")
    args = ap.parse_args()
    setup_logging(level=logging.WARNING)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    patients, splits, what = run_cohort(args)
    n_folds = splits["fold"].nunique()
    print(f"cohort {what}; {n_folds} folds; {args.epochs} epochs; torch {torch.__version__}")
    settings = TrainSettings(epochs=args.epochs, n_test_bags=2, standardise=True, bag_mode="naive")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            for method in args.methods:
                options = METHODS.get(method, {})
                before = measure(patients, splits, method, options, settings, device, False, tmp)
                after = measure(patients, splits, method, options, settings, device, True, tmp)
                rows.append(
                    {
                        "device": device,
                        "method": method,
                        "bags/s before": before["bags_per_s"],
                        "bags/s after": after["bags_per_s"],
                        "cv epochs/s before": before["cv_epochs_per_s"],
                        "cv epochs/s after": after["cv_epochs_per_s"],
                        "s per cv epoch after": after["seconds"] / args.epochs,
                        "speed-up": before["seconds"] / after["seconds"],
                    }
                )
                print(
                    pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.2f"), flush=True
                )
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
