import numpy as np
import pandas as pd

from csmil.io import write_tsv
from csmil.reporting.markdown import table5, to_markdown, write_table


def metrics(tmp_path, name, auc, ap):
    path = tmp_path / f"{name}.tsv"
    write_tsv(pd.DataFrame([{"auc": auc, "ap": ap, "accuracy": 0.5, "n": 10, "n_pos": 5}]), path)
    return path


def test_table5_layout_and_mean(tmp_path):
    m = {
        "microset": {
            "csmil": metrics(tmp_path, "a", 0.9, 0.8),
            "deepattnmisl_20x": metrics(tmp_path, "b", 1.0, 1.0),
        },
        "macroset": {"csmil": metrics(tmp_path, "c", 0.7, 0.6)},
    }
    df = table5(m, ["csmil", "deepattnmisl_20x"], {"micro": "microset", "macro": "macroset"})
    assert df.columns.tolist() == [
        "method",
        "micro_auc",
        "micro_ap",
        "macro_auc",
        "macro_ap",
        "mean",
    ]
    assert df.loc[0].tolist() == ["csmil", 0.9, 0.8, 0.7, 0.6, np.mean([0.9, 0.8, 0.7, 0.6])]
    assert np.isnan(df.loc[1, "macro_auc"]) and np.isnan(df.loc[1, "mean"])


def test_markdown_and_csv(tmp_path):
    df = pd.DataFrame({"method": ["a", "b"], "auc": [0.91234, np.nan]})
    md = to_markdown(df, title="T")
    assert "| a | 0.9123 |" in md and "| b | n/a |" in md and md.startswith("**T**")
    write_table(df, tmp_path / "t.csv", tmp_path / "t.md")
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["method"].tolist() == ["a", "b"] and back["auc"][0] == 0.91234
