"""Toy cohorts (paper §5.3): generated whole-slide images with scale-specific anomalies.

Two cohorts, each a set of real pyramidal TIFFs in Aperio SVS layout (0.5 µm/px, AppMag 20,
levels at downsample 1/4/16) over an H&E-like background with glass around the tissue:

* ``micro`` (Micro-anomaly): positive slides carry small green-tinted crosses (arms 4 px thick,
  about 32 px across and 48 px apart, turned off the pixel axes; green is a hue H&E never
  makes) inside four to seven disc-shaped positive regions (radius 160-220 µm, together about
  30% of the tissue). A cross is visible in a 20x patch (a 256 px field area-resized to
  64 px) and averages away in the 10x and 5x patches (512 and 1024 px fields), because a
  magenta rim along each arm takes back exactly the colour its core adds. Negative slides
  have the same regions, left plain.
* ``macro`` (Macro-anomaly): rectangular frames, a dark band 60 px wide around plain tissue.
  Every frame of a positive slide is oblong (sides 2:1, about 480 x 970 px), every frame of a
  negative slide square (725-775 px); both have the same perimeter, so slides of either label
  hold the same length of band and the same number of right-angled corners, and the inside
  is tissue like the outside (a pale inside would make the squares' larger inside a count of
  pale 20x tiles). The oblong's inside is wider than the diagonal of a 256 px field, so a 20x
  field shows one straight piece of band or one corner, alike for both shapes; a 5x field
  (1024 px) holds most or all of a frame and shows its aspect (and, for an oblong, two long
  sides about 480 px apart). Frame centres are not aligned to the tile grid: with aligned
  centres the band of a frame of a given size crosses its tiles at the same offsets, which a
  20x model reads. This departs from the paper's ellipses and circles, whose bands differ in
  curvature within a 20x field (an ellipse's ends bend more sharply than any circle of the
  same area). See tests/test_toy.py and tests/test_fidelity.py for what each scale shows.

Beside each slide a PNG mask marks the positive regions (uint8 0/255, level-0 size divided by
the mask downsample, which is stored in the PNG text chunk ``csmil_mask_downsample``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from csmil.io import atomic_path
from csmil.toy.patterns import (
    CrossStyle,
    RingStyle,
    disc_mask,
    draw_crosses,
    draw_ring,
    he_tissue,
    jittered_grid,
    tissue_alpha,
)
from csmil.toy.svs import write_aperio_svs

log = logging.getLogger(__name__)

COHORTS: tuple[str, ...] = ("micro", "macro")
MASK_KEY = "csmil_mask_downsample"
#: Side of the largest (5x) field in level-0 px; objects keep this much room to the border.
FIELD_5X_PX = 1024
#: Level-0 side of a 20x tile.
TILE_PX = 256


@dataclass
class ToyCanvas:
    """A rendered toy slide: ``rgb`` (H, W, 3) uint8 at level 0, ``positive`` (H, W) bool
    ground truth at level 0, and ``info`` (counts, fractions and the objects drawn)."""

    rgb: np.ndarray
    positive: np.ndarray
    info: dict = field(default_factory=dict)


def _check_args(cohort: str, label: int, size_px: int) -> None:
    if cohort not in COHORTS:
        raise ValueError(f"cohort must be one of {COHORTS}, got {cohort!r}")
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if size_px < 1536 or size_px % 16:
        raise ValueError(
            f"size_px must be a multiple of 16 and at least 1536 (room for a 1024 px 5x field "
            f"with objects inside), got {size_px}"
        )


def _place_discs(
    rng: np.random.Generator,
    size: int,
    radii: np.ndarray,
    margin: float,
    gap: float,
    tries: int = 400,
) -> list[tuple[float, float, float]]:
    """Non-overlapping discs ``(cy, cx, r)``, centres at least ``margin`` from the border and
    discs ``gap`` apart.
    Rejection sampling: discs that find no room after ``tries`` draws are dropped."""
    placed: list[tuple[float, float, float]] = []
    for r in radii:
        for _ in range(tries):
            cy, cx = rng.uniform(margin, size - margin, 2)
            if all(np.hypot(cy - py, cx - px) >= r + pr + gap for py, px, pr in placed):
                placed.append((float(cy), float(cx), float(r)))
                break
    return placed


def render_toy_canvas(
    cohort: str,
    label: int,
    seed: int,
    size_px: int = 3072,
    cross: CrossStyle | None = None,
    ring: RingStyle | None = None,
) -> ToyCanvas:
    """Render one toy slide in memory (no files); same arguments → identical pixels.

    Objects (micro regions, macro rings) are placed first, identically for both labels, and the
    tissue outline is made to contain them; only then does ``label`` decide what is drawn: crosses
    or nothing in the micro regions, oblong or square macro frames. So a negative and a
    positive slide with one seed are twins that differ only by the anomaly.

    ``info`` holds ``cohort, label, seed, size_px, tissue_fraction, positive_fraction`` and, for
    micro, ``n_regions, n_crosses`` and ``regions`` (centre ``cy, cx`` and ``radius`` in level-0
    px; listed on negative slides too, where they stay plain); for macro, ``n_oblongs,
    n_squares`` and ``rings`` (``cy, cx``, outer half-sides ``a >= b``, angle ``theta`` of side
    ``a``, ``shape``).
    """
    _check_args(cohort, label, size_px)
    cross = cross or CrossStyle()
    ring = ring or RingStyle()
    rng = np.random.default_rng(seed)
    coverage = float(rng.uniform(0.6, 0.8))
    margin = FIELD_5X_PX / 2
    more = max(1.0, (size_px / 3072) ** 2)  # larger slides get proportionally more objects
    if cohort == "micro":
        radii = rng.uniform(320.0, 440.0, int(round(rng.integers(4, 8) * more)))
        objects = _place_discs(rng, size_px, radii, margin, gap=TILE_PX)
        anchors = [(cy, cx, r + 64.0) for cy, cx, r in objects]
    else:
        # A 5x field centred on a frame must show no part of another frame. Centres are not
        # aligned to the 20x tile grid: with aligned centres the band of a frame of a given
        # size falls at the same offsets inside its tiles, which tells the shapes apart at 20x.
        extent = ring.max_extent
        n_rings = int(round(rng.integers(3, 6) * more))
        objects = _place_discs(
            rng,
            size_px,
            np.full(n_rings, extent),
            max(margin, extent + 16.0),  # whole frames on the slide
            gap=FIELD_5X_PX / np.sqrt(2) - extent + 16.0,
        )
        anchors = [(cy, cx, r + 48.0) for cy, cx, r in objects]
    alpha = tissue_alpha(rng, size_px, coverage, anchors)
    canvas = he_tissue(rng, alpha)
    positive = np.zeros((size_px, size_px), dtype=bool)
    info: dict = {
        "cohort": cohort,
        "label": int(label),
        "seed": int(seed),
        "size_px": int(size_px),
        "tissue_fraction": float((alpha > 0.5).mean()),
    }
    if cohort == "micro":
        info["regions"] = [{"cy": cy, "cx": cx, "radius": r} for cy, cx, r in objects]
        n_crosses = 0
        if label == 1:
            for cy, cx, r in objects:
                centres = jittered_grid(rng, cy, cx, r, cross.spacing, margin=cross.half + 2)
                thetas = np.deg2rad(rng.uniform(*cross.angle, len(centres)))
                draw_crosses(canvas, centres, thetas, cross)
                n_crosses += len(centres)
            positive = disc_mask(positive.shape, objects) & (alpha > 0.5)
        info.update(n_regions=len(objects), n_crosses=n_crosses)
    else:
        is_oblong = np.full(len(objects), label == 1)
        sides = rng.uniform(ring.side[0], ring.side[1], len(objects))
        thetas = rng.uniform(0.0, np.pi, len(objects))
        rings = []
        for (cy, cx, _), side, oblong, theta in zip(objects, sides, is_oblong, thetas, strict=True):
            a, b = ring.half_sizes(float(side), bool(oblong))
            sy, sx, filled = draw_ring(canvas, cy, cx, a, b, float(theta), ring.thickness)
            if oblong:
                positive[sy, sx] |= filled > 0.5
            rings.append(
                {
                    "cy": cy,
                    "cx": cx,
                    "a": a,
                    "b": b,
                    "theta": float(theta),
                    "shape": "oblong" if oblong else "square",
                }
            )
        info["rings"] = rings
        info.update(n_oblongs=int(is_oblong.sum()), n_squares=int((~is_oblong).sum()))
    info["positive_fraction"] = float(positive.mean())
    np.clip(canvas, 0.0, 255.0, out=canvas)
    canvas += 0.5  # round half up on the conversion below
    rgb = np.ascontiguousarray(canvas.astype(np.uint8).transpose(1, 2, 0))
    return ToyCanvas(rgb=rgb, positive=positive, info=info)


def write_toy_mask(path: str | os.PathLike, positive: np.ndarray, downsample: int = 4) -> None:
    """Write a level-0 boolean mask (H, W) as a PNG at ``1/downsample`` resolution (uint8 0/255;
    a mask pixel is positive when at least half of its block is)."""
    h, w = positive.shape[0] // downsample, positive.shape[1] // downsample
    blocks = positive[: h * downsample, : w * downsample].reshape(h, downsample, w, downsample)
    small = (blocks.mean(axis=(1, 3)) >= 0.5).astype(np.uint8) * 255
    meta = PngImagePlugin.PngInfo()
    meta.add_text(MASK_KEY, str(int(downsample)))
    with atomic_path(path) as tmp:
        Image.fromarray(small).save(tmp, format="PNG", pnginfo=meta)


def read_toy_mask(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a toy mask: ``(mask (h, w) bool, downsample)``; mask pixel (i, j) covers level-0
    pixels ``[i*ds, (i+1)*ds) x [j*ds, (j+1)*ds)``."""
    with Image.open(path) as img:
        if MASK_KEY not in getattr(img, "text", {}):
            raise ValueError(f"{path}: not a toy mask (PNG text chunk {MASK_KEY!r} missing)")
        downsample = int(img.text[MASK_KEY])
        mask = np.asarray(img.convert("L")) > 127
    return mask, downsample


