"""Every method of a dataset against the reference method, on the patients both scored.

For each method the pooled out-of-fold predictions (see
:func:`csmil.evaluation.metrics.pool_predictions`) are aligned with the reference's by
``patient_id`` (inner join; labels must agree). On that shared set we run the tests of the paper's
tables (§5.1, Tables 1-3):

* AUC: the paired DeLong test (:func:`csmil.evaluation.stats.delong_test`), with the interval
  of the AUC difference;
* AP: the paired, class-stratified bootstrap test (:func:`csmil.evaluation.stats.bootstrap_test`);
  the bootstrap test of the AUC is written beside it.

The method's own AUC, its DeLong interval and its AP are computed on all patients it scored, so
they equal the method's ``metrics.tsv``. Differences are ``method - reference``. A shared set
with a single class (or fewer than two patients) has no defined test: its p-values are NaN and
a warning says why. The reference's own row carries NaN p-values.

This module owns ``compare.tsv`` (:data:`COMPARE_COLUMNS`; :func:`write_comparison`,
:func:`read_comparison`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from csmil.evaluation.metrics import pool_predictions
from csmil.evaluation.stats import auc_ci, bootstrap_test, delong_test, delong_variance
from csmil.io import read_tsv, write_tsv

log = logging.getLogger(__name__)

COMPARE_COLUMNS: tuple[str, ...] = (
    "method",
    "reference",
    "n",
    "n_pos",
    "auc",
    "auc_low",
    "auc_high",
    "ap",
    "n_shared",
    "auc_ref",
    "ap_ref",
    "auc_diff",
    "auc_diff_low",
    "auc_diff_high",
    "p_auc_delong",
    "p_auc_bootstrap",
    "ap_diff",
    "p_ap_bootstrap",
)

#: Significance level of the markers in the tables.
ALPHA = 0.05


def significance(p_value: float, is_reference: bool = False, alpha: float = ALPHA) -> str:
    """The paper's marker: ``"Ref."`` for the reference, ``"*"`` where ``p < alpha``,
    ``"N.S."`` otherwise, ``"n/a"`` for a missing (NaN) p-value."""
    if is_reference:
        return "Ref."
    if p_value is None or not math.isfinite(float(p_value)):
        return "n/a"
    return "*" if float(p_value) < alpha else "N.S."


def _own_metrics(df: pd.DataFrame, level: float) -> dict[str, float]:
    """n, n_pos, AUC with its DeLong interval, and AP over one method's predictions."""
    y = df["label"].to_numpy(dtype=int)
    s = df["prob"].to_numpy(dtype=float)
    out = {"n": len(y), "n_pos": int(y.sum())}
    nan = {"auc": np.nan, "auc_low": np.nan, "auc_high": np.nan, "ap": np.nan}
    if not 0 < out["n_pos"] < len(y):
        return {**out, **nan}
    auc, _ = delong_variance(y, s)
    low, high = auc_ci(y, s, level=level, method="delong")
    ap = float(average_precision_score(y, s))
    return {**out, "auc": auc, "auc_low": low, "auc_high": high, "ap": ap}


def align(method_df: pd.DataFrame, reference_df: pd.DataFrame, method: str) -> pd.DataFrame:
    """Patients scored by both, sorted by id: columns ``patient_id, label, prob, prob_ref``.

    Raises ``ValueError`` when a shared patient has different labels in the two tables.
    """
    merged = method_df[["patient_id", "label", "prob"]].merge(
        reference_df[["patient_id", "label", "prob"]].rename(
            columns={"label": "label_ref", "prob": "prob_ref"}
        ),
        on="patient_id",
        how="inner",
    )
    bad = merged[merged["label"] != merged["label_ref"]]
    if len(bad):
        raise ValueError(
            f"method {method!r} and the reference disagree on the label of patients "
            f"{bad['patient_id'].tolist()[:5]}; were they trained on different sample sheets?"
        )
    dropped = len(method_df) + len(reference_df) - 2 * len(merged)
    if dropped:
        log.warning(
            "%s: %d patients are scored by only one of the method (%d) and the reference (%d); "
            "the tests use the %d both scored",
            method,
            dropped,
            len(method_df),
            len(reference_df),
            len(merged),
        )
    return merged.drop(columns="label_ref").sort_values("patient_id", ignore_index=True)


