"""Per-slide quality-control rows, from what tiling recorded in the patch store.

One row per slide, for a per-dataset QC table (:data:`QC_COLUMNS`): its status (``ok``;
``empty`` when no tile had tissue; ``failed`` when tiling raised, with the reason;
``excluded`` when the sample sheet's ``exclude`` column leaves it out; ``pending`` when it has
not been tiled yet), tiles,
tissue fraction, level-0 MPP and where it came from (:data:`csmil.slides.reader.MPP_SOURCES`),
and per scale the pyramid level read, the µm/px of the stored pixels and whether they were
upsampled. Stores written before tiling recorded ``mpp_source`` give ``"unknown"`` there.

This module owns the QC table (:func:`qc_table`, :func:`write_qc_table`, :func:`read_qc_table`)
and the failure record a failed tiling job leaves beside where its patch store would be
(:func:`record_failure`): Snakemake deletes a failed job's outputs, the record stays, so the
table can say why a slide failed after a ``--keep-going`` run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from csmil import SCALES
from csmil.io import atomic_path, read_tsv, write_tsv
from csmil.slides.patchstore import open_patch_store
from csmil.slides.tiling import is_upsampled

#: Statuses of a QC row.
QC_STATUSES = ("ok", "empty", "failed", "excluded", "pending")
#: Columns of a QC row, in order.
QC_COLUMNS = (
    "slide_id",
    "status",
    "reason",
    "tiles",
    "tissue_fraction",
    "mpp",
    "mpp_source",
    *(f"{key}_{s}" for s in SCALES for key in ("level", "mpp", "upsampled")),
)


def slide_qc(store_path: str | os.PathLike) -> dict[str, Any]:
    """The QC row (:data:`QC_COLUMNS`) of one slide from its patch store.

    ``tissue_fraction`` is the fraction (0-1) of the slide the tissue mask covers; ``mpp`` is
    level-0 µm/px; ``mpp_{scale}`` is the µm/px of the stored pixels, ``level_{scale}`` the
    pyramid level read, ``upsampled_{scale}`` whether the stored pixels are finer than the
    slide's. ``status`` is ``"empty"`` when the store holds no tiles, with the reason.
    """
    with open_patch_store(store_path) as store:
        attrs, n = store.attrs, store.n
    mpp = float(attrs["mpp"])
    row: dict[str, Any] = {
        "slide_id": str(attrs["slide_id"]),
        "status": "ok" if n else "empty",
        "reason": "" if n else _empty_reason(attrs),
        "tiles": n,
        "tissue_fraction": float(attrs["tissue_fraction"]),
        "mpp": mpp,
        "mpp_source": str(attrs.get("mpp_source", "unknown")),
    }
    for s in SCALES:
        plan = attrs["scales"][s]
        read_mpp = plan.get("read_mpp", mpp * plan["level_downsample"])
        row[f"level_{s}"] = int(plan["level"])
        row[f"mpp_{s}"] = float(plan["out_mpp"])
        row[f"upsampled_{s}"] = bool(plan.get("upsampled", is_upsampled(read_mpp, plan["out_mpp"])))
    return row


def failed_qc_row(slide_id: str, reason: str) -> dict[str, Any]:
    """The QC row of a slide whose tiling failed: status ``"failed"``, ``reason`` (e.g. the
    ``problem`` of a :class:`csmil.slides.errors.SlideError`); every value column None."""
    return _row_without_store(slide_id, "failed", reason)


def excluded_qc_row(slide_id: str, reason: str) -> dict[str, Any]:
    """The QC row of a slide the sample sheet leaves out (its ``exclude`` text as reason)."""
    return _row_without_store(slide_id, "excluded", reason)


def _row_without_store(slide_id: str, status: str, reason: str) -> dict[str, Any]:
    if not str(reason).strip():
        raise ValueError(f"a {status} QC row needs a reason; slide {slide_id!r} got {reason!r}")
    row: dict[str, Any] = dict.fromkeys(QC_COLUMNS)
    row.update(slide_id=str(slide_id), status=status, reason=str(reason))
    return row


def failure_record_path(store_path: str | os.PathLike) -> Path:
    """Where a failed tiling job records why: ``<store>.failed.txt`` beside the store."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".failed.txt")


def record_failure(store_path: str | os.PathLike, reason: str) -> Path:
    """Write why tiling the slide of ``store_path`` failed (one line); returns the record."""
    path = failure_record_path(store_path)
    with atomic_path(path) as tmp:
        tmp.write_text(" ".join(str(reason).split()) + "\n")
    return path


def clear_failure(store_path: str | os.PathLike) -> None:
    """Remove an earlier failure record of a slide that has now been tiled."""
    failure_record_path(store_path).unlink(missing_ok=True)


def qc_table(
    stores: Mapping[str, str | os.PathLike], excluded: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The QC table of a dataset: one row per slide of ``stores`` (slide id -> patch store
    path), in that order, then one per ``excluded`` slide (slide id -> reason).

    A slide whose store exists gets :func:`slide_qc`; one whose tiling failed (a failure
    record and no store) gets status ``failed`` with the recorded reason; one with neither
    gets ``pending``.
    """
    rows = []
    for slide, path in stores.items():
        record = failure_record_path(path)
        if Path(path).exists():
            row = slide_qc(path)
            if row["slide_id"] != slide:
                raise ValueError(
                    f"{path} holds slide {row['slide_id']!r}, not {slide!r}; re-tile it"
                )
        elif record.exists():
            row = failed_qc_row(slide, record.read_text().strip() or "tiling failed")
        else:
            row = dict.fromkeys(QC_COLUMNS)
            row.update(slide_id=slide, status="pending", reason="not tiled yet")
        rows.append(row)
    rows += [excluded_qc_row(s, reason) for s, reason in (excluded or {}).items()]
    return pd.DataFrame(rows, columns=list(QC_COLUMNS))


def write_qc_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a QC table (TSV, :data:`QC_COLUMNS`) atomically."""
    missing = [c for c in QC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"a QC table needs columns {missing}")
    write_tsv(df[list(QC_COLUMNS)], path)


def read_qc_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a QC table written by :func:`write_qc_table`, checking its columns."""
    df = read_tsv(path, dtype={"slide_id": str, "status": str, "reason": str})
    missing = [c for c in QC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a slide QC table; missing columns {missing}")
    df["reason"] = df["reason"].fillna("")
    return df


def _empty_reason(attrs: dict[str, Any]) -> str:
    return (
        f"no tissue tiles: tissue covers {100 * float(attrs['tissue_fraction']):.1f}% of the "
        f"slide, tile threshold {attrs.get('tissue_threshold', 'unknown')}"
    )
