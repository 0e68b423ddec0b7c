"""Figures of the paper: ROC and PR curves per dataset (Fig. 3) and the per-scale attention
box plots with paired Wilcoxon tests between scales (Fig. 6, right).

All figures are drawn with matplotlib's Agg canvas (no display, no global pyplot state) and
written atomically as PNG.

Per-scale attention: each patch's ``scale_20x, scale_10x, scale_5x`` from the fold
``attention.tsv`` tables (averaged over the test bags the patch was drawn into) of the reference
method, grouped by the label of the patch's patient. Between every two scales a paired Wilcoxon
signed-rank test over the patches of a group (as the authors' ``scipy.stats.wilcoxon`` between
the 20x/10x/5x scores) asks whether one scale draws more attention than the other.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from csmil import SCALES
from csmil.io import atomic_path
from csmil.mil.results import SCALE_ATTENTION, load_attention, read_predictions

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("dataset", "label", "scale", "median", "mean")
TEST_COLUMNS = ("dataset", "label", "scale_a", "scale_b", "n", "statistic", "p_value")
LABEL_NAMES = {0: "negative patients", 1: "positive patients"}


def _figure(width: float, height: float, ncols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, out_png: str | os.PathLike, dpi: int = 110) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


# --------------------------------------------------------------------------- ROC / PR


def plot_roc_pr(
    curves: Mapping[str, pd.DataFrame],
    metrics: Mapping[str, Mapping[str, float]],
    out_png: str | os.PathLike,
    title: str | None = None,
    reference: str | None = None,
) -> None:
    """ROC (left) and precision-recall (right) curves of every method, AUC / AP in the legend.

    ``curves[method]`` is an ``evaluate`` curves table (``curve, x, y, threshold``);
    ``metrics[method]`` holds ``auc``, ``ap``, ``n`` and ``n_pos``. The reference is drawn in
    black, thicker. A method without curve points (single-class labels) is listed as n/a.
    """
    from matplotlib import colormaps

    fig, (roc, pr) = _figure(11.0, 5.0, 2)
    palette = colormaps["tab10" if len(curves) <= 10 else "tab20"].colors
    others = iter(palette)
    prevalence = []
    for method, df in curves.items():
        m = metrics[method]
        is_ref = method == reference
        style = {"color": "black", "lw": 2.4} if is_ref else {"color": next(others), "lw": 1.4}
        r, p = df[df["curve"] == "roc"], df[df["curve"] == "pr"]
        auc, ap = float(m.get("auc", np.nan)), float(m.get("ap", np.nan))
        label = method + (" (ref.)" if is_ref else "")
        roc.plot(r["x"], r["y"], label=f"{label}, AUC = {auc:.4f}", **style)
        pr.plot(p["x"], p["y"], label=f"{label}, AP = {ap:.4f}", drawstyle="steps-post", **style)
        if m.get("n"):
            prevalence.append(float(m["n_pos"]) / float(m["n"]))
    roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    if prevalence:
        pr.axhline(float(np.mean(prevalence)), ls="--", color="grey", lw=0.8)
    for ax, (xl, yl, name) in zip(
        (roc, pr),
        (("false positive rate", "true positive rate", "ROC"), ("recall", "precision", "PR")),
        strict=True,
    ):
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), xlabel=xl, ylabel=yl, title=name)
        ax.set_aspect("equal")
        ax.legend(loc="lower right" if name == "ROC" else "lower left", fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, out_png)


def roc_pr_figure(
    curve_paths: Mapping[str, str | os.PathLike],
    metric_paths: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    title: str | None = None,
    reference: str | None = None,
) -> None:
    """:func:`plot_roc_pr` from each method's ``curves.tsv`` and ``metrics.tsv``."""
    from csmil.evaluation.metrics import read_curves, read_metrics

    curves = {m: read_curves(p) for m, p in curve_paths.items()}
    metrics = {m: read_metrics(metric_paths[m]) for m in curve_paths}
    plot_roc_pr(curves, metrics, out_png, title=title, reference=reference)


# --------------------------------------------------------------------------- scale attention


def labelled_attention(
    attention_paths: Sequence[str | os.PathLike], prediction_paths: Sequence[str | os.PathLike]
) -> pd.DataFrame:
    """The folds' attention rows with the ``label`` of each patch's patient (from the folds'
    predictions)."""
    att = load_attention(attention_paths)
    preds = pd.concat([read_predictions(p) for p in prediction_paths])
    labels = preds.drop_duplicates("patient_id").set_index("patient_id")["label"]
    missing = sorted(set(att["patient_id"]) - set(labels.index))
    if missing:
        raise ValueError(f"attention rows of patients {missing[:5]} have no prediction (label)")
    return att.assign(label=att["patient_id"].map(labels).astype(int))