def compare_pair(
    method_df: pd.DataFrame,
    reference_df: pd.DataFrame,
    method: str,
    reference: str,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, object]:
    """One row of :data:`COMPARE_COLUMNS`: ``method`` against ``reference``.

    Both frames hold pooled predictions (``patient_id, label, prob``). See the module docstring.
    """
    row: dict[str, object] = {"method": method, "reference": reference}
    row.update(_own_metrics(method_df, level))
    shared = align(method_df, reference_df, method)
    y = shared["label"].to_numpy(dtype=int)
    a = shared["prob"].to_numpy(dtype=float)
    b = shared["prob_ref"].to_numpy(dtype=float)
    row["n_shared"] = len(shared)
    tests = dict.fromkeys(COMPARE_COLUMNS[9:], np.nan)
    if method == reference:
        tests.update(auc_ref=row["auc"], ap_ref=row["ap"], auc_diff=0.0, ap_diff=0.0)
    elif not 0 < y.sum() < len(y):
        log.warning(
            "%s vs %s: the %d shared patients hold a single class; no test is defined",
            method,
            reference,
            len(y),
        )
    else:
        d = delong_test(y, a, b, level=level)
        ba = bootstrap_test(y, a, b, metric="ap", n_boot=n_boot, seed=seed)
        bu = bootstrap_test(y, a, b, metric="auc", n_boot=n_boot, seed=seed)
        tests.update(
            auc_ref=d.auc_b,
            ap_ref=ba.value_b,
            auc_diff=d.diff,
            auc_diff_low=d.ci_low,
            auc_diff_high=d.ci_high,
            p_auc_delong=d.p_value,
            p_auc_bootstrap=bu.p_value,
            ap_diff=ba.diff,
            p_ap_bootstrap=ba.p_value,
        )
        log.info(
            "%s vs %s on %d patients: AUC %.4f vs %.4f (DeLong p=%.4g), AP %.4f vs %.4f "
            "(bootstrap p=%.4g)",
            method,
            reference,
            len(y),
            d.auc_a,
            d.auc_b,
            d.p_value,
            ba.value_a,
            ba.value_b,
            ba.p_value,
        )
    row.update(tests)
    return row


def compare_methods(
    predictions: Mapping[str, pd.DataFrame],
    reference: str,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Every method of ``predictions`` (method -> pooled predictions) against ``reference``.

    Returns one row per method in the mapping's order, columns :data:`COMPARE_COLUMNS`.
    Every comparison uses the same bootstrap ``seed``.

    Raises:
        KeyError: ``reference`` is not among the methods.
    """
    if reference not in predictions:
        raise KeyError(
            f"reference method {reference!r} has no predictions (methods: "
            f"{sorted(predictions)}); train it or set tables.reference to a trained method"
        )
    ref = predictions[reference]
    rows = [
        compare_pair(df, ref, method, reference, n_boot=n_boot, seed=seed, level=level)
        for method, df in predictions.items()
    ]
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def compare_dataset(
    prediction_paths: Mapping[str, Sequence[str | os.PathLike]],
    reference: str,
    out_tsv: str | os.PathLike,
    n_folds: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Pool each method's fold predictions (``method -> [fold predictions.tsv]``), compare them
    with :func:`compare_methods` and write the table to ``out_tsv``. Returns it."""
    pooled = {m: pool_predictions(paths, n_folds) for m, paths in prediction_paths.items()}
    df = compare_methods(pooled, reference, n_boot=n_boot, seed=seed, level=level)
    write_comparison(df, out_tsv)
    return df


def write_comparison(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a comparison table (:data:`COMPARE_COLUMNS`, from :func:`compare_methods`)."""
    missing = [c for c in COMPARE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"comparison table lacks columns {missing}; build it with compare_methods")
    write_tsv(df, path)


def read_comparison(path: str | os.PathLike) -> pd.DataFrame:
    """A table written by :func:`compare_dataset`, checked for its columns."""
    df = read_tsv(path, dtype={"method": str, "reference": str})
    missing = [c for c in COMPARE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; re-run the compare step")
    return df
