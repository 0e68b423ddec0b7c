"""The paper's Tables 1-4 and 6, built from whatever methods the run configured.

* Table 1 (§5.1): per dataset, every method with its patch scale and bag clustering, AUC, AP and
  their p-values against the reference (DeLong for AUC, paired bootstrap for AP); "Ref." for the
  reference, "*" where p < 0.05, "N.S." otherwise. CS-MIL variants that fill a slot of Table 2
  or 3 are listed there instead.
* Table 2 (§5.2): CS-MIL embedding sharing x activation of the cross-scale scorer.
* Table 3 (§5.2): CS-MIL fusion (attention, mean-vector, concatenation) x bag clustering.
  A slot of Table 2 or 3 is filled by the first configured method whose model is ``csmil`` and
  whose options equal the reference's except for the slot's own settings; an empty slot is a
  "not run" row, never an error.
* Table 4 (toy Table 4, for any cohort): patient, slide, patch and bag counts of the
  cross-validation.
* Table 6: parameters at the run's feature size and at 2048-d, the peak memory of training as
  the histories record it (CUDA max allocated on a GPU; on the CPU the peak resident set above
  the process's level before training), labelled (:data:`MEMORY_LABELS`; histories without it
  fall back to the training job's whole peak RSS from its Snakemake benchmark), and seconds per
  epoch.

Each table is a numeric CSV plus a Markdown rendering for people (:func:`write_report_table`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from csmil.evaluation.compare import significance
from csmil.io import atomic_path, read_tsv
from csmil.mil.methods import MethodSpec, method_spec
from csmil.mil.models import count_parameters, create_mil_model, load_mil_checkpoint
from csmil.mil.results import MEMORY_COLUMNS, read_history
from csmil.mil.splits import fold_partition, read_splits
from csmil.reporting.markdown import to_markdown

log = logging.getLogger(__name__)

NOT_RUN = "not run"
PAPER_DIM = 2048
#: What Table 6's memory measures, by the record it comes from: the histories' training
#: memory (:data:`csmil.mil.results.MEMORY_COLUMNS`), else the Snakemake benchmark's peak RSS
#: of the whole job (histories written before training memory was recorded).
MEMORY_LABELS: dict[str, str] = {
    "cuda": "peak GPU memory of training (CUDA max allocated, MB)",
    "cpu": "peak RSS of training above the process before it (CPU, MB)",
    "job": "peak RSS of the whole job, torch included (CPU, MB)",
}
GPU_LABEL, CPU_LABEL, RSS_LABEL = (MEMORY_LABELS[k] for k in ("cuda", "cpu", "job"))

MODEL_NAMES = {
    "deepattnmisl": "DeepAttnMISL",
    "gated_attention": "Gated Attention",
    "deepattnmisl_multi": "DeepAttnMISL (multi-scale)",
    "msdamil": "MS-DA-MIL",
    "dsmil": "DS-MIL",
    "dtfd": "DTFD-MIL",
    "hipt": "HIPT",
    "hagmil": "HAG-MIL",
    "csmil": "CS-MIL",
}
HIPT_NOTE = (
    "HIPT: HIPT's hierarchical transformer aggregation on our SimSiam features; its ViTs were "
    "not pre-trained."
)
# (label columns, option overrides, bag mode or None for the reference's)
TABLE2_SLOTS = tuple(
    (
        {"layer_kernel": kernel, "activation": act_name},
        {"shared_embedding": shared, "scale_activation": act},
        None,
    )
    for kernel, shared in (("Non-sharing", False), ("Sharing", True))
    for act_name, act in (("Tanh", "tanh"), ("ReLU", "relu"))
)
TABLE3_SLOTS = (
    ({"fusion": "Mean-vector", "clustering": "yes"}, {"fusion": "mean"}, "cluster"),
    ({"fusion": "Concatenation", "clustering": "yes"}, {"fusion": "concat"}, "cluster"),
    ({"fusion": "CS-Attention (naive bags)", "clustering": "no"}, {"fusion": "attention"}, "naive"),
    ({"fusion": "CS-Attention", "clustering": "yes"}, {"fusion": "attention"}, "cluster"),
)


def display_name(spec: MethodSpec) -> str:
    """A reader's name: the paper's model name, the scale of single-scale models."""
    base = MODEL_NAMES.get(spec.model, spec.model)
    return f"{base} ({spec.options['scale']})" if "scale" in spec.options else base


def setting(spec: MethodSpec) -> tuple[str, str]:
    """``(patch scale, clustering)`` of Table 1: "Single"/"Multiple" scales; the scale whose
    features the phenotype clusters come from ("all" for all scales together), or
    "none (random bags)" for naive bags."""
    patch = "Single" if "scale" in spec.options else "Multiple"
    clustering = spec.clustering if spec.bag_mode == "cluster" else "none (random bags)"
    return patch, clustering


def _p_text(p: float, is_ref: bool) -> str:
    mark = significance(p, is_ref)
    return mark if mark in ("Ref.", "n/a") else f"{p:.3g} {mark}"


def _dataset_columns(row: pd.Series | None, ds: str, reference: str) -> tuple[dict, dict]:
    """Numeric (CSV) and display (Markdown) cells of one method on one dataset."""
    if row is None:
        nums = dict.fromkeys([f"{ds}_auc", f"{ds}_ap", f"{ds}_p_auc", f"{ds}_p_ap"], np.nan)
        nums.update({f"{ds}_sig_auc": NOT_RUN, f"{ds}_sig_ap": NOT_RUN})
        shown = {f"{ds} AUC": NOT_RUN, f"{ds} AP": NOT_RUN, f"{ds} p (AUC)": "", f"{ds} p (AP)": ""}
        return nums, shown
    is_ref = row["method"] == reference
    p_auc, p_ap = float(row["p_auc_delong"]), float(row["p_ap_bootstrap"])
    nums = {
        f"{ds}_auc": float(row["auc"]),
        f"{ds}_ap": float(row["ap"]),
        f"{ds}_p_auc": p_auc,
        f"{ds}_p_ap": p_ap,
        f"{ds}_sig_auc": significance(p_auc, is_ref),
        f"{ds}_sig_ap": significance(p_ap, is_ref),
    }
    shown = {
        f"{ds} AUC": float(row["auc"]),
        f"{ds} AP": float(row["ap"]),
        f"{ds} p (AUC)": _p_text(p_auc, is_ref),
        f"{ds} p (AP)": _p_text(p_ap, is_ref),
    }
    return nums, shown


def _rows(
    labelled: Sequence[tuple[dict[str, str], str | None]],
    comparisons: Mapping[str, pd.DataFrame],
    reference: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CSV and Markdown frames: label columns, then per dataset AUC, AP and p-values."""
    csv_rows, md_rows = [], []
    for labels, method in labelled:
        first = {"method": method or NOT_RUN} if "model" in labels else {}
        nums = {**first, **labels, "method": method or NOT_RUN}
        shown = dict(nums)
        for ds, comp in comparisons.items():
            hit = comp[comp["method"] == method] if method else comp.iloc[:0]
            n, s = _dataset_columns(hit.iloc[0] if len(hit) else None, ds, reference)
            nums.update(n)
            shown.update(s)
        csv_rows.append(nums)
        md_rows.append(shown)
    return pd.DataFrame(csv_rows), pd.DataFrame(md_rows)


