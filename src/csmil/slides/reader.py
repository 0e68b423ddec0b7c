"""Opening whole-slide images, their physical resolution, and pyramid levels chosen from it.

Coordinates are level-0 pixels everywhere. A level is always chosen from the slide's
microns-per-pixel (MPP) and the resolution wanted, never by a fixed level index: pyramids differ
between scanners (Aperio levels are usually 4x apart, NDPI levels 2x).

A slide is opened as a :class:`Slide`, a thin wrapper of an OpenSlide handle whose failures
are :class:`~csmil.slides.errors.SlideError` naming the file. OpenSlide errors are sticky (after
one, every call on the handle fails), so a failed read reopens the handle and is tried once
more before it is reported with its level and region.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from csmil.slides.errors import RECOPY_FIX, SlideError, check_slide_path, unopenable_slide_error

log = logging.getLogger(__name__)

#: How much coarser than wanted a level's downsample may be and still count as "not exceeding"
#: it (relative). Level downsamples of odd-sized slides are slightly off their nominal value
#: (16.06 instead of 16), which must not push the choice down a level.
LEVEL_TOLERANCE = 0.05
#: Level-0 resolutions (µm/px) a whole-slide scan can have, with margin: from an oil-immersion
#: 100x scan (~0.1) to a 1.25x overview (~8).
PLAUSIBLE_MPP = (0.1, 20.0)
#: Resolutions (dots per inch) that image software writes when it knows no physical pixel size.
SCREEN_DPI = (72, 96, 150, 300)
#: Where a level-0 MPP came from, in order of precedence.
MPP_SOURCES = ("sample_sheet", "slide_metadata", "objective_power")
_MPP_FIX = (
    "Give the slide's level-0 µm per pixel in the sample sheet's mpp column, which overrides "
    "the metadata (e.g. 0.25 for a 40x scan, 0.5 for 20x; by hand: csmil tile --mpp)"
)


class Slide:
    """An open whole-slide image: OpenSlide's level geometry and properties, and
    :meth:`read_region`. Open with :func:`open_slide`; close when done (or use ``with``).

    ``properties`` is a plain dict read at opening, so it stays readable after a failed read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._osr = self._open()
        self.properties: dict[str, str] = dict(self._osr.properties)
        self.dimensions: tuple[int, int] = self._osr.dimensions
        self.level_count: int = self._osr.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = self._osr.level_dimensions
        self.level_downsamples: tuple[float, ...] = self._osr.level_downsamples

    def _open(self) -> openslide.OpenSlide:
        try:
            return openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideError as err:  # also OpenSlideUnsupportedFormatError
            raise unopenable_slide_error(self.path, err) from err

    def _reopen(self, failed: openslide.OpenSlide) -> None:
        """Replace the handle ``failed`` (in OpenSlide's sticky error state) by a fresh one."""
        with self._lock:
            if self._osr is failed:
                failed.close()
                self._osr = self._open()

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """OpenSlide's ``read_region``: an RGBA image of ``size`` (w, h) px of ``level`` whose
        top-left is level-0 ``location`` (x, y), transparent outside the slide.

        A read OpenSlide fails is tried once more on a reopened handle (a network filesystem
        can fail once); a second failure raises :class:`SlideError` naming the level and the
        region, and leaves a fresh handle for other reads.
        """
        osr = self._osr
        try:
            return osr.read_region(location, level, size)
        except openslide.OpenSlideError as first:
            log.warning(
                "%s: reading level %d at %s failed (%s); reopening the slide to try again",
                self.path,
                level,
                location,
                first,
            )
        self._reopen(osr)
        osr = self._osr
        try:
            return osr.read_region(location, level, size)
        except openslide.OpenSlideError as err:
            self._reopen(osr)
            problem = self._read_problem(location, level, size, err)
            raise SlideError(self.path, problem, RECOPY_FIX) from err

    def _read_problem(self, location, level, size, err) -> str:
        ds = self.level_downsamples[level]
        x, y = (int(v) for v in location)
        x1, y1 = round(x + size[0] * ds), round(y + size[1] * ds)
        return (
            f"its tile data is corrupt or truncated: reading level {level} (downsample {ds:g}), "
            f"{size[0]}x{size[1]} px covering level-0 x {x}..{x1}, y {y}..{y1}, failed twice, "
            f"the second time after reopening the file (OpenSlide said {str(err)!r})"
        )

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r})"


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a whole-slide image with OpenSlide.

    Raises :class:`~csmil.slides.errors.SlideError` saying what is wrong and what to do when
    ``path`` is missing (then also a ``FileNotFoundError``), a directory, empty, or a file
    OpenSlide cannot read (not a slide format, a TIFF in strips, truncated or damaged).
    """
    path = Path(path)
    check_slide_path(path)
    return Slide(path)


@dataclass(frozen=True)
class SlideMpp:
    """A slide's level-0 resolution ``mpp`` (µm/px) and where it came from (``source``, one of
    :data:`MPP_SOURCES`)."""

    mpp: float
    source: str


def resolve_mpp(slide: Slide, mpp_override: float | None = None) -> SlideMpp:
    """Level-0 resolution of ``slide`` in µm per pixel, and its source.

    Order of precedence: ``mpp_override`` (the sample sheet's ``mpp`` column), then
    ``openslide.mpp-x``/``openslide.mpp-y`` (their mean), then the objective power
    (``openslide.objective-power``; 10 / power, so 20x -> 0.5 and 40x -> 0.25) with a warning.
    The value must lie in :data:`PLAUSIBLE_MPP`. Raises
    :class:`~csmil.slides.errors.SlideError` when it does not (a screen resolution such as
    72 dpi is named as such) or when none is available; the message points to the ``mpp``
    column.
    """
    name = _slide_name(slide)
    props = slide.properties
    power = _positive(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
    if mpp_override is not None:
        mpp = _positive(mpp_override)
        said = "the sample sheet's mpp column (mpp_override) gives"
        if mpp is None:
            raise SlideError(
                name,
                f"{said} {mpp_override!r}, not a positive number of µm per pixel",
                "Correct the slide's mpp in the sample sheet, or leave it empty to use the "
                "slide's metadata",
            )
        _check_plausible(name, mpp, said, power, "Correct the slide's mpp in the sample sheet")
        return SlideMpp(mpp, "sample_sheet")
    values = [
        v
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
        if (v := _positive(props.get(key))) is not None
    ]
    if values:
        if len(values) == 2 and abs(values[0] - values[1]) > 0.01 * max(values):
            log.warning(
                "%s: non-square pixels (mpp-x %g, mpp-y %g); using their mean", name, *values
            )
        mpp = float(np.mean(values))
        _check_plausible(name, mpp, f"its metadata ({_mpp_origin(props)}) gives", power, _MPP_FIX)
        return SlideMpp(mpp, "slide_metadata")
    if power is not None:
        mpp = 10.0 / power
        said = f"its metadata has no MPP, and its objective power {power:g}x gives"
        _check_plausible(name, mpp, said, None, _MPP_FIX)
        log.warning(
            "%s: no MPP in the slide metadata; assuming %g µm/px from objective power %gx. "
            "Give the slide's mpp in the sample sheet if this is wrong.",
            name,
            mpp,
            power,
        )
        return SlideMpp(mpp, "objective_power")
    raise SlideError(
        name,
        "its metadata has neither an MPP (openslide.mpp-x/mpp-y) nor an objective power "
        "(openslide.objective-power), so its physical scale is unknown",
        _MPP_FIX,
    )


def slide_mpp(slide: Slide, mpp_override: float | None = None) -> float:
    """Level-0 resolution of ``slide`` in µm per pixel (see :func:`resolve_mpp`)."""
    return resolve_mpp(slide, mpp_override).mpp


def _positive(value) -> float | None:
    """``value`` as a finite positive float, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _mpp_origin(props) -> str:
    """Where OpenSlide took ``openslide.mpp-x`` from, for messages."""
    origin = "openslide.mpp-x/mpp-y"
    if props.get(openslide.PROPERTY_NAME_VENDOR) == "generic-tiff" and "tiff.XResolution" in props:
        res, unit = _positive(props["tiff.XResolution"]), props.get("tiff.ResolutionUnit", "unit")
        origin += f", from the TIFF resolution tags: {res:g} px per {unit}"
    return origin


def _check_plausible(name: str, mpp: float, said: str, power: float | None, fix: str) -> None:
    """Raise :class:`SlideError` when ``mpp`` lies outside :data:`PLAUSIBLE_MPP`."""
    lo, hi = PLAUSIBLE_MPP
    if lo <= mpp <= hi:
        return
    problem = f"{said} {mpp:.4g} µm/px, outside the {lo:g}-{hi:g} µm/px of whole-slide scans"
    dpi = 25_400.0 / mpp
    screen = next((d for d in SCREEN_DPI if abs(dpi - d) <= 0.01 * d), None)
    if screen is not None:
        problem += (
            f"; that is {screen} dpi, a screen or print resolution that image software writes "
            "when it knows no pixel size, not a microscope's"
        )
    if power is not None and lo <= 10.0 / power <= hi:
        fix += f"; its objective power {power:g}x suggests about {10.0 / power:.3g} µm/px"
    raise SlideError(name, problem, fix)


def best_level_for(
    slide: Slide, downsample_wanted: float, tolerance: float = LEVEL_TOLERANCE
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
    slide: Slide, location: tuple[int, int], level: int, size: tuple[int, int]
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
    slide: Slide, location: tuple[int, int], level: int, size: tuple[int, int]
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
    slide: Slide, max_side: int | None = None, downsample: float | None = None
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


def _slide_name(slide: Slide) -> str:
    return str(getattr(slide, "path", slide))