def make_toy_slide(
    out_svs: str | os.PathLike,
    out_mask: str | os.PathLike,
    cohort: str,
    label: int,
    seed: int,
    size_px: int = 3072,
    mask_downsample: int = 4,
    quality: int = 90,
) -> dict:
    """Write one toy slide (Aperio-layout SVS, 0.5 µm/px, AppMag 20, downsamples 1/4/16, JPEG
    ``quality``) and its positive-region mask PNG; return what was drawn (see
    :func:`render_toy_canvas`: counts, ``tissue_fraction``, ``positive_fraction``, objects)."""
    if mask_downsample < 1 or size_px % mask_downsample:
        raise ValueError(
            f"mask_downsample must be a positive divisor of size_px={size_px}, "
            f"got {mask_downsample}"
        )
    canvas = render_toy_canvas(cohort, label, seed, size_px)
    write_aperio_svs(
        out_svs, canvas.rgb, mpp=0.5, app_mag=20.0, downsamples=(1, 4, 16), quality=quality
    )
    write_toy_mask(out_mask, canvas.positive, mask_downsample)
    info = canvas.info
    log.info(
        "toy slide %s: %s label %d, %s",
        Path(out_svs).name,
        cohort,
        label,
        {k: v for k, v in info.items() if k.startswith("n_") or k.endswith("fraction")},
    )
    return info