def _slots(slots, specs: Sequence[MethodSpec], reference: str) -> list[tuple[dict, str | None]]:
    """Fill ablation slots with the first configured csmil method matching each one."""
    by_name = {s.method: s for s in specs}
    base = by_name.get(reference)
    if base is None or base.model != "csmil":
        base = method_spec("csmil", bag_mode=base.bag_mode if base else "cluster")
    out = []
    for labels, overrides, mode in slots:
        target = MethodSpec("", "csmil", {**base.options, **overrides}, mode or base.bag_mode)
        hits = [s.method for s in specs if s.key() == target.key()]
        if reference in hits:  # the reference fills its own slot
            hits = [reference]
        if len(hits) > 1:
            log.warning("methods %s all fit %s; reporting %s", hits, labels, hits[0])
        if not hits:
            log.info("no configured method fits %s: reported as %r", labels, NOT_RUN)
        out.append((labels, hits[0] if hits else None))
    return out


def ablation_methods(specs: Sequence[MethodSpec], reference: str) -> set[str]:
    """Methods that fill a Table 2 or Table 3 slot (other than the reference)."""
    slots = _slots(TABLE2_SLOTS, specs, reference) + _slots(TABLE3_SLOTS, specs, reference)
    filled = {m for _, m in slots}
    return {m for m in filled if m and m != reference}


