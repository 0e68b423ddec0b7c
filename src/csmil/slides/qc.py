"""Per-slide quality-control rows, from what tiling recorded in the patch store.

One row per slide, for a per-dataset QC table (:data:`QC_COLUMNS`): its status (``ok``;
``empty`` when no tile had tissue; ``failed`` when tiling raised, with the reason), tiles,
tissue fraction, level-0 MPP and where it came from (:data:`csmil.slides.reader.MPP_SOURCES`),
and per scale the pyramid level read, the µm/px of the stored pixels and whether they were
upsampled. Stores written before tiling recorded ``mpp_source`` give ``"unknown"`` there.
"""

from __future__ import annotations

import os
from typing import Any

from csmil import SCALES
from csmil.slides.patchstore import open_patch_store
from csmil.slides.tiling import is_upsampled

#: Statuses of a QC row.
QC_STATUSES = ("ok", "empty", "failed")
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
    if not str(reason).strip():
        raise ValueError(f"a failed QC row needs a reason; slide {slide_id!r} got {reason!r}")
    row: dict[str, Any] = dict.fromkeys(QC_COLUMNS)
    row.update(slide_id=str(slide_id), status="failed", reason=str(reason))
    return row


def _empty_reason(attrs: dict[str, Any]) -> str:
    return (
        f"no tissue tiles: tissue covers {100 * float(attrs['tissue_fraction']):.1f}% of the "
        f"slide, tile threshold {attrs.get('tissue_threshold', 'unknown')}"
    )
