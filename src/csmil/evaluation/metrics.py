"""Metrics of one method over its pooled out-of-fold test predictions.

Each fold's ``predictions.tsv`` (:mod:`csmil.mil.results`, written by training) scores that fold's
test patients; pooled, every patient of the cohort is scored exactly once by a model that never saw
it. On the pooled predictions we compute, with scikit-learn as in the authors' evaluation
scripts (reference notes §4): ROC AUC, average precision (AP) and accuracy at a threshold of
0.5 (``prob > 0.5`` is positive, as ``preds > 0.5`` there), plus the ROC and precision-recall
curve points.

When the pooled labels hold a single class, AUC and AP are undefined: they are written as NaN
(tables print ``n/a``) with a logged warning, and no curve points are written; accuracy is
still computed.

This module owns the two tables it writes: ``metrics.tsv`` (one row, :data:`METRIC_COLUMNS`;
:func:`write_metrics`, :func:`read_metrics`) and the curve points (:data:`CURVE_COLUMNS`;
:func:`write_curves`, :func:`read_curves`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from csmil.io import read_tsv, write_tsv
from csmil.mil.results import read_predictions

log = logging.getLogger(__name__)

METRIC_COLUMNS: tuple[str, ...] = ("n", "n_pos", "n_folds", "auc", "ap", "accuracy")
CURVE_COLUMNS: tuple[str, ...] = ("curve", "x", "y", "threshold")


def write_metrics(metrics: Mapping[str, float], path: str | os.PathLike) -> None:
    """Write one method's metrics as the one-row table of :data:`METRIC_COLUMNS`."""
    write_tsv(pd.DataFrame([metrics], columns=list(METRIC_COLUMNS)), path)


def read_metrics(path: str | os.PathLike) -> dict[str, float]:
    """The single row of a method's metrics TSV as a dict (``auc``, ``ap``, ...)."""
    df = read_tsv(path)
    if len(df) != 1:
        raise ValueError(f"{path}: expected one row of metrics, found {len(df)}")
    return df.iloc[0].to_dict()