def table1(
    comparisons: Mapping[str, pd.DataFrame],
    specs: Sequence[MethodSpec],
    reference: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1: every method except the ablation variants of Tables 2/3, reference last.

    ``comparisons`` maps each dataset to its :func:`csmil.evaluation.compare.compare_dataset` table.
    Returns ``(csv_frame, markdown_frame)``.
    """
    skip = ablation_methods(specs, reference)
    chosen = [s for s in specs if s.method not in skip and s.method != reference]
    chosen += [s for s in specs if s.method == reference]
    labelled = []
    for s in chosen:
        patch, clustering = setting(s)
        labelled.append(
            ({"model": display_name(s), "patch_scale": patch, "clustering": clustering}, s.method)
        )
    return _rows(labelled, comparisons, reference)


def table2(comparisons, specs, reference) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2: sharing x activation of CS-MIL (``"not run"`` rows for absent variants)."""
    return _rows(_slots(TABLE2_SLOTS, specs, reference), comparisons, reference)


def table3(comparisons, specs, reference) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3: fusion x clustering of CS-MIL (``"not run"`` rows for absent variants)."""
    return _rows(_slots(TABLE3_SLOTS, specs, reference), comparisons, reference)


def dataset_counts(
    splits: pd.DataFrame | str | os.PathLike,
    patches_per_patient: Mapping[str, int],
    slides_per_patient: Mapping[str, int],
    n_test_bags: int,
) -> dict[str, float]:
    """Table 4 counts of one dataset under K-fold cross-validation.

    Every patient is tested once, so test slides/patients are the cohort's; training and
    validation patches are averaged over the K folds (fold ``f``: test ``f``, validation
    ``f+1 mod K``, training the rest, as :func:`csmil.mil.splits.fold_partition`); test bags are
    ``n_test_bags`` per patient.
    """
    if not isinstance(splits, pd.DataFrame):
        splits = read_splits(splits)
    ids = splits["patient_id"].astype(str).tolist()
    missing = [p for p in ids if p not in patches_per_patient or p not in slides_per_patient]
    if missing:
        raise KeyError(f"no patch or slide count for patients {missing[:5]} of the splits table")
    k = int(splits["fold"].max()) + 1
    train, val = [], []
    for f in range(k):
        tr, va, _ = fold_partition(splits, f, k)
        train.append(sum(patches_per_patient[p] for p in tr))
        val.append(sum(patches_per_patient[p] for p in va))
    return {
        "n_folds": k,
        "patients": len(ids),
        "slides": int(sum(slides_per_patient[p] for p in ids)),
        "patches": int(sum(patches_per_patient[p] for p in ids)),
        "training_patches_per_fold": float(np.mean(train)),
        "validation_patches_per_fold": float(np.mean(val)),
        "test_slides": int(sum(slides_per_patient[p] for p in ids)),
        "test_patients": len(ids),
        "test_bags": len(ids) * int(n_test_bags),
    }


def table4(counts: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Table 4: one row per dataset of :func:`dataset_counts`."""
    return pd.DataFrame([{"dataset": ds, **c} for ds, c in counts.items()])


def _memory(histories, benchmarks) -> tuple[float, str]:
    """Peak training memory over folds, MB, and what it measures (:data:`MEMORY_LABELS`): the
    histories' GPU figure, else their CPU figure, else the benchmarks' whole-job RSS."""
    recorded = {kind: [] for kind in MEMORY_COLUMNS}
    for path in histories:
        h = read_history(path)
        for kind, column in MEMORY_COLUMNS.items():
            if column in h.columns:
                recorded[kind].append(float(pd.to_numeric(h[column], errors="coerce").max()))
    for kind in ("cuda", "cpu"):
        if np.isfinite(recorded[kind]).any():
            return float(np.nanmax(recorded[kind])), MEMORY_LABELS[kind]
    rss = []
    for path in benchmarks:
        if os.path.exists(path):
            b = read_tsv(path)
            if "max_rss" in b.columns:
                rss.append(float(pd.to_numeric(b["max_rss"], errors="coerce").max()))
    rss = [r for r in rss if np.isfinite(r)]
    if not rss:
        log.warning("no memory record among %s", list(map(str, benchmarks)))
    return (max(rss) if rss else np.nan), RSS_LABEL


def table6(
    runs: Mapping[str, Mapping[str, Mapping[str, Sequence[str | os.PathLike]]]],
) -> pd.DataFrame:
    """Table 6: ``runs[dataset][method]`` holds lists ``models``, ``histories`` and
    ``benchmarks`` (benchmark files may be missing). Parameters are counted on the model rebuilt
    from the first checkpoint, at its own feature size and at 2048-d; memory is the peak over
    the folds; seconds per epoch the mean over folds and epochs."""
    rows = []
    for dataset, methods in runs.items():
        for method, files in methods.items():
            model, meta = load_mil_checkpoint(files["models"][0])
            at_paper = create_mil_model(meta["name"], PAPER_DIM, **meta["options"])
            peak, measure = _memory(files.get("histories", ()), files.get("benchmarks", ()))
            secs = [read_history(p)["seconds"].mean() for p in files.get("histories", ())]
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "model": display_name(MethodSpec(method, meta["name"], meta["options"])),
                    "in_dim": int(meta["in_dim"]),
                    "params": count_parameters(model),
                    "params_2048": count_parameters(at_paper),
                    "peak_memory_mb": peak,
                    "memory_measure": measure,
                    "seconds_per_epoch": float(np.mean(secs)) if secs else np.nan,
                }
            )
    return pd.DataFrame(rows)


