"""Tissue mask of a slide at low resolution (CLAM-style saturation thresholding).

Steps on a thumbnail: HSV saturation (stained tissue is coloured, glass is white or grey),
optionally near-black pixels (pen, scanner borders) set to background, median blur, a threshold
(Otsu's, computed here in NumPy, or a fixed value), morphological closing, removal of small
objects and filling of small holes. Sizes are given in micrometres so one setting works at any
thumbnail resolution.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from csmil.slides.reader import Slide, slide_mpp, slide_thumbnail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueParams:
    """Settings of :func:`tissue_mask`.

    Attributes:
        threshold: saturation (0–255) at or above which a pixel is tissue, or ``"otsu"`` to
            compute it per slide.
        min_saturation: lower bound (0–255) on the Otsu threshold, so a slide that is all glass
            (saturation only from JPEG noise) does not get half of its noise called tissue.
        exclude_dark: treat pixels whose HSV value (max of R, G, B) is below ``dark_value`` as
            background (black scanner borders, pen marks).
        dark_value: HSV value (0–255) below which a pixel counts as near-black.
        median_um: width of the median blur window, µm (rounded to an odd number of px, >= 1).
        close_um: radius of the disk used for morphological closing, µm (0 disables).
        min_object_um2: connected tissue regions smaller than this area (µm²) are dropped.
        max_hole_um2: holes inside tissue smaller than this area (µm²) are filled (0 disables).
    """

    threshold: float | str = "otsu"
    min_saturation: float = 15.0
    exclude_dark: bool = True
    dark_value: float = 40.0
    median_um: float = 48.0
    close_um: float = 16.0
    min_object_um2: float = 20_000.0
    max_hole_um2: float = 20_000.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, str):
            if self.threshold != "otsu":
                raise ValueError(
                    f"tissue threshold must be 'otsu' or a number in [0, 255], "
                    f"got {self.threshold!r}"
                )
        elif not 0 <= float(self.threshold) <= 255:
            raise ValueError(f"tissue threshold must be in [0, 255], got {self.threshold}")
        for name in ("median_um", "close_um", "min_object_um2", "max_hole_um2"):
            if getattr(self, name) < 0:
                raise ValueError(f"tissue {name} must be >= 0, got {getattr(self, name)}")

    def as_dict(self) -> dict:
        return asdict(self)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an (H, W, 3) uint8 image, (H, W) float32 in [0, 255]."""
    rgb = rgb.astype(np.float32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(hi > 0, (hi - lo) / hi, 0.0)
    return (sat * 255.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range=(0.0, 256.0)) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a histogram.

    ``values`` are any array of numbers in ``value_range``. Returns the lower edge of the first
    bin of the upper class, so ``values >= threshold`` is the upper class; an input with one
    class only (e.g. constant) returns its mean.
    """
    hist, edges = np.histogram(np.asarray(values).ravel(), bins=bins, range=value_range)
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        raise ValueError("otsu_threshold needs at least one value")
    centers = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)  # pixels in bins [0, i]
    w1 = total - w0
    m0 = np.cumsum(hist * centers)
    mean_all = m0[-1] / total
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1.0
    if between.max() <= 0:  # one class only
        return float(mean_all)
    # two well-separated modes give a plateau of equal scores: take its middle
    best = np.flatnonzero(between >= between.max() * (1.0 - 1e-9))
    i = int(best[len(best) // 2])
    return float(edges[i + 1])


def tissue_mask(
    thumbnail_rgb: np.ndarray, mpp: float, params: TissueParams | None = None
) -> tuple[np.ndarray, float]:
    """Tissue mask of a thumbnail.

    Args:
        thumbnail_rgb: (H, W, 3) uint8 RGB, background white.
        mpp: µm per thumbnail pixel (converts the µm sizes in ``params`` to pixels).
        params: settings; defaults of :class:`TissueParams` when None.

    Returns:
        ``(mask, threshold)``: (H, W) bool, True on tissue; the saturation threshold used.
    """
    p = params or TissueParams()
    if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3:
        raise ValueError(f"thumbnail must be (H, W, 3) RGB, got shape {thumbnail_rgb.shape}")
    if not mpp > 0:
        raise ValueError(f"mpp of the thumbnail must be > 0 µm/px, got {mpp}")
    sat = saturation(thumbnail_rgb)
    if p.exclude_dark:
        sat[thumbnail_rgb.max(axis=2) < p.dark_value] = 0.0
    k = max(1, int(round(p.median_um / mpp)) | 1)  # odd window, px
    if k > 1:
        sat = ndimage.median_filter(sat, size=k, mode="nearest")
    if p.threshold == "otsu":
        thr = max(otsu_threshold(sat), float(p.min_saturation))
    else:
        thr = float(p.threshold)
    mask = sat >= thr
    radius = int(round(p.close_um / mpp))
    if radius > 0:
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        disk = xx**2 + yy**2 <= radius**2
        # pad so closing does not erode tissue touching the border
        padded = np.pad(mask, radius, mode="edge")
        mask = ndimage.binary_closing(padded, structure=disk)[radius:-radius, radius:-radius]
    px_area = mpp * mpp
    if p.min_object_um2 > 0:
        mask = _drop_small(mask, p.min_object_um2 / px_area)
    if p.max_hole_um2 > 0:
        holes = ~mask
        labels, n = ndimage.label(holes)
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            fill = sizes < p.max_hole_um2 / px_area
            fill[0] = False
            fill[border] = False
            mask = mask | fill[labels]
    return mask, thr


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def slide_tissue_mask(
    slide: Slide,
    mask_mpp: float = 8.0,
    params: TissueParams | None = None,
    mpp_override: float | None = None,
) -> tuple[np.ndarray, float, float]:
    """Tissue mask of a whole slide computed on a thumbnail at ``mask_mpp`` µm/px.

    Returns ``(mask (h, w) bool, downsample, threshold)``; ``downsample`` is level-0 px per
    mask px, so mask pixel (r, c) covers level-0 ``[c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)``.
    """
    mpp0 = slide_mpp(slide, mpp_override)
    if not mask_mpp > 0:
        raise ValueError(f"mask_mpp must be > 0 µm/px, got {mask_mpp}")
    thumb, ds = slide_thumbnail(slide, downsample=max(1.0, mask_mpp / mpp0))
    mask, thr = tissue_mask(thumb, ds * mpp0, params)
    return mask, ds, thr
