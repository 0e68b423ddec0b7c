"""Cross-scale attention maps on the slide thumbnail, and how well attention localises anomalies.

Maps (paper Fig. 4/6; the authors' rendering, reference notes §5): every patch's attention, already
averaged over the test bags it was drawn into (``attention.tsv``, read through
:func:`csmil.mil.results.load_attention`), is painted over the patch's footprint on a canvas at
thumbnail resolution; where footprints overlap the values are averaged (a sum canvas divided by a
count canvas). The footprint of a panel is a field of view centred on the 20x tile:

* ``"20x"``: the 20x tile itself (``patch_size`` level-0 px, from the patch store);
* ``"10x"``/``"5x"``: the 2x / 4x wider field of that scale.

Defaults (:func:`default_footprints`): as the authors' code on the toy cohorts, the 20x tile for
every panel on ``micro`` and the 5x field for every panel on ``macro``; otherwise the 20x tile
for the instance and 20x panels and each scale's own field for the 10x and 5x panels. The map
is then smoothed (Gaussian, ``sigma_um``, normalised by the smoothed coverage so that unscored
areas do not darken it) and shown over the thumbnail in red (high) to green (low), as the
authors'. The instance panel is min-max normalised per slide (as the authors'); the three scale
panels share one colour range per slide so that scales can be compared.

Localisation (toy cohorts): a patch is *positive* when at least ``min_fraction`` of its 20x tile
lies in the ground-truth mask. On the slides whose mask is not empty, the AUROC of the patches'
attention against that label measures how well attention finds the anomalies: the instance
attention, and for models with cross-scale attention also each scale's weight (the panels of
the maps; paper Fig. 6 reads the anomaly's scale off them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from csmil import SCALE_FIELD_PX_20X, SCALES
from csmil.mil.results import ATTENTION_VALUES, SCALE_ATTENTION, load_attention, read_predictions
from csmil.slides.patchstore import open_patch_store

log = logging.getLogger(__name__)

PANELS: tuple[str, ...] = ("instance", *SCALES)
LOCALISATION_COLUMNS = (
    "dataset",
    "method",
    "attention",
    "auroc",
    "n_slides",
    "n_patches",
    "n_positive",
)
#: Attention columns of ``attention.tsv`` that localisation is measured for, when present.
LOCALISATION_ATTENTION = ATTENTION_VALUES


def default_footprints(cohort: str | None) -> dict[str, str]:
    """Footprint (a scale's field) of each panel: see the module docstring."""
    if cohort == "micro":
        return dict.fromkeys(PANELS, "20x")
    if cohort == "macro":
        return dict.fromkeys(PANELS, "5x")
    return {"instance": "20x", **{s: s for s in SCALES}}


@dataclass
class PatchGeometry:
    """Where a slide's patches are: ``coords`` (N, 2) level-0 top-left of the 20x tiles,
    ``tile_px`` the 20x tile side in level-0 px and ``mpp`` the level-0 µm per pixel."""

    coords: np.ndarray
    tile_px: float
    mpp: float


def patch_geometry(patch_store: str | os.PathLike) -> PatchGeometry:
    """Read the tile grid of a slide from its patch store."""
    with open_patch_store(patch_store) as store:
        attrs = store.attrs
        if "patch_size" not in attrs:
            raise ValueError(f"{patch_store}: no patch_size attribute; re-run the tile step")
        return PatchGeometry(store.coords, float(attrs["patch_size"]), float(attrs.get("mpp", 0.5)))


def footprint_boxes(geom: PatchGeometry, field: str) -> np.ndarray:
    """Level-0 boxes (N, 4) ``x0, y0, x1, y1`` of the ``field`` of view centred on each tile."""
    if field not in SCALE_FIELD_PX_20X:
        raise ValueError(f"footprint must be one of {SCALES}; received {field!r}")
    side = geom.tile_px * SCALE_FIELD_PX_20X[field] / SCALE_FIELD_PX_20X["20x"]
    centre = geom.coords.astype(float) + geom.tile_px / 2.0
    return np.concatenate([centre - side / 2.0, centre + side / 2.0], axis=1)


def paint(
    values: np.ndarray, boxes: np.ndarray, shape: tuple[int, int], downsample: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count canvases (h, w) of ``values`` (N,) painted over level-0 ``boxes`` (N, 4).

    A canvas pixel ``(i, j)`` covers level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``; a box
    paints the pixels whose centre it contains (at least one pixel). Exact, via 2-D prefix sums.
    """
    h, w = shape
    px = boxes / float(downsample)
    x0 = np.clip(np.round(px[:, 0]).astype(int), 0, w)
    y0 = np.clip(np.round(px[:, 1]).astype(int), 0, h)
    x1 = np.clip(np.maximum(np.round(px[:, 2]).astype(int), x0 + 1), 0, w)
    y1 = np.clip(np.maximum(np.round(px[:, 3]).astype(int), y0 + 1), 0, h)
    out = []
    for weights in (np.asarray(values, dtype=float), np.ones(len(boxes))):
        diff = np.zeros((h + 1, w + 1))
        np.add.at(diff, (y0, x0), weights)
        np.add.at(diff, (y0, x1), -weights)
        np.add.at(diff, (y1, x0), -weights)
        np.add.at(diff, (y1, x1), weights)
        out.append(diff.cumsum(0).cumsum(1)[:h, :w])
    return out[0], np.round(out[1])


def attention_canvas(
    values: np.ndarray,
    boxes: np.ndarray,
    shape: tuple[int, int],
    downsample: float,
    sigma_px: float = 0.0,
) -> np.ndarray:
    """Mean of overlapping footprints, smoothed over the covered area; NaN where unscored.

    ``sigma_px`` is the Gaussian's standard deviation in canvas pixels (0: no smoothing).
    """
    total, count = paint(values, boxes, shape, downsample)
    covered = count > 0
    if sigma_px > 0:
        mean = np.where(covered, total / np.maximum(count, 1), 0.0)
        num = gaussian_filter(mean, sigma_px, mode="constant")
        den = gaussian_filter(covered.astype(float), sigma_px, mode="constant")
        smooth = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)
        return np.where(covered, smooth, np.nan)
    return np.where(covered, total / np.maximum(count, 1), np.nan)


def slide_maps(
    attention: pd.DataFrame,
    geom: PatchGeometry,
    shape: tuple[int, int],
    downsample: float,
    footprints: Mapping[str, str] | None = None,
    sigma_um: float = 20.0,
) -> dict[str, np.ndarray]:
    """Canvases (h, w) of one slide: ``"instance"`` and every scale with attention values.

    ``attention`` holds the slide's rows (``patch_index`` into ``geom.coords``). Panels whose
    column is missing or all NaN (models without per-scale attention) are left out.
    """
    footprints = {**default_footprints(None), **dict(footprints or {})}
    idx = attention["patch_index"].to_numpy(dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(geom.coords)):
        raise ValueError(
            f"attention names patch_index up to {idx.max()} but the patch store has "
            f"{len(geom.coords)} patches; are the attention table and patch store of one run?"
        )
    sub = PatchGeometry(geom.coords[idx], geom.tile_px, geom.mpp)
    sigma_px = sigma_um / geom.mpp / downsample
    maps = {}
    for panel in PANELS:
        column = "instance" if panel == "instance" else SCALE_ATTENTION[panel]
        if column not in attention.columns or attention[column].isna().all():
            continue
        boxes = footprint_boxes(sub, footprints[panel])
        maps[panel] = attention_canvas(
            attention[column].to_numpy(dtype=float), boxes, shape, downsample, sigma_px
        )
    return maps


def tile_mask_fraction(geom: PatchGeometry, mask: np.ndarray, mask_downsample: float) -> np.ndarray:
    """Fraction (N,) of each 20x tile inside a boolean ``mask`` at ``mask_downsample``."""
    boxes = footprint_boxes(geom, "20x")
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = mask.astype(float).cumsum(0).cumsum(1)
    px = boxes / float(mask_downsample)
    x0 = np.clip(np.round(px[:, 0]).astype(int), 0, w - 1)
    y0 = np.clip(np.round(px[:, 1]).astype(int), 0, h - 1)
    x1 = np.clip(np.maximum(np.round(px[:, 2]).astype(int), x0 + 1), 1, w)
    y1 = np.clip(np.maximum(np.round(px[:, 3]).astype(int), y0 + 1), 1, h)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return inside / ((x1 - x0) * (y1 - y0))


def localisation_auroc(
    slides: Sequence[tuple[pd.DataFrame, PatchGeometry, np.ndarray, float]],
    min_fraction: float = 0.5,
    column: str = "instance",
) -> dict[str, float]:
    """AUROC of one attention ``column`` (default the instance attention) for positive
    patches, pooled over slides.

    ``slides`` holds per slide its attention rows, geometry, mask (bool) and mask downsample.
    Slides whose mask is empty are skipped. Returns ``auroc`` (NaN when the pooled patches
    hold one class), ``n_slides``, ``n_patches``, ``n_positive``.
    """
    from sklearn.metrics import roc_auc_score

    labels, scores, used = [], [], 0
    for att, geom, mask, mask_ds in slides:
        if not mask.any() or att.empty:
            continue
        idx = att["patch_index"].to_numpy(dtype=np.int64)
        sub = PatchGeometry(geom.coords[idx], geom.tile_px, geom.mpp)
        labels.append(tile_mask_fraction(sub, mask, mask_ds) >= min_fraction)
        scores.append(att[column].to_numpy(dtype=float))
        used += 1
    y = np.concatenate(labels) if labels else np.zeros(0, bool)
    s = np.concatenate(scores) if scores else np.zeros(0)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else np.nan
    if np.isnan(auroc):
        log.warning("localisation AUROC of %s undefined: %d patches, %d positive", column, len(y),
                    y.sum())  # fmt: skip
    return {"auroc": auroc, "n_slides": used, "n_patches": len(y), "n_positive": int(y.sum())}


# --------------------------------------------------------------------------- rendering


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def plot_slide_maps(
    thumbnail: np.ndarray,
    maps: Mapping[str, np.ndarray],
    out_png: str | os.PathLike,
    mask: np.ndarray | None = None,
    title: str | None = None,
    alpha: float = 0.55,
) -> None:
    """Write one PNG: the thumbnail (mask outlined), then one panel per map in :data:`PANELS`
    order, each over the thumbnail in red (high) to green (low) with its colour bar."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from csmil.io import atomic_path

    cmap = colormaps["RdYlGn_r"]
    panels = [p for p in PANELS if p in maps]
    scale_vals = [maps[p] for p in panels if p != "instance"]
    finite = [v[np.isfinite(v)] for v in scale_vals if np.isfinite(v).any()]
    lo = float(min(f.min() for f in finite)) if finite else 0.0
    hi = float(max(f.max() for f in finite)) if finite else 1.0
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    edge = _resize_mask(mask, thumbnail.shape[:2]) if mask is not None and mask.any() else None
    fig = Figure(figsize=(3.6 * (len(panels) + 1), 3.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    for ax, panel in zip(axes, ["slide", *panels], strict=True):
        ax.imshow(thumbnail)
        ax.set_axis_off()
        if panel == "slide":
            ax.set_title("slide" + (" (positive mask outlined)" if edge is not None else ""))
        else:
            values = maps[panel]
            if panel == "instance":
                f = values[np.isfinite(values)]
                vmin, vmax = (float(f.min()), float(f.max())) if f.size else (0.0, 1.0)
                if vmax - vmin < 1e-12:
                    vmax = vmin + 1e-12
                label = "instance attention (min-max)"
            else:
                vmin, vmax = lo, hi
                label = f"{panel} scale attention"
            norm = Normalize(vmin, vmax)
            rgba = cmap(norm(np.nan_to_num(values, nan=vmin)))
            rgba[..., 3] = np.where(np.isfinite(values), alpha, 0.0)
            ax.imshow(rgba)
            ax.set_title(label)
            bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=7)
        if edge is not None:
            ax.contour(edge.astype(float), levels=[0.5], colors="blue", linewidths=1.0)
    if title:
        fig.suptitle(title)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


#: Width (px) and JPEG quality of the previews the HTML report embeds: a dataset's full-size
#: PNGs are about 0.6 MB each, which across hundreds of slides makes a report (base64, one file)
#: too large for a browser; the previews are about a tenth of that.
PREVIEW_WIDTH = 1200
PREVIEW_QUALITY = 85


def write_preview(
    png: str | os.PathLike,
    out_jpg: str | os.PathLike,
    width: int = PREVIEW_WIDTH,
    quality: int = PREVIEW_QUALITY,
) -> None:
    """Write a JPEG preview of the map ``png``, at most ``width`` px wide (never enlarged)."""
    from PIL import Image

    from csmil.io import atomic_path

    with Image.open(png) as img:
        rgb = img.convert("RGB")
    if rgb.width > width:
        height = max(1, round(rgb.height * width / rgb.width))
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    with atomic_path(out_jpg) as tmp:
        rgb.save(tmp, format="JPEG", quality=quality)


def render_slide(
    slide_path: str | os.PathLike,
    attention: pd.DataFrame,
    patch_store: str | os.PathLike,
    out_png: str | os.PathLike,
    mask_path: str | os.PathLike | None = None,
    cohort: str | None = None,
    max_side: int = 512,
    sigma_um: float = 20.0,
    title: str | None = None,
) -> dict[str, np.ndarray]:
    """Render the attention maps of one slide (its ``attention`` rows) to ``out_png``.

    Returns the canvases (thumbnail resolution, NaN where unscored)."""
    from csmil.slides.reader import open_slide, slide_thumbnail
    from csmil.toy.generator import read_toy_mask

    slide = open_slide(slide_path)
    try:
        thumb, ds = slide_thumbnail(slide, max_side=max_side)
    finally:
        slide.close()
    geom = patch_geometry(patch_store)
    maps = slide_maps(attention, geom, thumb.shape[:2], ds, default_footprints(cohort), sigma_um)
    mask = read_toy_mask(mask_path)[0] if mask_path else None
    plot_slide_maps(thumb, maps, out_png, mask=mask, title=title)
    return maps


def render_dataset_maps(
    attention_paths: Sequence[str | os.PathLike],
    slides: Mapping[str, Mapping[str, str]],
    out_dir: str | os.PathLike,
    prediction_paths: Sequence[str | os.PathLike] = (),
    cohort: str | None = None,
    **kwargs,
) -> list[str]:
    """One PNG per slide of ``slides`` (slide id -> ``slide``, ``patches`` and optional
    ``mask`` paths) into ``out_dir``, from one method's fold attention tables, and beside it
    the JPEG preview the report embeds (:func:`write_preview`). Slides without attention rows
    get a map with the thumbnail only. Returns the written PNG paths."""
    from pathlib import Path

    from csmil.runtime import progress

    att = load_attention(attention_paths)
    preds = pd.concat([read_predictions(p) for p in prediction_paths] or [pd.DataFrame()])
    info = {r.patient_id: r for r in preds.itertuples()} if len(preds) else {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = dict(tuple(att.groupby("slide_id")))
    for slide_id in progress(sorted(slides), desc="attention maps", total=len(slides)):
        paths = slides[slide_id]
        rows = groups.get(slide_id, att.iloc[:0])
        title = slide_id
        pid = rows["patient_id"].iloc[0] if len(rows) else None
        if pid in info:
            title += f"  (patient {pid}, label {info[pid].label}, p = {info[pid].prob:.3f})"
        out = out_dir / f"{slide_id}.png"
        render_slide(paths["slide"], rows, paths["patches"], out, paths.get("mask"), cohort,
                     title=title, **kwargs)  # fmt: skip
        write_preview(out, out.with_suffix(".jpg"))
        written.append(str(out))
    log.info("wrote %d attention maps to %s", len(written), out_dir)
    return written


def attention_localisation(
    runs: Sequence[Mapping[str, object]],
    out_csv: str | os.PathLike | None = None,
    min_fraction: float = 0.5,
) -> pd.DataFrame:
    """Localisation AUROC per run and attention; each run is ``{"dataset", "method",
    "attention": [fold tables], "slides": {slide id: {"patches", "mask"}}}``. One row per run
    for the instance attention and one per scale weight (``scale_*`` of
    :data:`LOCALISATION_ATTENTION`) the run's tables hold with more than one value (fixed 1/3
    weights, e.g., are left out); columns
    :data:`LOCALISATION_COLUMNS`; written to ``out_csv`` when given."""
    from csmil.io import atomic_path
    from csmil.toy.generator import read_toy_mask

    geoms: dict[str, PatchGeometry] = {}
    masks: dict[str, tuple[np.ndarray, float]] = {}
    rows = []
    for run in runs:
        att = load_attention(run["attention"])
        groups = dict(tuple(att.groupby("slide_id")))
        per_slide = []
        for slide_id, paths in run["slides"].items():
            if slide_id not in groups:
                continue
            if paths["patches"] not in geoms:
                geoms[paths["patches"]] = patch_geometry(paths["patches"])
            if paths["mask"] not in masks:
                masks[paths["mask"]] = read_toy_mask(paths["mask"])
            mask, mask_ds = masks[paths["mask"]]
            per_slide.append((groups[slide_id], geoms[paths["patches"]], mask, mask_ds))
        for column in LOCALISATION_ATTENTION:
            if column != "instance":  # skip scale weights a model lacks or fixes (1/3 each)
                values = att[column] if column in att.columns else pd.Series(dtype=float)
                if values.isna().all() or values.max() - values.min() < 1e-6:
                    continue
            result = localisation_auroc(per_slide, min_fraction, column)
            rows.append(
                {"dataset": run["dataset"], "method": run["method"], "attention": column, **result}
            )
            log.info("%s %s %s: localisation AUROC %.4f over %d patches (%d positive) of %d "
                     "slides", run["dataset"], run["method"], column, result["auroc"],
                     result["n_patches"], result["n_positive"], result["n_slides"])  # fmt: skip
    df = pd.DataFrame(rows, columns=list(LOCALISATION_COLUMNS))
    if out_csv is not None:
        with atomic_path(out_csv) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    return df