def _scale_values(att: pd.DataFrame) -> pd.DataFrame | None:
    cols = [SCALE_ATTENTION[s] for s in SCALES]
    if any(c not in att.columns for c in cols) or att[cols].isna().all().all():
        return None
    return att[cols].dropna()


def scale_attention_summary(att: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Median and mean attention of every scale per patient label; columns
    :data:`SUMMARY_COLUMNS`. Empty when the model has no per-scale attention."""
    rows = []
    for label, group in att.groupby("label"):
        vals = _scale_values(group)
        if vals is None:
            continue
        for s in SCALES:
            v = vals[SCALE_ATTENTION[s]]
            rows.append((dataset, int(label), s, float(v.median()), float(v.mean())))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def scale_attention_tests(att: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Paired two-sided Wilcoxon signed-rank tests between every two scales, per patient label,
    over the patches; columns :data:`TEST_COLUMNS`. Identical scales give p = 1."""
    rows = []
    for label, group in att.groupby("label"):
        vals = _scale_values(group)
        if vals is None:
            continue
        for a, b in itertools.combinations(SCALES, 2):
            x, y = vals[SCALE_ATTENTION[a]].to_numpy(), vals[SCALE_ATTENTION[b]].to_numpy()
            if len(x) == 0:
                stat, p = np.nan, np.nan
            elif np.all(x == y):
                stat, p = 0.0, 1.0
            else:
                res = wilcoxon(x, y)
                stat, p = float(res.statistic), float(res.pvalue)
            rows.append((dataset, int(label), a, b, len(x), stat, p))
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS))


def plot_scale_attention(
    att: pd.DataFrame, tests: pd.DataFrame, out_png: str | os.PathLike, title: str | None = None
) -> None:
    """Box plots of the per-patch attention of each scale, one panel per patient label, with
    the Wilcoxon p-values between scales under each panel."""
    labels = sorted(att["label"].unique()) if len(att) else []
    fig, axes = _figure(3.6 * max(1, len(labels)), 4.2, max(1, len(labels)))
    if _scale_values(att) is None:
        axes[0].text(0.5, 0.5, "this model has no per-scale attention", ha="center")
        axes[0].set_axis_off()
    for ax, label in zip(axes, labels, strict=False):
        vals = _scale_values(att[att["label"] == label])
        if vals is None:
            continue
        ax.boxplot([vals[SCALE_ATTENTION[s]] for s in SCALES], tick_labels=list(SCALES),
                   flierprops={"markersize": 2, "alpha": 0.4})  # fmt: skip
        ax.set(ylim=(0, 1), ylabel="scale attention", title=f"{LABEL_NAMES.get(label, label)}"
               f" ({len(vals)} patches)")  # fmt: skip
        t = tests[tests["label"] == label]
        text = "\n".join(f"{r.scale_a} vs {r.scale_b}: p = {r.p_value:.2g}" for r in t.itertuples())
        ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, out_png)


def scale_attention_report(
    runs: Mapping[str, Mapping[str, Sequence[str | os.PathLike]]],
    out_summary_csv: str | os.PathLike,
    out_tests_csv: str | os.PathLike,
    out_pngs: Mapping[str, str | os.PathLike],
    method: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per dataset (``runs[dataset]`` with fold ``attention`` and ``predictions`` tables of one
    method): the summary and test tables (all datasets, as CSV) and a box plot per dataset."""
    summaries, tests = [], []
    for ds, files in runs.items():
        att = labelled_attention(files["attention"], files["predictions"])
        summary, test = scale_attention_summary(att, ds), scale_attention_tests(att, ds)
        if summary.empty:
            log.warning("%s: %s has no per-scale attention; no scale summary", ds, method)
        plot_scale_attention(att, test, out_pngs[ds], title=f"{ds}: {method} scale attention")
        summaries.append(summary)
        tests.append(test)
        log.info("%s scale attention:\n%s", ds, summary.to_string(index=False))
    summary = pd.concat(summaries, ignore_index=True)
    test = pd.concat(tests, ignore_index=True)
    for df, path in ((summary, out_summary_csv), (test, out_tests_csv)):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    return summary, test
