"""Encoding of single patches for the patch store: JPEG (default) or PNG (lossless).

JPEG is written by Pillow with 4:4:4 chroma (``subsampling=0``): the toy micro-anomaly crosses
are thin, coloured lines, and 4:2:0 subsampling averages their colour away. Measured on the
20x patches of the positive regions of a micro toy canvas (``render_toy_canvas("micro", 1, 3)``,
23 tiles, the raw pixels before any JPEG; per-channel mean absolute error of 255 on the cross
pixels (green the largest channel by > 10) and on all others, the kept fraction of the crosses'
tint G - (R + B) / 2, and bytes per patch)::

    patch_px  setting      cross err  other err  tint kept  bytes/patch
    64        q90 4:2:0      45.7       7.0       -1.15        2,899
    64        q95 4:2:0      45.0       5.8       -1.11        3,828
    64        q85 4:4:4      13.9       7.1        0.53        3,402
    64        q90 4:4:4       7.1       5.4        0.95        4,287
    64        q95 4:4:4       3.2       3.0        1.01        5,940
    256       q90 4:2:0      23.4       5.0        0.32       25,978
    256       q80 4:4:4       9.6       4.0        0.90       24,049
    256       q85 4:4:4       7.8       3.6        0.93       28,659
    256       q90 4:4:4       5.7       3.0        0.97       36,508
    256       q95 4:4:4       3.0       2.0        0.99       53,617

4:2:0 turns the crosses' tint around at any quality; 4:4:4 keeps most of it from quality 90
at 64 px and from 80 at 256 px (a cross spans 4x more pixels there). Store sizes of the four
default toy slides at 256 px (``benchmarks/bench_store.py``; the format-1 layout of raw pixels
with gzip takes 328 KB per tile, 13.3x the slides): q90 86 KB per tile (3.5x the slides), q85
75 KB (3.0x), q80 63 KB (2.6x). The default is 4:4:4 at quality 90 (``tiling.jpeg_quality``),
for the 64 px patches of the default config; the paper's 256 px config uses 80.
``tiling.patch_codec: png`` keeps every pixel at about 3-6x the size.

Decoding: on the CPU with imagecodecs (libjpeg-turbo / libpng, the GIL released while a patch
decodes, so a thread pool scales; the same pixels as torchvision.io's decoders, checked on the
default run's 5,493 toy patches, at about 0.13 ms per 64-px patch against 1 ms; each patch is
decoded straight into the batch array, about 0.3-0.4 ms per 256-px q90 patch on this 2-core
machine), and on CUDA
with torchvision's batched nvJPEG decode (:func:`decode_batch_cuda`). Neither tiling nor CPU
decoding imports torch or torchvision.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported where a patch is decoded: tiling never needs it
    import torch

#: Patch codecs a store may use; "jpeg" is lossy (quality 1-100), "png" lossless.
CODECS: tuple[str, ...] = ("jpeg", "png")
DEFAULT_CODEC = "jpeg"
DEFAULT_QUALITY = 90

# torchvision >= 0.29 warns that its image codecs will move to TorchCodec; they are still there
# and are the decoders shared by the CPU and the CUDA path.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning
)


def check_codec(codec: str, quality: int) -> None:
    """Raise ValueError naming the setting when ``codec`` or ``quality`` is not valid."""
    if codec not in CODECS:
        raise ValueError(f"patch codec must be one of {CODECS}, got {codec!r}")
    if not (isinstance(quality, int | np.integer) and 1 <= quality <= 100):
        raise ValueError(f"jpeg quality must be an integer in [1, 100], got {quality!r}")


def encode_patch(img: Image.Image | np.ndarray, codec: str = "jpeg", quality: int = 90) -> bytes:
    """One RGB patch (PIL image or (P, P, 3) uint8) → encoded bytes.

    JPEG with 4:4:4 chroma at ``quality``; PNG at zlib level 1 (fast, lossless).
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img, "RGB")
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, "JPEG", quality=int(quality), subsampling=0)
    elif codec == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        raise ValueError(f"patch codec must be one of {CODECS}, got {codec!r}")
    return buf.getvalue()


def decode_into(blob: np.ndarray, codec: str, out: np.ndarray) -> None:
    """Decode one encoded patch (1-D uint8) into ``out`` (P, P, 3) uint8, on the CPU."""
    import imagecodecs

    decode = imagecodecs.jpeg8_decode if codec == "jpeg" else imagecodecs.png_decode
    try:  # straight into ``out``, without a new array and a copy
        decode(blob, out=out)
    except ValueError:  # imagecodecs refuses an ``out`` of another shape
        hwc = decode(blob)
        if hwc.shape != out.shape:
            raise ValueError(
                f"decoded patch has shape {hwc.shape}, the store says {out.shape}"
            ) from None
        out[...] = hwc


def decode_batch(blobs: Sequence[np.ndarray], codec: str, out: np.ndarray) -> np.ndarray:
    """Decode ``blobs`` into ``out`` (n, P, P, 3) uint8 on the calling thread; return ``out``."""
    for i, b in enumerate(blobs):
        decode_into(b, codec, out[i])
    return out


def decode_batch_cuda(blobs: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Batched nvJPEG decode of JPEG patches → uint8 (n, 3, P, P) on ``device``."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.from_numpy(b) for b in blobs]
    imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return torch.stack(imgs)  # (n, 3, P, P)