def slide_seed(seed: int, index: int) -> int:
    """The seed of slide ``index`` of a toy cohort with master ``seed`` (a 31-bit integer)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] >> 1)


def toy_sample_sheet(
    dataset: str,
    cohort: str,
    n_patients: int,
    seed: int,
    slides_dir: str,
    positive_fraction: float = 0.5,
    slides_per_patient: int = 1,
    pretrain_fraction: float = 0.5,
) -> pd.DataFrame:
    """The sample sheet of a toy cohort: one row per slide with columns ``slide_id, patient_id,
    path, label, cohort, seed, mask_path, pretrain``.

    ``round(n_patients * positive_fraction)`` patients are positive (which ones is drawn from
    ``seed``); all slides of a patient share its label. ``pretrain`` marks a label-stratified
    ``pretrain_fraction`` of patients (at least one per class present) whose slides may train
    the encoders. Slide ids are ``{dataset}_p{patient:03d}_s{slide}``; slide seeds come from
    ``(seed, slide index)`` via :class:`numpy.random.SeedSequence`.
    """
    if cohort not in COHORTS:
        raise ValueError(f"cohort must be one of {COHORTS}, got {cohort!r}")
    if not dataset or not all(ch.isalnum() or ch in "._-" for ch in dataset):
        raise ValueError(
            f"dataset must be a non-empty name of letters, digits, '.', '_' or '-', got {dataset!r}"
        )
    if n_patients < 1 or slides_per_patient < 1:
        raise ValueError(
            f"n_patients and slides_per_patient must be >= 1, got {n_patients} "
            f"and {slides_per_patient}"
        )
    for name, value in (
        ("positive_fraction", positive_fraction),
        ("pretrain_fraction", pretrain_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x70F]))
    n_pos = int(round(n_patients * positive_fraction))
    labels = np.zeros(n_patients, dtype=int)
    labels[rng.permutation(n_patients)[:n_pos]] = 1
    pretrain = np.zeros(n_patients, dtype=bool)
    for cls in (0, 1):
        members = np.flatnonzero(labels == cls)
        if members.size and pretrain_fraction > 0:
            k = max(1, int(round(members.size * pretrain_fraction)))
            pretrain[rng.choice(members, size=k, replace=False)] = True
    rows = []
    for p in range(n_patients):
        for s in range(slides_per_patient):
            slide_id = f"{dataset}_p{p:03d}_s{s}"
            rows.append(
                {
                    "slide_id": slide_id,
                    "patient_id": f"{dataset}_p{p:03d}",
                    "path": str(Path(slides_dir) / f"{slide_id}.svs"),
                    "label": int(labels[p]),
                    "cohort": cohort,
                    "seed": slide_seed(seed, len(rows)),
                    "mask_path": str(Path(slides_dir) / f"{slide_id}.mask.png"),
                    "pretrain": bool(pretrain[p]),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "slide_id",
            "patient_id",
            "path",
            "label",
            "cohort",
            "seed",
            "mask_path",
            "pretrain",
        ],
    )
