"""Results tables in the paper's layout, written as CSV and Markdown."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from csmil.evaluation.metrics import read_metrics
from csmil.io import atomic_path

log = logging.getLogger(__name__)


def to_markdown(
    df: pd.DataFrame, floatfmt: str = ".4f", title: str | None = None, footnotes: Sequence[str] = ()
) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); NaN shows as ``n/a``."""

    def cell(v) -> str:
        if isinstance(v, float | np.floating):
            return "n/a" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(map(str, df.columns)) + " |")
    lines.append(
        "|"
        + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns)
        + "|"
    )
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    lines += ["", *footnotes] if footnotes else []
    return "\n".join(lines) + "\n"


def write_table(
    df: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike, **md_kwargs
) -> None:
    """Write a table as CSV and Markdown, both atomically."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text(to_markdown(df, **md_kwargs))


def table5(
    metrics: Mapping[str, Mapping[str, str | os.PathLike]],
    methods: Sequence[str],
    cohorts: Mapping[str, str],
) -> pd.DataFrame:
    """Table 5 (toy cohorts): one row per method, AUC and AP per cohort and their mean.

    ``metrics[dataset][method]`` is a metrics TSV path; ``cohorts`` maps each toy cohort
    (``micro``, ``macro``) to the dataset that holds it. Missing cohorts give NaN columns.
    """
    rows = []
    for method in methods:
        row: dict[str, object] = {"method": method}
        for cohort in ("micro", "macro"):
            dataset = cohorts.get(cohort)
            if dataset is None or method not in metrics.get(dataset, {}):
                row[f"{cohort}_auc"] = row[f"{cohort}_ap"] = np.nan
                continue
            m = read_metrics(metrics[dataset][method])
            row[f"{cohort}_auc"] = float(m["auc"])
            row[f"{cohort}_ap"] = float(m["ap"])
        vals = [row[c] for c in ("micro_auc", "micro_ap", "macro_auc", "macro_ap")]
        row["mean"] = float(np.mean(vals)) if not np.any(np.isnan(vals)) else np.nan
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["method", "micro_auc", "micro_ap", "macro_auc", "macro_ap", "mean"]
    )
