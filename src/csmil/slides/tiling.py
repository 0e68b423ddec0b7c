"""Tiling a slide into co-centred 20x / 10x / 5x patches (the ``tile_slide`` workflow step).

Tile centres lie on the 20x grid: square tiles of 128 µm (256 px at 0.5 µm/px), i.e.
``round(128 / mpp)`` level-0 px, starting at the slide's top-left corner; a tile is kept when the
tissue mask covers at least ``tissue_threshold`` of it. Around each centre three fields of view
are cut, 128, 256 and 512 µm wide (256, 512, 1024 px at 20x), and each is box-resampled to
``patch_px`` square. For each scale the read level is the coarsest one whose resolution is still
at least the output resolution, chosen from the slide's MPP (never a fixed level index), so the
authors' offsets bug for native 20x scans and their "level 1 is 2x" assumption do not arise.
A pyramid without a level near a scale's resolution is read from the nearest finer level and
downsampled, with a warning; a slide coarser than a scale asks for is upsampled, with a warning
and a flag in the store. A slide with a single level (no pyramid) is accepted with a warning:
reads are streamed, so it costs time, not memory.

Pixels are read in blocks of tiles, one region per block and pyramid level (scales read from
the same level share it), so memory is bounded by ``max_read_px`` whatever the slide size; the
next block is read while the current one is cut. Each field is cut from the region (a crop when
it maps 1:1 onto ``patch_px``, else a box resample) and encoded straight from the resampled
image (:mod:`csmil.slides.codec`, JPEG by default), on ``num_threads`` threads: Pillow releases
the GIL while it resamples and encodes. Fields reaching past the slide edge are padded white.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from csmil import MPP_20X, SCALE_FIELD_PX_20X, SCALES
from csmil.runtime import progress
from csmil.slides.codec import DEFAULT_CODEC, DEFAULT_QUALITY, check_codec, encode_patch
from csmil.slides.patchstore import PatchStoreWriter
from csmil.slides.reader import (
    LEVEL_TOLERANCE,
    Slide,
    best_level_for,
    open_slide,
    read_region_image,
    resolve_mpp,
)
from csmil.slides.tissue import TissueParams, slide_tissue_mask

log = logging.getLogger(__name__)

#: A scale read from a level this many times finer (per side) than it needs, or more, means
#: the pyramid lacks a level for it (reading 16x the pixels); that is warned about. Levels 4x
#: apart (Aperio) or 2x apart (NDPI) never cause it while the pyramid reaches the scale.
MISSING_LEVEL_FACTOR = 4.0


@dataclass(frozen=True)
class ScaleRead:
    """How one scale is read: field of view, pyramid level and output resolution."""

    scale: str
    field_level0_px: float  # width of the field of view, level-0 px
    level: int  # pyramid level read
    level_downsample: float  # that level's downsample
    out_mpp: float  # µm per pixel of the stored patch
    read_mpp: float  # µm per pixel of the level read

    @property
    def upsampled(self) -> bool:
        """Whether the stored pixels are finer than the pixels read (the slide is coarser than
        the scale asks for), so the patch holds less detail than its resolution says."""
        return is_upsampled(self.read_mpp, self.out_mpp)

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "level_downsample": self.level_downsample,
            "field_level0_px": self.field_level0_px,
            "out_mpp": self.out_mpp,
            "read_mpp": self.read_mpp,
            "upsampled": self.upsampled,
        }


def is_upsampled(read_mpp: float, out_mpp: float) -> bool:
    """Whether pixels of ``read_mpp`` µm were enlarged to ``out_mpp`` µm ones (beyond
    ``LEVEL_TOLERANCE``)."""
    return read_mpp > out_mpp * (1.0 + LEVEL_TOLERANCE)


def plan_scales(slide: Slide, mpp: float, patch_px: int) -> dict[str, ScaleRead]:
    """Field size, read level and output MPP of every scale in ``csmil.SCALES``.

    Warns when a scale is upsampled (level 0 is coarser than the scale's stored pixels) and,
    on a slide with several levels, when the pyramid has no level near a scale's resolution,
    so that a level ``MISSING_LEVEL_FACTOR`` or more times finer is read and downsampled.
    """
    tile = tile_size_level0(mpp)
    levels = ", ".join(f"{d:.4g}" for d in slide.level_downsamples)
    plans = {}
    for s in SCALES:
        field = tile * SCALE_FIELD_PX_20X[s] / SCALE_FIELD_PX_20X["20x"]
        out_ds = field / patch_px  # level-0 px per output px
        level, level_ds = best_level_for(slide, out_ds)
        plan = ScaleRead(s, float(field), level, level_ds, field * mpp / patch_px, level_ds * mpp)
        if plan.upsampled:
            log.warning(
                "%s: scale %s stores %.3g µm/px but the slide's level 0 is %.3g µm/px; its "
                "patches are upsampled (flagged in the patch store); a smaller patch_px avoids it",
                slide.path,
                s,
                plan.out_mpp,
                mpp,
            )
        elif slide.level_count > 1 and out_ds / level_ds >= MISSING_LEVEL_FACTOR * (
            1.0 - LEVEL_TOLERANCE
        ):
            log.warning(
                "%s: no pyramid level near scale %s (%.3g level-0 px per stored px; levels at "
                "downsample %s); reading level %d (downsample %.4g) and downsampling it %.3gx",
                slide.path,
                s,
                out_ds,
                levels,
                level,
                level_ds,
                out_ds / level_ds,
            )
        plans[s] = plan
    return plans


def tile_size_level0(mpp: float) -> int:
    """Side of a 20x tile (128 µm) in level-0 px, e.g. 256 at 0.5 µm/px and 512 at 0.25."""
    size = int(round(SCALE_FIELD_PX_20X["20x"] * MPP_20X / mpp))
    if size < 1:
        raise ValueError(
            f"mpp {mpp} µm/px gives a 20x tile smaller than one pixel; whole-slide scans are "
            "0.1-20 µm/px (give the slide's mpp in the sample sheet)"
        )
    return size


def tile_tissue_fraction(
    mask: np.ndarray, mask_downsample: float, tile: int, n_rows: int, n_cols: int
) -> np.ndarray:
    """Fraction of each grid tile covered by tissue, (n_rows, n_cols) float in [0, 1].

    Tile (r, c) covers level-0 ``[c*tile, (c+1)*tile) x [r*tile, (r+1)*tile)``; its mask pixels
    are those nearest to that square (at least one).
    """
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def bounds(n: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.round(np.arange(n) * tile / mask_downsample).astype(int), 0, limit - 1)
        hi = np.round((np.arange(n) + 1) * tile / mask_downsample).astype(int)
        return lo, np.clip(np.maximum(hi, lo + 1), 1, limit)

    r0, r1 = bounds(n_rows, h)
    c0, c1 = bounds(n_cols, w)
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    total = integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0]
    return total / area


def tile_slide(
    slide_path: str | os.PathLike,
    out_h5: str | os.PathLike,
    patch_px: int = 64,
    tissue_threshold: float = 0.25,
    tissue: TissueParams | None = None,
    mask_mpp: float = 8.0,
    slide_id: str | None = None,
    mpp_override: float | None = None,
    max_tiles: int | None = None,
    seed: int = 0,
    max_read_px: int = 2**24,
    codec: str = DEFAULT_CODEC,
    jpeg_quality: int = DEFAULT_QUALITY,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Tile one slide into a patch store of co-centred 20x/10x/5x patches.

    Args:
        slide_path: the whole-slide image (any format OpenSlide reads).
        out_h5: patch store to write (see :mod:`csmil.slides.patchstore`); written atomically.
        patch_px: side of every stored patch, px (all three scales).
        tissue_threshold: keep a tile when at least this fraction (0–1) of its 20x field is
            tissue in the mask.
        tissue: tissue mask settings (:class:`csmil.slides.tissue.TissueParams`); defaults
            when None.
        mask_mpp: resolution of the tissue mask thumbnail, µm/px.
        slide_id: name stored in the store; the file stem when None.
        mpp_override: level-0 µm/px to use instead of the slide's metadata.
        max_tiles: keep at most this many tissue tiles, drawn at random with ``seed``
            (None keeps all).
        seed: seed of that draw.
        max_read_px: most pixels read in one region (per block and level); bounds memory.
        codec: patch encoding, "jpeg" (default) or "png" (lossless); see
            :mod:`csmil.slides.codec`.
        jpeg_quality: JPEG quality, 1-100 (4:4:4 chroma).
        num_threads: threads that cut and encode patches (None: 1).

    Returns:
        A summary: slide_id, n_tiles, n_tissue_tiles, n_grid, tissue_fraction, mpp,
        mpp_source, patch_size (20x tile, level-0 px), scales, seconds, tiles_per_s.

    Raises:
        csmil.slides.errors.SlideError: the slide cannot be used (missing, empty, not a
            slide, damaged tile data, implausible or unknown MPP); the message names the
            file, what is wrong and what to do.
    """
    t_start = time.perf_counter()
    slide_path = Path(slide_path)
    slide_id = slide_id or slide_path.stem
    if not (isinstance(patch_px, int | np.integer) and patch_px >= 1):
        raise ValueError(f"patch_px must be a positive integer, got {patch_px!r}")
    if not 0.0 <= tissue_threshold <= 1.0:
        raise ValueError(f"tissue_threshold must be in [0, 1], got {tissue_threshold}")
    if max_tiles is not None and max_tiles < 0:
        raise ValueError(f"max_tiles must be >= 0 or None, got {max_tiles}")
    check_codec(codec, jpeg_quality)
    tissue = tissue or TissueParams()
    threads = max(1, int(num_threads or 1))

    slide = open_slide(slide_path)
    try:
        mpp, mpp_source = astuple(resolve_mpp(slide, mpp_override))
        if slide.level_count == 1:
            log.warning(
                "%s has a single level (no pyramid): the tissue mask and every scale are read "
                "at full resolution, which is slow for a large slide; to speed it up convert it "
                "to a tiled pyramidal TIFF (e.g. vips tiffsave SLIDE OUT.tif --tile --pyramid "
                "--compression jpeg)",
                slide_path,
            )
        tile = tile_size_level0(mpp)
        width, height = slide.dimensions
        n_cols, n_rows = width // tile, height // tile
        mask, mask_ds, sat_thr = slide_tissue_mask(slide, mask_mpp, tissue, mpp_override=mpp)
        fraction = tile_tissue_fraction(mask, mask_ds, tile, n_rows, n_cols)
        rows, cols = np.nonzero(fraction >= tissue_threshold)  # raster order
        n_tissue = len(rows)
        if max_tiles is not None and n_tissue > max_tiles:
            pick = np.sort(np.random.default_rng(seed).choice(n_tissue, max_tiles, replace=False))
            rows, cols = rows[pick], cols[pick]
        plans = plan_scales(slide, mpp, patch_px)
        attrs = {
            "slide_id": slide_id,
            "slide_path": str(slide_path),
            "mpp": mpp,
            "mpp_source": mpp_source,
            "level_downsamples": [float(d) for d in slide.level_downsamples],
            "patch_size": tile,
            "scales": {s: p.as_dict() for s, p in plans.items()},
            "tissue": {**tissue.as_dict(), "mask_mpp": mask_mpp, "saturation_used": sat_thr},
            "tissue_threshold": tissue_threshold,
            "tissue_fraction": float(mask.mean()) if mask.size else 0.0,
            "grid": {"rows": n_rows, "cols": n_cols, "tile_level0_px": tile},
            "max_tiles": -1 if max_tiles is None else int(max_tiles),
            "seed": seed,
        }
        block = _block_tiles(plans, tile, max_read_px, max(n_rows, n_cols, 1))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
            groups.setdefault((int(r) // block, int(c) // block), []).append(i)
        keys = sorted(groups)
        writer = PatchStoreWriter(
            out_h5, patch_px=patch_px, scales=SCALES, attrs=attrs, codec=codec,
            quality=jpeg_quality,
        )  # fmt: skip
        with writer, ThreadPoolExecutor(threads) as pool, ThreadPoolExecutor(1) as reader:

            def read(key):
                idx = np.asarray(groups[key])
                cx, cy = (cols[idx] + 0.5) * tile, (rows[idx] + 0.5) * tile  # level-0 centres
                return idx, _read_regions(slide, plans, cx, cy)

            pending = reader.submit(read, keys[0]) if keys else None
            for k in progress(range(len(keys)), desc=f"tiling {slide_id}", total=len(keys)):
                idx, regions = pending.result()
                pending = reader.submit(read, keys[k + 1]) if k + 1 < len(keys) else None
                cuts = [(plans[s], *regions[plans[s].level]) for s in SCALES]
                cx, cy = (cols[idx] + 0.5) * tile, (rows[idx] + 0.5) * tile

                def encode_tile(i, cuts=cuts, cx=cx, cy=cy):
                    return [
                        encode_patch(_cut_field(img, org, p, cx[i], cy[i], patch_px), codec,
                                     jpeg_quality)
                        for p, img, org in cuts
                    ]  # fmt: skip

                encoded = list(pool.map(encode_tile, range(len(idx))))
                coords = np.stack([cols[idx] * tile, rows[idx] * tile], axis=1)
                writer.append_encoded(
                    coords, {s: [e[j] for e in encoded] for j, s in enumerate(SCALES)}
                )
    finally:
        slide.close()

    seconds = time.perf_counter() - t_start
    n = len(rows)
    if n == 0:
        log.warning(
            "%s: no tissue tiles (tissue covers %.1f%% of the slide, tile threshold %.2f); "
            "wrote an empty patch store %s",
            slide_id,
            100 * attrs["tissue_fraction"],
            tissue_threshold,
            out_h5,
        )
    else:
        log.info(
            "%s: %d tiles (%d with tissue of %d on the grid) in %.1f s -> %s",
            slide_id,
            n,
            n_tissue,
            n_rows * n_cols,
            seconds,
            out_h5,
        )
    return {
        "slide_id": slide_id,
        "n_tiles": n,
        "n_tissue_tiles": n_tissue,
        "n_grid": n_rows * n_cols,
        "tissue_fraction": attrs["tissue_fraction"],
        "mpp": mpp,
        "mpp_source": mpp_source,
        "patch_size": tile,
        "scales": attrs["scales"],
        "seconds": seconds,
        "tiles_per_s": n / seconds if seconds > 0 else math.inf,
    }


def _block_tiles(plans: dict[str, ScaleRead], tile: int, max_read_px: int, cap: int) -> int:
    """Tiles per block side so that no scale's read region exceeds ``max_read_px`` pixels."""
    side = math.sqrt(max_read_px)
    best = cap
    for p in plans.values():
        # a block of b tiles spans (b - 1) * tile + field level-0 px
        b = int((side * p.level_downsample - p.field_level0_px) // tile) + 1
        best = min(best, b)
    return max(1, best)


def _read_regions(
    slide: Slide, plans: dict[str, ScaleRead], cx: np.ndarray, cy: np.ndarray
) -> dict[int, tuple[Image.Image, tuple[int, int]]]:
    """One region per pyramid level covering every field of a block centred on level-0
    (cx, cy): level → (region image, its top-left in that level's px)."""
    out = {}
    for level in sorted({p.level for p in plans.values()}):
        on_level = [p for p in plans.values() if p.level == level]
        ds = on_level[0].level_downsample
        half = max(p.field_level0_px for p in on_level) / 2.0
        lx0 = math.floor((cx.min() - half) / ds)
        ly0 = math.floor((cy.min() - half) / ds)
        lx1 = math.ceil((cx.max() + half) / ds)
        ly1 = math.ceil((cy.max() + half) / ds)
        region = read_region_image(
            slide, (round(lx0 * ds), round(ly0 * ds)), level, (lx1 - lx0, ly1 - ly0)
        )
        out[level] = (region, (lx0, ly0))
    return out


def _cut_field(
    img: Image.Image, origin: tuple[int, int], plan: ScaleRead, x: float, y: float, patch_px: int
) -> Image.Image:
    """The field of ``plan`` centred on level-0 (x, y), cut from a region read at the plan's
    level whose top-left is ``origin`` (level px), as a ``patch_px`` square image.

    A field on whole pixels is cropped when it maps 1:1 onto ``patch_px`` and block-averaged
    (``Image.reduce``) when it is an integer multiple of it; any other is box-resampled.
    """
    ds, half = plan.level_downsample, plan.field_level0_px / 2.0
    w, h = img.size
    box = (
        max(0.0, (x - half) / ds - origin[0]),
        max(0.0, (y - half) / ds - origin[1]),
        min(float(w), (x + half) / ds - origin[0]),
        min(float(h), (y + half) / ds - origin[1]),
    )
    side, whole = box[2] - box[0], all(float(v).is_integer() for v in box)
    if whole and side == box[3] - box[1] and side % patch_px == 0:
        ibox = tuple(int(v) for v in box)
        k = int(side) // patch_px
        return img.crop(ibox) if k == 1 else img.reduce(k, box=ibox)
    return img.resize((patch_px, patch_px), Image.Resampling.BOX, box=box)
