"""Opening whole-slide images and choosing pyramid levels from physical scale.

Coordinates are level-0 pixels everywhere. A level is always chosen from the slide's
microns-per-pixel (MPP) and the resolution wanted, never by a fixed level index: pyramids differ
between scanners (Aperio levels are usually 4x apart, NDPI levels 2x).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

log = logging.getLogger(__name__)

#: How much coarser than wanted a level's downsample may be and still count as "not exceeding"
#: it (relative). Level downsamples of odd-sized slides are slightly off their nominal value
#: (16.06 instead of 16), which must not push the choice down a level.
LEVEL_TOLERANCE = 0.05


def open_slide(path: str | os.PathLike) -> openslide.OpenSlide:
    """Open a whole-slide image with OpenSlide.

    Raises ``FileNotFoundError`` when ``path`` does not exist and ``ValueError`` naming the file
    when OpenSlide cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"slide {path} does not exist; check the path column of the sample sheet"
        )
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
        raise ValueError(
            f"OpenSlide cannot open slide {path} ({type(err).__name__}: {err}); it must be a "
            "format OpenSlide reads (e.g. .svs, .ndpi, .mrxs, pyramidal .tif)"
        ) from err


def slide_mpp(slide: openslide.OpenSlide, mpp_override: float | None = None) -> float:
    """Level-0 resolution of ``slide`` in µm per pixel.

    Order of precedence: ``mpp_override`` (e.g. from an ``mpp`` column in the sample sheet),
    then ``openslide.mpp-x``/``openslide.mpp-y`` (their mean), then the objective power
    (``openslide.objective-power``; 10 / power, so 20x -> 0.5 and 40x -> 0.25) with a warning.
    Raises ``ValueError`` when none of these is available.
    """
    name = _slide_name(slide)
    if mpp_override is not None:
        mpp = float(mpp_override)
        if not (math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"mpp_override must be a positive number of µm/px, got {mpp_override}")
        return mpp
    props = slide.properties
    values = []
    for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
        try:
            v = float(props.get(key, "nan"))
        except ValueError:
            v = math.nan
        if math.isfinite(v) and v > 0:
            values.append(v)
    if values:
        if len(values) == 2 and abs(values[0] - values[1]) > 0.01 * max(values):
            log.warning(
                "%s: non-square pixels (mpp-x %g, mpp-y %g); using their mean", name, *values
            )
        return float(np.mean(values))
    try:
        power = float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER, "nan"))
    except ValueError:
        power = math.nan
    if math.isfinite(power) and power > 0:
        mpp = 10.0 / power
        log.warning(
            "%s: no MPP in the slide metadata; assuming %g µm/px from objective power %gx. "
            "Give an mpp column in the sample sheet if this is wrong.",
            name,
            mpp,
            power,
        )
        return mpp
    raise ValueError(
        f"slide {name} has neither an MPP (openslide.mpp-x/mpp-y) nor an objective power in "
        "its metadata, so its physical scale is unknown; give its level-0 µm per pixel in an "
        "mpp column of the sample sheet (mpp_override)"
    )


def best_level_for(
    slide: openslide.OpenSlide, downsample_wanted: float, tolerance: float = LEVEL_TOLERANCE
) -> tuple[int, float]:
    """The level with the largest downsample not exceeding ``downsample_wanted``.

    ``downsample_wanted`` is in level-0 pixels per output pixel (target µm/px divided by the
    slide's level-0 µm/px). A level up to ``tolerance`` (relative) coarser than wanted still
    counts. Returns ``(level, level_downsample)``; level 0 when every level is coarser.
    """
    if not downsample_wanted > 0:
        raise ValueError(f"downsample_wanted must be > 0, got {downsample_wanted}")
    limit = downsample_wanted * (1.0 + tolerance)
    best, best_ds = 0, float(slide.level_downsamples[0])
    for level, ds in enumerate(slide.level_downsamples):
        if ds <= limit and ds > best_ds:
            best, best_ds = level, float(ds)
    return best, best_ds


def read_region_rgb(
    slide: openslide.OpenSlide, location: tuple[int, int], level: int, size: tuple[int, int]
) -> np.ndarray:
    """Read a region as (h, w, 3) uint8 RGB, composited on white.

    ``location`` is the level-0 (x, y) of the top-left pixel, ``size`` (w, h) is in pixels of
    ``level``. Parts outside the slide (transparent in OpenSlide's RGBA) come back white.
    """
    rgba = np.asarray(slide.read_region((int(location[0]), int(location[1])), level, size))
    rgb, alpha = np.ascontiguousarray(rgba[..., :3]), rgba[..., 3]
    clear = alpha < 255
    if clear.any():  # blend only the (few) transparent pixels onto white
        a = alpha[clear][:, None].astype(np.float32) / 255.0
        rgb[clear] = (rgb[clear] * a + 255.0 * (1.0 - a)).round().astype(np.uint8)
    return rgb


def read_region_image(
    slide: openslide.OpenSlide, location: tuple[int, int], level: int, size: tuple[int, int]
) -> Image.Image:
    """As :func:`read_region_rgb`, as a PIL RGB image (no NumPy copies on the way).

    Parts outside the slide (transparent) come back white.
    """
    rgba = slide.read_region((int(location[0]), int(location[1])), level, size)
    if rgba.getchannel("A").getextrema()[0] < 255:
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgba = Image.alpha_composite(white, rgba)
    return rgba.convert("RGB")


def slide_thumbnail(
    slide: openslide.OpenSlide, max_side: int | None = None, downsample: float | None = None
) -> tuple[np.ndarray, float]:
    """A low-resolution RGB copy of the whole slide, white where transparent.

    Give either ``max_side`` (longer side of the result, px) or ``downsample`` (level-0 px per
    thumbnail px). The slide is read from the coarsest level at least as fine as needed, in
    strips, and box-averaged, so memory stays bounded for slides without a coarse level.
    Returns ``(rgb (h, w, 3) uint8, downsample)``; the returned downsample is exact
    (level-0 width / thumbnail width).
    """
    width, height = slide.dimensions
    if (max_side is None) == (downsample is None):
        raise ValueError("give exactly one of max_side and downsample")
    if max_side is not None:
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1 px, got {max_side}")
        downsample = max(width, height) / max_side
    assert downsample is not None
    if not downsample > 0:
        raise ValueError(f"downsample must be > 0, got {downsample}")
    out_w = max(1, round(width / downsample))
    out_h = max(1, round(height / downsample))
    ds_x, ds_y = width / out_w, height / out_h
    level, level_ds = best_level_for(slide, min(ds_x, ds_y))
    lw, lh = slide.level_dimensions[level]
    sx, sy = ds_x / level_ds, ds_y / level_ds  # level px per thumbnail px
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    rows = max(1, int(2**24 // max(1, lw) / max(sy, 1.0)))  # thumbnail rows per strip, ~16 Mpx
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        y0 = math.floor(r0 * sy)
        y1 = min(lh, math.ceil(r1 * sy))
        strip = read_region_rgb(slide, (0, round(y0 * level_ds)), level, (lw, max(1, y1 - y0)))
        img = Image.fromarray(strip)
        box = (0.0, r0 * sy - y0, min(lw, out_w * sx), min(strip.shape[0], r1 * sy - y0))
        out[r0:r1] = np.asarray(img.resize((out_w, r1 - r0), Image.Resampling.BOX, box=box))
    return out, (width / out_w + height / out_h) / 2.0


def _slide_name(slide: openslide.OpenSlide) -> str:
    return str(getattr(slide, "_filename", None) or getattr(slide, "name", None) or slide)
