import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from csmil.evaluation.compare import (
    COMPARE_COLUMNS,
    align,
    compare_dataset,
    compare_methods,
    read_comparison,
    significance,
)
from csmil.evaluation.stats import bootstrap_test, delong_test
from csmil.io import write_tsv


def predictions(ids, labels, probs, fold=0):
    return pd.DataFrame(
        {"patient_id": [str(i) for i in ids], "label": labels, "fold": fold, "prob": probs}
    )


@pytest.fixture
def cohort():
    rng = np.random.default_rng(0)
    n = 60
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    ids = [f"p{i:02d}" for i in range(n)]
    ref = np.clip(0.5 + 0.35 * (y - 0.5) * 2 + rng.normal(0, 0.15, n), 0, 1)  # good
    weak = np.clip(0.5 + rng.normal(0, 0.2, n), 0, 1)  # chance
    return ids, y, ref, weak


def test_significance_markers():
    assert significance(0.01) == "*"
    assert significance(0.05) == "N.S."
    assert significance(0.2) == "N.S."
    assert significance(np.nan) == "n/a"
    assert significance(0.001, is_reference=True) == "Ref."


def test_compare_matches_direct_tests_and_is_aligned_by_patient(cohort):
    ids, y, ref, weak = cohort
    ref_df = predictions(ids, y, ref)
    # the method lists its patients in another order and lacks two of them
    order = np.random.default_rng(1).permutation(len(ids))[2:]
    weak_df = predictions(np.array(ids)[order], y[order], weak[order])
    df = compare_methods({"weak": weak_df, "csmil": ref_df}, "csmil", n_boot=500, seed=3)
    assert df.columns.tolist() == list(COMPARE_COLUMNS)
    assert df["method"].tolist() == ["weak", "csmil"]
    row = df.iloc[0]
    keep = np.sort(order)  # the shared patients, by id
    d = delong_test(y[keep], weak[keep], ref[keep])
    b = bootstrap_test(y[keep], weak[keep], ref[keep], metric="ap", n_boot=500, seed=3)
    assert row["n"] == len(order) and row["n_shared"] == len(order)
    assert row["auc"] == pytest.approx(roc_auc_score(y[order], weak[order]))
    assert row["ap"] == pytest.approx(average_precision_score(y[order], weak[order]))
    assert row["auc_low"] < row["auc"] < row["auc_high"]
    assert row["auc_ref"] == pytest.approx(d.auc_b)
    assert row["auc_diff"] == pytest.approx(d.diff) and row["auc_diff"] < 0
    assert row["p_auc_delong"] == pytest.approx(d.p_value) and row["p_auc_delong"] < 0.05
    assert row["p_ap_bootstrap"] == pytest.approx(b.p_value) and row["p_ap_bootstrap"] < 0.05
    assert row["ap_diff"] == pytest.approx(b.diff)
    ref_row = df.iloc[1]
    assert np.isnan(ref_row["p_auc_delong"]) and ref_row["auc_diff"] == 0.0
    assert ref_row["auc"] == pytest.approx(roc_auc_score(y, ref))


def test_equal_methods_are_not_significant(cohort):
    ids, y, ref, _ = cohort
    df = compare_methods(
        {"copy": predictions(ids, y, ref), "csmil": predictions(ids, y, ref)}, "csmil", n_boot=200
    )
    assert df.loc[0, "p_auc_delong"] == 1.0
    assert significance(df.loc[0, "p_ap_bootstrap"]) == "N.S."


def test_label_disagreement_and_missing_reference_fail(cohort):
    ids, y, ref, weak = cohort
    flipped = predictions(ids, 1 - y, weak)
    with pytest.raises(ValueError, match="disagree on the label"):
        align(flipped, predictions(ids, y, ref), "flipped")
    with pytest.raises(KeyError, match="reference method 'csmil'"):
        compare_methods({"weak": predictions(ids, y, weak)}, "csmil")


def test_single_class_overlap_gives_nan_tests(cohort):
    ids, y, ref, weak = cohort
    pos = y == 1
    df = compare_methods(
        {
            "partial": predictions(np.array(ids)[pos], y[pos], weak[pos]),
            "csmil": predictions(ids, y, ref),
        },
        "csmil",
        n_boot=100,
    )
    assert df.loc[0, "n_shared"] == pos.sum()
    assert np.isnan(df.loc[0, "auc"]) and np.isnan(df.loc[0, "p_auc_delong"])


def test_compare_dataset_pools_folds(tmp_path, cohort):
    ids, y, ref, weak = cohort
    paths = {}
    for name, probs in (("weak", weak), ("csmil", ref)):
        files = []
        for k in range(3):
            sel = np.arange(len(ids)) % 3 == k
            p = tmp_path / f"{name}{k}.tsv"
            write_tsv(predictions(np.array(ids)[sel], y[sel], probs[sel], fold=k), p)
            files.append(p)
        paths[name] = files
    out = tmp_path / "compare.tsv"
    df = compare_dataset(paths, "csmil", out, n_folds=3, n_boot=200, seed=1)
    back = read_comparison(out)
    assert back["n"].tolist() == [60, 60]
    assert back["p_auc_delong"].iloc[0] == pytest.approx(df["p_auc_delong"].iloc[0])
    assert back["p_auc_delong"].iloc[0] == pytest.approx(delong_test(y, weak, ref).p_value)
