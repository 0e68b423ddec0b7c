"""Patient-level, label-stratified cross-validation folds that stay put as a cohort grows.

The first assignment deals each label's patients (in a seeded random order) round-robin over
the folds, starting each label at a seeded fold. When patients are added later, everyone
already assigned keeps their fold (read from a ledger beside ``splits.tsv``, which the workflow
never deletes), and each new patient goes to the fold with the fewest patients of its label
(ties broken by the fewest patients overall, then by seeded order).

This module owns ``splits.tsv`` and its ledger (columns :data:`SPLITS_COLUMNS`: ``patient_id,
label, fold``; :func:`read_splits`, :func:`update_splits` writes both) and the roles of a fold
(:func:`fold_partition`): for fold ``f``, test = fold ``f``, validation = fold ``(f + 1) % K``,
training = the rest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from csmil.io import read_tsv, write_tsv

log = logging.getLogger(__name__)
SPLITS_COLUMNS: tuple[str, ...] = ("patient_id", "label", "fold")


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """A splits table (``splits.tsv`` or its ledger): ``patient_id`` (str), ``label``, ``fold``."""
    df = read_tsv(path, dtype={"patient_id": str})
    missing = [c for c in SPLITS_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(SPLITS_COLUMNS)}")
    return df


def ledger_path(splits_tsv: str | os.PathLike) -> Path:
    """Where the assignment history of ``splits_tsv`` is kept."""
    p = Path(splits_tsv)
    return p.with_name(p.stem + ".ledger.tsv")


def assign_folds(
    patients: pd.DataFrame,
    n_folds: int,
    seed: int,
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Folds for ``patients`` (columns ``patient_id, label``), keeping ``previous`` ones.

    Returns ``patient_id, label, fold`` in the order of ``patients``. A previous patient whose
    label changed is an error (relabelling silently would leak between folds).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    patients = patients[["patient_id", "label"]].drop_duplicates().reset_index(drop=True)
    if patients["patient_id"].duplicated().any():
        bad = patients["patient_id"][patients["patient_id"].duplicated()].tolist()
        raise ValueError(f"patients with more than one label: {bad}")
    rng = np.random.default_rng(seed)
    fold: dict[str, int] = {}
    counts = np.zeros((2, n_folds), dtype=int)
    if previous is not None and len(previous):
        prev = previous.set_index("patient_id")
        for pid, label in zip(patients["patient_id"], patients["label"], strict=True):
            if pid in prev.index:
                if int(prev.at[pid, "label"]) != int(label):
                    raise ValueError(
                        f"patient {pid!r} had label {prev.at[pid, 'label']} in the existing "
                        f"splits and now has {label}; delete the splits ledger to re-split"
                    )
                f = int(prev.at[pid, "fold"])
                if not 0 <= f < n_folds:
                    raise ValueError(
                        f"existing splits use fold {f} but n_folds is {n_folds}; delete the "
                        "splits ledger to re-split with a new number of folds"
                    )
                fold[pid] = f
                counts[int(label), f] += 1
    new = patients[~patients["patient_id"].isin(fold)]
    fresh = not fold
    for label in (0, 1):
        ids = new.loc[new["label"] == label, "patient_id"].to_numpy()
        ids = ids[rng.permutation(len(ids))]
        start = int(rng.integers(n_folds))
        tiebreak = rng.permutation(n_folds)
        for j, pid in enumerate(ids):
            if fresh:
                f = (start + j) % n_folds
            else:
                key = np.lexsort((tiebreak, counts.sum(axis=0), counts[label]))
                f = int(key[0])
            fold[pid] = f
            counts[label, f] += 1
    out = patients.copy()
    out["fold"] = [fold[p] for p in out["patient_id"]]
    return out[list(SPLITS_COLUMNS)]


def update_splits(
    samples: pd.DataFrame, splits_tsv: str | os.PathLike, n_folds: int, seed: int
) -> pd.DataFrame:
    """Write ``splits_tsv`` for the patients in ``samples``, keeping ledger assignments.

    The ledger (``<name>.ledger.tsv``) remembers every patient ever assigned, including ones
    since removed from the sample sheet, so a patient that returns gets its old fold back.
    """
    ledger = ledger_path(splits_tsv)
    previous = read_splits(ledger) if ledger.exists() else None
    patients = samples[["patient_id", "label"]].drop_duplicates()
    out = assign_folds(patients, n_folds, seed, previous)
    kept = 0 if previous is None else int(out["patient_id"].isin(previous["patient_id"]).sum())
    log.info("%d patients in %d folds (%d kept from earlier splits)", len(out), n_folds, kept)
    per_fold = out.groupby(["fold", "label"]).size().unstack(fill_value=0)
    log.info("patients per fold and label:\n%s", per_fold.to_string())
    if previous is not None:
        gone = previous[~previous["patient_id"].isin(out["patient_id"])]
        history = pd.concat([out, gone], ignore_index=True)
    else:
        history = out
    write_tsv(out, splits_tsv)
    write_tsv(history, ledger)
    return out


def fold_partition(
    splits: pd.DataFrame, fold: int, n_folds: int | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Patient ids (train, validation, test) of ``fold``, each in the splits' row order:
    test = fold ``fold``, validation = fold ``(fold + 1) % K``, train = the rest.

    ``K`` defaults to ``max(fold) + 1`` and must be >= 3; every patient may appear once.
    """
    missing = [c for c in SPLITS_COLUMNS if c not in splits.columns]
    if missing:
        raise ValueError(f"splits table lacks columns {missing}; expected patient_id, label, fold")
    ids = splits["patient_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"splits table lists patients twice: {ids[ids.duplicated()].tolist()[:5]}")
    folds = splits["fold"].astype(int)
    k = int(folds.max()) + 1 if n_folds is None else int(n_folds)
    if k < 3:
        raise ValueError(f"training needs K >= 3 folds (test, validation, train); got K = {k}")
    if not 0 <= fold < k or folds.min() < 0 or folds.max() >= k:
        raise ValueError(f"fold must be in [0, {k}) and so must the splits' folds; got {fold}")
    test, val = folds == fold, folds == (fold + 1) % k
    return ids[~test & ~val].tolist(), ids[val].tolist(), ids[test].tolist()
