"""Writing pyramidal TIFFs in Aperio SVS layout that OpenSlide opens with its ``aperio`` driver.

The file holds one tiled, JPEG-compressed page per pyramid level. The first page's
ImageDescription is an Aperio string (``Aperio Image Library ...|AppMag = 20|MPP = 0.5``), which
is what OpenSlide keys on; the reduced levels are written with ``subfiletype=1``.
"""

from __future__ import annotations

import os

import numpy as np
import tifffile
from PIL import Image

from csmil.io import atomic_path


def aperio_description(
    width: int, height: int, tile: int, mpp: float, app_mag: float, quality: int
) -> str:
    """The ImageDescription of an Aperio base page."""
    return (
        f"Aperio Image Library v12.0.0 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = {app_mag:g}|MPP = {mpp:g}"
        f"|Filename = csmil-toy"
    )


def downsample_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an (H, W, 3) uint8 image by an integer ``factor`` (box filter)."""
    if factor == 1:
        return rgb
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    block = rgb[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)
    return block.mean(axis=(1, 3)).round().astype(np.uint8)


def write_aperio_svs(
    path: str | os.PathLike,
    rgb: np.ndarray,
    mpp: float = 0.5,
    app_mag: float = 20.0,
    downsamples: tuple[int, ...] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
) -> None:
    """Write ``rgb`` (H, W, 3) uint8, level 0 at ``mpp`` µm/px, as an Aperio-layout SVS.

    Each level ``i`` is ``rgb`` box-downsampled by ``downsamples[i]`` (integers, the first 1).
    H and W need not be multiples of the tile size. Tiles are JPEG in YCbCr without chroma
    subsampling (4:4:4): the usual 4:2:0 halves colour resolution, which wipes out one-pixel
    colour detail in the reduced levels (the micro crosses of the toy cohort, for one).
    """
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    if not downsamples or downsamples[0] != 1 or sorted(downsamples) != list(downsamples):
        raise ValueError(f"downsamples must start at 1 and increase, got {downsamples}")
    height, width = rgb.shape[:2]
    res = 1e4 / mpp  # pixels per centimetre
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, factor in enumerate(downsamples):
            level = downsample_rgb(rgb, factor)
            desc = (
                aperio_description(width, height, tile, mpp, app_mag, quality)
                if i == 0
                else f"Aperio Image Library v12.0.0 \r\n{width}x{height} -> "
                f"{level.shape[1]}x{level.shape[0]} - |AppMag = {app_mag:g}|MPP = {mpp * factor:g}"
            )
            tif.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                subsampling=(1, 1),
                subfiletype=0 if i == 0 else 1,
                description=desc,
                resolution=(res / factor, res / factor),
                resolutionunit="CENTIMETER",
                metadata=None,
            )


def thumbnail(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """A small RGB copy of ``rgb`` whose longer side is ``max_side`` px (for figures)."""
    img = Image.fromarray(rgb)
    img.thumbnail((max_side, max_side), Image.Resampling.BOX)
    return np.asarray(img)