def write_report_table(
    csv_df: pd.DataFrame,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    md_df: pd.DataFrame | None = None,
    title: str | None = None,
    footnotes: Sequence[str] = (),
    floatfmt: str = ".4f",
) -> None:
    """Write the numeric frame as CSV and the display frame (default: the same) as Markdown."""
    with atomic_path(csv_path) as tmp:
        csv_df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text(
            to_markdown(
                csv_df if md_df is None else md_df,
                floatfmt=floatfmt,
                title=title,
                footnotes=footnotes,
            )
        )


def significance_footnotes(reference: str, n_boot: int) -> list[str]:
    """The footnotes explaining the p-value columns."""
    return [
        f'p-values against the reference {reference!r} ("Ref."), on the patients both scored: '
        f"AUC by the paired DeLong test, AP by a paired class-stratified bootstrap "
        f'({n_boot} resamples). "*": p < 0.05; "N.S.": not significant.',
        "AUC and AP are over the pooled out-of-fold test patients.",
    ]


# --------------------------------------------------------------------------- workflow drivers


def write_comparison_tables(
    compare_paths: Mapping[str, str | os.PathLike],
    methods: Sequence[str],
    variants: Mapping[str, Mapping[str, Any]],
    bag_mode: str,
    reference: str,
    out: Mapping[str, str | os.PathLike],
    n_boot: int = 2000,
) -> None:
    """Tables 1-3 from each dataset's comparison table (``dataset -> compare.tsv``) into
    ``out`` keys ``table1_csv, table1_md, ... table3_md``."""
    from csmil.evaluation.compare import read_comparison

    comps = {ds: read_comparison(p) for ds, p in compare_paths.items()}
    specs = [method_spec(m, variants, bag_mode) for m in methods]
    notes = significance_footnotes(reference, n_boot)
    hipt = [HIPT_NOTE] if any(s.model == "hipt" for s in specs) else []
    titles = {
        "table1": "Table 1: classification, every method against the reference",
        "table2": "Table 2: CS-MIL embedding sharing x scorer activation",
        "table3": "Table 3: CS-MIL fusion x bag clustering",
    }
    builders = {"table1": table1, "table2": table2, "table3": table3}
    for name, build in builders.items():
        csv_df, md_df = build(comps, specs, reference)
        extra = (
            hipt if name == "table1" else [f'"{NOT_RUN}": no configured method has this setting.']
        )
        write_report_table(csv_df, out[f"{name}_csv"], out[f"{name}_md"], md_df,
                           title=titles[name], footnotes=[*notes, *extra])  # fmt: skip
        log.info("%s:\n%s", titles[name], md_df.to_string(index=False))


def write_table4(
    datasets: Mapping[str, Mapping[str, Any]],
    n_test_bags: int,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
) -> pd.DataFrame:
    """Table 4 from ``datasets[ds]`` = ``{"splits": splits.tsv, "predictions": [fold
    predictions.tsv of one method], "slides": {patient: number of slides}}``; patch counts come
    from the predictions' ``n_patches``."""
    from csmil.evaluation.metrics import pool_predictions

    counts = {}
    for ds, files in datasets.items():
        preds = pool_predictions(files["predictions"])
        patches = dict(zip(preds["patient_id"], preds["n_patches"].astype(int), strict=True))
        counts[ds] = dataset_counts(files["splits"], patches, files["slides"], n_test_bags)
    df = table4(counts)
    write_report_table(df, csv_path, md_path, title="Table 4: cohorts and cross-validation",
                       floatfmt=".1f", footnotes=[
                           "Every patient is a test patient once (K-fold cross-validation); "
                           "training and validation patches are means over the K folds; "
                           f"{n_test_bags} test bags per patient."])  # fmt: skip
    return df


def write_table6(runs, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> pd.DataFrame:
    """Table 6 (see :func:`table6`) as CSV and Markdown."""
    df = table6(runs)
    measures = sorted(set(df["memory_measure"]))
    md = df.rename(columns={"peak_memory_mb": measures[0]}) if len(measures) == 1 else df
    if len(measures) == 1:
        md = md.drop(columns="memory_measure")
    write_report_table(df, csv_path, md_path, md, title="Table 6: model complexity",
                       floatfmt=".2f", footnotes=[
                           "params: at the run's feature size; params_2048: at 2048-d features "
                           "(the paper's). Memory: the peak over the folds of what its label says.",
                           *([HIPT_NOTE] if (df["model"] == "HIPT").any() else [])])  # fmt: skip
    return df
