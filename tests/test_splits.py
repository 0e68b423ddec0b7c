import numpy as np
import pandas as pd
import pytest

from csmil.io import write_tsv
from csmil.mil.splits import (
    assign_folds,
    fold_partition,
    ledger_path,
    read_splits,
    update_splits,
)


def cohort(n_pos, n_neg, start=0):
    ids = [f"p{i:03d}" for i in range(start, start + n_pos + n_neg)]
    return pd.DataFrame({"patient_id": ids, "label": [1] * n_pos + [0] * n_neg})


def test_folds_are_label_stratified_and_seeded():
    df = assign_folds(cohort(20, 30), n_folds=10, seed=3)
    counts = df.groupby(["label", "fold"]).size().unstack(fill_value=0)
    assert counts.loc[1].tolist() == [2] * 10
    assert counts.loc[0].tolist() == [3] * 10
    again = assign_folds(cohort(20, 30), n_folds=10, seed=3)
    assert df.equals(again)
    other = assign_folds(cohort(20, 30), n_folds=10, seed=4)
    assert not df["fold"].equals(other["fold"])


def test_patients_keep_their_fold_when_others_are_added(tmp_path):
    out = tmp_path / "splits.tsv"
    first = update_splits(cohort(10, 10), out, n_folds=5, seed=0)
    grown = pd.concat([cohort(10, 10), cohort(3, 4, start=100)], ignore_index=True)
    second = update_splits(grown, out, n_folds=5, seed=0)
    merged = first.merge(second, on="patient_id", suffixes=("_a", "_b"))
    assert len(merged) == 20
    assert (merged["fold_a"] == merged["fold_b"]).all()
    # the new patients fill folds so that per-label counts stay within one of each other
    counts = second.groupby(["label", "fold"]).size().unstack(fill_value=0)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()
    assert ledger_path(out).exists()


def test_removed_patient_gets_old_fold_back(tmp_path):
    out = tmp_path / "splits.tsv"
    full = cohort(6, 6)
    first = update_splits(full, out, n_folds=3, seed=1).set_index("patient_id")
    update_splits(full.iloc[1:], out, n_folds=3, seed=1)
    back = update_splits(full, out, n_folds=3, seed=1).set_index("patient_id")
    assert back.loc["p000", "fold"] == first.loc["p000", "fold"]


def test_label_change_is_an_error(tmp_path):
    out = tmp_path / "splits.tsv"
    update_splits(cohort(4, 4), out, n_folds=3, seed=0)
    flipped = cohort(4, 4)
    flipped.loc[0, "label"] = 0
    with pytest.raises(ValueError, match="p000"):
        update_splits(flipped, out, n_folds=3, seed=0)


def test_fold_partition_partitions_patients():
    df = assign_folds(cohort(10, 10), n_folds=5, seed=0)
    for f in range(5):
        train, val, test = fold_partition(df, f, n_folds=5)
        all_ids = train + val + test
        assert sorted(all_ids) == sorted(df["patient_id"])
        assert set(test) == set(df.loc[df["fold"] == f, "patient_id"])
        assert set(val) == set(df.loc[df["fold"] == (f + 1) % 5, "patient_id"])
    with pytest.raises(ValueError, match="fold must be"):
        fold_partition(df, 5, n_folds=5)


def test_every_fold_used_once_across_test_sets():
    df = assign_folds(cohort(7, 9), n_folds=4, seed=2)
    tests = np.concatenate([fold_partition(df, f, 4)[2] for f in range(4)])
    assert sorted(tests) == sorted(df["patient_id"])


def test_fold_partition_convention():
    splits = pd.DataFrame(
        {"patient_id": list("abcdef"), "label": [0, 1] * 3, "fold": [0, 1, 2, 3, 3, 0]}
    )
    assert fold_partition(splits, 3) == (["b", "c"], ["a", "f"], ["d", "e"])
    assert fold_partition(splits, 0) == (["c", "d", "e"], ["b"], ["a", "f"])
    with pytest.raises(ValueError, match="K >= 3"):
        fold_partition(splits.assign(fold=[0, 1] * 3), 0)
    with pytest.raises(ValueError, match="fold must be in"):
        fold_partition(splits, 4)


def test_read_splits_keeps_ids_as_text_and_checks_columns(tmp_path):
    out = tmp_path / "splits.tsv"
    df = cohort(3, 3).assign(patient_id=["007", "010", "1e3", "a", "b", "c"])
    written = update_splits(df, out, n_folds=3, seed=0)
    back = read_splits(out)
    pd.testing.assert_frame_equal(back, written)
    pd.testing.assert_frame_equal(read_splits(ledger_path(out)), written)
    write_tsv(df[["patient_id"]], tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match=r"bad.tsv: missing columns \['label', 'fold'\]"):
        read_splits(tmp_path / "bad.tsv")
