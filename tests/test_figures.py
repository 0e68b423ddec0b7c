import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from csmil.evaluation.metrics import curve_points
from csmil.io import write_tsv
from csmil.reporting.figures import (
    SUMMARY_COLUMNS,
    TEST_COLUMNS,
    labelled_attention,
    plot_roc_pr,
    roc_pr_figure,
    scale_attention_report,
    scale_attention_summary,
    scale_attention_tests,
)


def is_png(path, min_size=(200, 200)):
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]


def attention_rows(n_per_label=40, seed=0):
    """Patches of two patients; positive patients' patches prefer 20x, negatives 5x."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid, label in (("neg", 0), ("pos", 1)):
        for i in range(n_per_label):
            a = rng.dirichlet([6, 3, 2] if label else [2, 3, 6])
            rows.append((pid, f"{pid}_s", i, 2, 1.0 / n_per_label, *a))
    cols = ["patient_id", "slide_id", "patch_index", "n_bags", "instance"]
    return pd.DataFrame(rows, columns=cols + ["scale_20x", "scale_10x", "scale_5x"])


def test_roc_pr_figure_from_evaluate_tables(tmp_path):
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    curves, metric_paths, curve_paths = {}, {}, {}
    for m, noise in (("csmil", 0.2), ("other", 0.6)):
        p = np.clip(y * 0.5 + 0.25 + rng.normal(0, noise, 40), 0, 1)
        curves[m] = curve_points(y, p)
        curve_paths[m] = tmp_path / f"{m}_curves.tsv"
        metric_paths[m] = tmp_path / f"{m}_metrics.tsv"
        write_tsv(curves[m], curve_paths[m])
        write_tsv(pd.DataFrame([{"n": 40, "n_pos": 20, "auc": 0.9, "ap": 0.8}]), metric_paths[m])
    roc_pr_figure(curve_paths, metric_paths, tmp_path / "f.png", title="d", reference="csmil")
    assert is_png(tmp_path / "f.png", (800, 400))
    # a method without curve points (one class) is drawn as an empty legend entry, no crash
    empty = pd.DataFrame(columns=["curve", "x", "y", "threshold"])
    plot_roc_pr(
        {"csmil": curves["csmil"], "none": empty},
        {"csmil": {"auc": 0.9, "ap": 0.8, "n": 40, "n_pos": 20}, "none": {"auc": np.nan}},
        tmp_path / "g.png",
    )
    assert is_png(tmp_path / "g.png")


def test_scale_summary_and_wilcoxon_values():
    att = attention_rows().assign(label=lambda d: (d["patient_id"] == "pos").astype(int))
    summary = scale_attention_summary(att, "ds")
    assert summary.columns.tolist() == list(SUMMARY_COLUMNS)
    assert len(summary) == 6
    pos20 = summary.query("label == 1 and scale == '20x'").iloc[0]
    ref = att.loc[att["label"] == 1, "scale_20x"]
    assert pos20["median"] == pytest.approx(ref.median())
    assert pos20["mean"] == pytest.approx(ref.mean())
    tests = scale_attention_tests(att, "ds")
    assert tests.columns.tolist() == list(TEST_COLUMNS)
    assert tests[["scale_a", "scale_b"]].drop_duplicates().values.tolist() == [
        ["20x", "10x"],
        ["20x", "5x"],
        ["10x", "5x"],
    ]
    row = tests.query("label == 1 and scale_a == '20x' and scale_b == '5x'").iloc[0]
    pos = att[att["label"] == 1]
    direct = wilcoxon(pos["scale_20x"], pos["scale_5x"])
    assert row["p_value"] == pytest.approx(direct.pvalue) and row["p_value"] < 1e-4
    assert row["n"] == 40


def test_identical_scales_give_p_one():
    att = attention_rows().assign(label=0, scale_10x=lambda d: d["scale_20x"])
    t = scale_attention_tests(att, "ds")
    assert t.query("scale_a == '20x' and scale_b == '10x'")["p_value"].tolist() == [1.0]


def test_labels_come_from_predictions_and_missing_ones_fail(tmp_path):
    write_tsv(attention_rows(), tmp_path / "att.tsv")
    write_tsv(
        pd.DataFrame({"patient_id": ["neg", "pos"], "label": [0, 1], "fold": 0, "prob": 0.5}),
        tmp_path / "pred.tsv",
    )
    att = labelled_attention([tmp_path / "att.tsv"], [tmp_path / "pred.tsv"])
    assert att.groupby("patient_id")["label"].first().to_dict() == {"neg": 0, "pos": 1}
    write_tsv(
        pd.DataFrame({"patient_id": ["neg"], "label": [0], "fold": 0, "prob": 0.5}),
        tmp_path / "pred1.tsv",
    )
    with pytest.raises(ValueError, match=r"patients \['pos'\] have no prediction"):
        labelled_attention([tmp_path / "att.tsv"], [tmp_path / "pred1.tsv"])


def test_scale_attention_report_writes_tables_and_plots(tmp_path):
    write_tsv(attention_rows(), tmp_path / "att.tsv")
    no_scale = attention_rows().assign(scale_20x=np.nan, scale_10x=np.nan, scale_5x=np.nan)
    write_tsv(no_scale, tmp_path / "att_none.tsv")
    write_tsv(
        pd.DataFrame({"patient_id": ["neg", "pos"], "label": [0, 1], "fold": 0, "prob": 0.5}),
        tmp_path / "pred.tsv",
    )
    runs = {
        "a": {"attention": [tmp_path / "att.tsv"], "predictions": [tmp_path / "pred.tsv"]},
        "b": {"attention": [tmp_path / "att_none.tsv"], "predictions": [tmp_path / "pred.tsv"]},
    }
    pngs = {d: tmp_path / f"{d}.png" for d in runs}
    summary, tests = scale_attention_report(
        runs, tmp_path / "s.csv", tmp_path / "t.csv", pngs, "csmil"
    )
    back = pd.read_csv(tmp_path / "s.csv")
    assert back.columns.tolist() == list(SUMMARY_COLUMNS)
    assert set(back["dataset"]) == {"a"}  # dataset b has no per-scale attention
    assert len(pd.read_csv(tmp_path / "t.csv")) == 6
    assert is_png(pngs["a"]) and is_png(pngs["b"])
    # the positive patients' 20x attention beats 5x, the negatives' the reverse
    med = back.set_index(["label", "scale"])["median"]
    assert med[(1, "20x")] > med[(1, "5x")] and med[(0, "5x")] > med[(0, "20x")]
