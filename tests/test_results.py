"""The fold result tables: columns, values of the predictions table, readers that check."""

import numpy as np
import pandas as pd
import pytest

from csmil.io import write_tsv
from csmil.mil.results import (
    ATTENTION_COLUMNS,
    PREDICTION_COLUMNS,
    empty_attention,
    predictions_table,
    read_attention,
    read_history,
    read_predictions,
    write_predictions,
)


def test_predictions_table_summarises_each_patients_bags(tmp_path):
    probs = np.array([[0.2, 0.4, 0.9], [0.5, 0.5, 0.8]])
    df = predictions_table(["007", "p2"], [0, 1], 3, probs, [10, 20])
    assert df.columns.tolist() == list(PREDICTION_COLUMNS)
    np.testing.assert_allclose(df["prob"], [0.5, 0.6])
    np.testing.assert_allclose(df["prob_median"], [0.4, 0.5])
    np.testing.assert_allclose(df["prob_max"], [0.9, 0.8])
    assert (df["fold"] == 3).all()
    write_predictions(df, tmp_path / "p.tsv")
    back = read_predictions(tmp_path / "p.tsv")
    assert back["patient_id"].tolist() == ["007", "p2"]  # ids stay strings
    empty = predictions_table([], [], 0, np.zeros((0, 5)), [])
    assert empty.empty and empty.columns.tolist() == list(PREDICTION_COLUMNS)


def test_readers_name_the_file_and_the_missing_columns(tmp_path):
    write_tsv(pd.DataFrame({"patient_id": ["a"], "label": [1]}), tmp_path / "p.tsv")
    with pytest.raises(ValueError, match=r"p.tsv: missing columns \['fold', 'prob'\]"):
        read_predictions(tmp_path / "p.tsv")
    write_tsv(pd.DataFrame({"epoch": [1]}), tmp_path / "h.tsv")
    with pytest.raises(ValueError, match=r"missing columns \['seconds'\]"):
        read_history(tmp_path / "h.tsv")
    write_tsv(empty_attention(), tmp_path / "a.tsv")
    att = read_attention(tmp_path / "a.tsv")
    assert att.empty and att.columns.tolist() == list(ATTENTION_COLUMNS)