def write_curves(points: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ROC and PR curve points (:data:`CURVE_COLUMNS`, from :func:`curve_points`)."""
    write_tsv(points, path)


def read_curves(path: str | os.PathLike) -> pd.DataFrame:
    """Curve points written by :func:`write_curves` (no rows for a single-class set)."""
    df = read_tsv(path)
    missing = [c for c in CURVE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(CURVE_COLUMNS)}")
    return df


def pool_predictions(
    prediction_paths: Sequence[str | os.PathLike], n_folds: int | None = None
) -> pd.DataFrame:
    """Concatenate per-fold predictions, checking that they form one out-of-fold set.

    Each file must hold a single fold, no fold may come from two files and no patient may be
    scored twice. The folds must be ``0 .. K-1`` with ``K = n_folds`` (default: the number of
    files); a fold whose file is empty (no test patients) can only be told apart by its
    absence, so as many folds may be missing as there are empty files (logged).
    """
    if not prediction_paths:
        raise ValueError("no prediction files were given")
    frames, empty, fold_of = [], [], {}
    for path in prediction_paths:
        df = read_predictions(path)
        if df.empty:
            empty.append(str(path))
            continue
        folds = sorted(df["fold"].astype(int).unique())
        if len(folds) != 1:
            raise ValueError(f"{path}: holds folds {folds}; expected one fold per file")
        if folds[0] in fold_of:
            raise ValueError(f"fold {folds[0]} appears in both {fold_of[folds[0]]} and {path}")
        fold_of[folds[0]] = str(path)
        frames.append(df.assign(source=str(path)))
    k = len(prediction_paths) if n_folds is None else int(n_folds)
    absent = sorted(set(range(k)) - set(fold_of))
    extra = sorted(set(fold_of) - set(range(k)))
    if extra or len(absent) > len(empty):
        raise ValueError(
            f"expected predictions for folds 0..{k - 1}; folds {absent} are missing and "
            f"{extra} are out of range (files: {list(map(str, prediction_paths))}); run "
            "training for every fold"
        )
    if absent:
        log.warning("folds %s have no predictions (empty files: %s)", absent, empty)
    if not frames:
        raise ValueError(f"all prediction files are empty: {empty}")
    pooled = pd.concat(frames, ignore_index=True)
    dup = pooled[pooled["patient_id"].duplicated(keep=False)]
    if len(dup):
        where = dup.groupby("patient_id")["source"].apply(list).head(5).to_dict()
        raise ValueError(
            f"patients scored in more than one fold: {where}; each patient must be in exactly "
            "one fold's test set (were the folds trained on different splits.tsv files?)"
        )
    bad_label = ~pooled["label"].isin([0, 1])
    bad_prob = ~np.isfinite(pooled["prob"]) | (pooled["prob"] < 0) | (pooled["prob"] > 1)
    for name, bad in (("label (0 or 1)", bad_label), ("prob (in [0, 1])", bad_prob)):
        if bad.any():
            row = pooled[bad].iloc[0]
            raise ValueError(
                f"{row['source']}: patient {row['patient_id']!r} has an invalid {name}"
            )
    pooled["label"] = pooled["label"].astype(int)
    return pooled.drop(columns="source")


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC, AP and accuracy at 0.5 for labels (n,) in {0, 1} and probabilities (n,).

    AUC and AP are NaN (with a warning) when ``labels`` hold a single class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    n_pos = int(labels.sum())
    out = {"n": len(labels), "n_pos": n_pos, "auc": np.nan, "ap": np.nan}
    if 0 < n_pos < len(labels):
        out["auc"] = float(roc_auc_score(labels, probs))
        out["ap"] = float(average_precision_score(labels, probs))
    else:
        log.warning(
            "all %d patients have label %s: AUC and AP are undefined (NaN)",
            len(labels),
            labels[0] if len(labels) else "-",
        )
    out["accuracy"] = float(np.mean((probs > 0.5).astype(int) == labels)) if len(labels) else np.nan
    return out


def curve_points(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """ROC (x = false positive rate, y = true positive rate) and PR (x = recall,
    y = precision) points with their thresholds; empty for a single-class set.

    scikit-learn's ROC starts at threshold ``inf`` and its PR curve ends at (recall 0,
    precision 1) without a threshold; those thresholds are written as NaN.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    fpr, tpr, roc_thr = roc_curve(labels, probs)
    precision, recall, pr_thr = precision_recall_curve(labels, probs)
    roc_thr = np.where(np.isfinite(roc_thr), roc_thr, np.nan)
    pr_thr = np.append(pr_thr, np.nan)  # the final (0, 1) point has no threshold
    return pd.concat(
        [
            pd.DataFrame({"curve": "roc", "x": fpr, "y": tpr, "threshold": roc_thr}),
            pd.DataFrame({"curve": "pr", "x": recall, "y": precision, "threshold": pr_thr}),
        ],
        ignore_index=True,
    )


def evaluate_method(
    prediction_paths: Sequence[str | os.PathLike],
    out_metrics_tsv: str | os.PathLike,
    out_curves_tsv: str | os.PathLike | None = None,
    n_folds: int | None = None,
) -> dict[str, float]:
    """Pool the folds' predictions (see :func:`pool_predictions`), write the one-row metrics
    table (columns ``n, n_pos, n_folds, auc, ap, accuracy``) and, when asked, the curve
    points (``curve, x, y, threshold``). Returns the metrics.
    """
    pooled = pool_predictions(prediction_paths, n_folds)
    metrics = binary_metrics(pooled["label"].to_numpy(), pooled["prob"].to_numpy())
    metrics["n_folds"] = int(pooled["fold"].nunique())
    write_metrics(metrics, out_metrics_tsv)
    if out_curves_tsv is not None:
        write_curves(
            curve_points(pooled["label"].to_numpy(), pooled["prob"].to_numpy()), out_curves_tsv
        )
    log.info(
        "%d patients (%d positive) from %d folds: AUC %.4f, AP %.4f, accuracy %.4f",
        metrics["n"],
        metrics["n_pos"],
        metrics["n_folds"],
        metrics["auc"],
        metrics["ap"],
        metrics["accuracy"],
    )
    return metrics
