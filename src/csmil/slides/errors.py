"""Bad slides: the one error every slide problem raises, and why a file cannot be opened.

Every way a slide can be unusable (missing, empty, a directory, not a slide format, a TIFF
without tiles, truncated, corrupt tile data, an implausible or missing resolution) raises
:class:`SlideError`, whose message names the file, says what is wrong and what to do. When
OpenSlide refuses a file it says only "Unsupported or missing image file";
:func:`unopenable_slide_error` looks at the file's first bytes and TIFF structure to say why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import tifffile

#: What to do with a file that is not a whole-slide image at all.
CONVERT_FIX = (
    "Export the slide from the scanner software in a whole-slide format OpenSlide reads "
    "(.svs, .ndpi, .mrxs, .scn, .vms, .bif, DICOM, tiled pyramidal .tif), or convert the image "
    "to a tiled pyramidal TIFF (e.g. vips tiffsave IMAGE OUT.tif --tile --pyramid "
    "--compression jpeg) and give its level-0 µm per pixel in the sample sheet's mpp column"
)
#: What to do with a file whose bytes are damaged or missing.
RECOPY_FIX = (
    "Copy the file again from its source and compare sizes or checksums; if the source is "
    "damaged too, export or scan the slide again, or leave the slide out with a reason in "
    "the sample sheet's exclude column"
)

_MAGIC = (  # first bytes of common non-slide files
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a patch or feature store?)"),
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SlideError(ValueError):
    """A slide that cannot be used as it is.

    ``str(err)`` is ``"slide PATH: PROBLEM. FIX"``; the parts are kept as ``path``,
    ``problem`` (what is wrong, e.g. for a per-slide QC table) and ``fix`` (what to do).
    """

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"slide {path}: {problem}. {fix}")


class SlideNotFoundError(SlideError, FileNotFoundError):
    """A slide path with nothing there; also a ``FileNotFoundError``."""


def check_slide_path(path: Path) -> None:
    """Raise :class:`SlideError` when ``path`` is missing, a directory or an empty file."""
    if not path.exists():
        raise SlideNotFoundError(
            path, "the file does not exist", "Check the path column of the sample sheet"
        )
    if path.is_dir():
        raise SlideError(
            path,
            "it is a directory, not a slide file",
            "Give the slide file itself in the sample sheet's path column (for MIRAX, the "
            ".mrxs file that sits beside the directory of the same name)",
        )
    if path.stat().st_size == 0:
        raise SlideError(
            path,
            "the file is empty (0 bytes), as an interrupted copy or download leaves it",
            RECOPY_FIX,
        )


def unopenable_slide_error(path: Path, err: Exception) -> SlideError:
    """The :class:`SlideError` for a file OpenSlide refused with ``err``, saying why."""
    said = f"{type(err).__name__}: {err}"
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return SlideError(path, f"it is {kind}, not a whole-slide image", CONVERT_FIX)
    if head[:4] in _TIFF_MAGIC:
        return _tiff_error(path, said)
    if type(err).__name__ == "OpenSlideUnsupportedFormatError":
        return SlideError(
            path,
            f"it is in no format OpenSlide reads (OpenSlide said {said!r})",
            CONVERT_FIX,
        )
    return SlideError(
        path,
        f"OpenSlide recognised the format but failed reading the file ({said}); it is "
        "damaged or truncated",
        RECOPY_FIX,
    )


def _tiff_error(path: Path, said: str) -> SlideError:
    """Why OpenSlide refused a file that starts like a TIFF: truncated, striped or damaged."""
    size = path.stat().st_size
    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # it logs each broken page link; we report it below
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [(p.is_tiled, p.dataoffsets, p.databytecounts) for p in tif.pages]
    except Exception as parse_err:  # any parse failure means a damaged file; reported
        return SlideError(
            path,
            f"it starts like a TIFF but its structure cannot be read ({parse_err}); it is "
            f"damaged or truncated (OpenSlide said {said!r})",
            RECOPY_FIX,
        )
    finally:
        tiff_log.setLevel(level)
    ends = [int(o) + int(n) for _, offs, counts in pages for o, n in zip(offs, counts, strict=True)]
    data_end = max(ends, default=0)
    if data_end > size:
        return SlideError(
            path,
            f"it is truncated: its TIFF structure refers to image data up to byte {data_end} "
            f"but the file ends at byte {size}",
            RECOPY_FIX,
        )
    if pages and not any(tiled for tiled, _, _ in pages):
        return SlideError(
            path,
            "it is a TIFF stored in strips, not tiles, so it cannot be read region by region "
            "(a plain image, not a whole-slide pyramid)",
            CONVERT_FIX,
        )
    return SlideError(
        path,
        f"it is a TIFF that OpenSlide does not read as a slide (OpenSlide said {said!r})",
        CONVERT_FIX,
    )
