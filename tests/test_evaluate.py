"""Pooled out-of-fold metrics on hand-made predictions with known AUC, AP and accuracy."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from csmil.evaluation.metrics import evaluate_method, pool_predictions
from csmil.io import read_tsv, write_tsv


def write_folds(tmp_path, rows):
    """rows: (patient_id, label, fold, prob); one predictions.tsv per fold, sorted by fold."""
    df = pd.DataFrame(rows, columns=["patient_id", "label", "fold", "prob"])
    df["prob_median"] = df["prob"]
    df["prob_max"] = df["prob"]
    df["n_patches"] = 10
    paths = []
    for fold in sorted(df["fold"].unique()):
        path = tmp_path / f"fold{fold}.tsv"
        write_tsv(df[df["fold"] == fold], path)
        paths.append(path)
    return paths


ROWS = [
    ("a", 0, 0, 0.1),
    ("b", 0, 0, 0.4),
    ("c", 1, 1, 0.35),
    ("d", 1, 1, 0.8),
    ("e", 0, 2, 0.5),  # exactly 0.5 counts as negative (prob > 0.5 is positive)
]


def test_known_auc_ap_accuracy_and_curves(tmp_path):
    paths = write_folds(tmp_path, ROWS)
    m = evaluate_method(paths, tmp_path / "metrics.tsv", tmp_path / "curves.tsv")
    # AUC: of 6 (pos, neg) pairs, 0.35 beats 0.1 and 0.8 beats all three: 4/6
    assert m["auc"] == pytest.approx(4 / 6)
    # AP: ranked 0.8(+) 0.5 0.4 0.35(+) 0.1 -> 0.5 * 1 + 0.5 * 2/4
    assert m["ap"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.8)
    assert (m["n"], m["n_pos"], m["n_folds"]) == (5, 2, 3)
    table = read_tsv(tmp_path / "metrics.tsv")
    assert list(table.columns) == ["n", "n_pos", "n_folds", "auc", "ap", "accuracy"]
    assert table.loc[0, "auc"] == pytest.approx(4 / 6)

    curves = read_tsv(tmp_path / "curves.tsv")
    assert list(curves.columns) == ["curve", "x", "y", "threshold"]
    roc = curves[curves["curve"] == "roc"]
    assert (roc["x"].iloc[0], roc["y"].iloc[0]) == (0, 0) and np.isnan(roc["threshold"].iloc[0])
    assert (roc["x"].iloc[-1], roc["y"].iloc[-1]) == (1, 1)
    assert np.trapezoid(roc["y"], roc["x"]) == pytest.approx(4 / 6)
    pr = curves[curves["curve"] == "pr"]
    assert (pr["x"].iloc[-1], pr["y"].iloc[-1]) == (0, 1) and np.isnan(pr["threshold"].iloc[-1])
    assert set(pr["threshold"].dropna()) <= {0.1, 0.4, 0.35, 0.8, 0.5}


def test_duplicate_patient_and_missing_fold_are_errors(tmp_path):
    paths = write_folds(tmp_path, [*ROWS, ("d", 1, 3, 0.9)])
    with pytest.raises(ValueError, match="more than one fold.*'d'"):
        evaluate_method(paths, tmp_path / "m.tsv")
    paths = write_folds(tmp_path, ROWS)
    with pytest.raises(ValueError, match="folds \\[3\\] are missing"):
        evaluate_method(paths, tmp_path / "m.tsv", n_folds=4)
    with pytest.raises(ValueError, match="fold 1 appears in both"):
        evaluate_method([paths[0], paths[1], paths[1]], tmp_path / "m.tsv")
    assert not (tmp_path / "m.tsv").exists()


def test_empty_fold_file_is_allowed_in_place_of_a_missing_fold(tmp_path, caplog):
    paths = write_folds(tmp_path, ROWS)
    empty = tmp_path / "fold3.tsv"
    write_tsv(pd.DataFrame(columns=read_tsv(paths[0]).columns), empty)
    with caplog.at_level(logging.WARNING):
        pooled = pool_predictions([*paths, empty])
    assert len(pooled) == 5 and "folds [3] have no predictions" in caplog.text


def test_single_class_gives_nan_auc_and_ap(tmp_path, caplog):
    paths = write_folds(tmp_path, [("a", 1, 0, 0.7), ("b", 1, 1, 0.2)])
    with caplog.at_level(logging.WARNING):
        m = evaluate_method(paths, tmp_path / "m.tsv", tmp_path / "c.tsv")
    assert np.isnan(m["auc"]) and np.isnan(m["ap"]) and m["accuracy"] == 0.5
    assert "undefined" in caplog.text
    assert len(read_tsv(tmp_path / "c.tsv")) == 0
