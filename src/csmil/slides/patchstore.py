"""The patch store: one HDF5 file per slide holding co-centred multi-scale patches.

Layout (format version 2)::

    /coords                   (N, 2) int64  level-0 (x, y) of the top-left corner of the 20x
                                            patch; attrs: patch_level=0, patch_size=<20x field
                                            in level-0 px>
    /patches/{scale}/bytes    (M,) uint8    the scale's N encoded patches, back to back
    /patches/{scale}/offsets  (N + 1,) int64  patch i is bytes[offsets[i]:offsets[i + 1]]
    attrs: format, format_version (2), codec ("jpeg" or "png", see :mod:`csmil.slides.codec`),
           jpeg_quality, slide_id, slide_path, mpp (level-0 µm/px), patch_px, scale_names,
           scales (JSON: per scale its read level, level downsample, field in level-0 px and
           the µm/px of the stored pixels), n_patches, csmil_version, plus tiling settings.
           Written by tiling for quality control (:mod:`csmil.slides.qc`): tissue_fraction
           (0-1 of the slide), mpp_source ("slide_metadata", "sample_sheet" or
           "objective_power"), level_downsamples (the slide's pyramid) and, per scale in
           scales, read_mpp (µm/px of the level read) and upsampled (stored pixels finer than
           the slide's). Stores written before these were recorded lack them and still open.

Every patch is (patch_px, patch_px, 3) RGB once decoded. ``coords`` follows CLAM's naming so
CLAM-style tools can read the tile grid. N may be 0: a slide without tissue yields a valid,
empty store. Format 1 (raw pixels, gzip, one chunk per patch; about 12x its slide's size) is
refused with a message to re-tile. This module is the only one that opens patch stores with
h5py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from csmil import SCALES, __version__
from csmil.io import atomic_path
from csmil.slides.codec import (
    DEFAULT_CODEC,
    DEFAULT_QUALITY,
    check_codec,
    decode_batch,
    encode_patch,
)

FORMAT = "csmil-patches"
FORMAT_VERSION = 2
_BYTES_CHUNK = 2**16  # 64 KiB chunks: the last, partly filled chunk of a scale wastes little


class PatchStoreWriter:
    """Stream patches into a new patch store; the file appears under its name on ``close``.

    Use as a context manager::

        with PatchStoreWriter(out, patch_px=64, scales=SCALES, attrs={...}) as w:
            w.append(coords, {"20x": p20, "10x": p10, "5x": p5})  # pixels, encoded here
            w.append_encoded(coords, {"20x": [b"...", ...], ...})  # already encoded

    ``codec`` and ``quality`` are those of :mod:`csmil.slides.codec` (JPEG 4:4:4, quality 90
    by default; "png" is lossless).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        patch_px: int,
        scales: tuple[str, ...] = SCALES,
        attrs: Mapping[str, Any] | None = None,
        codec: str = DEFAULT_CODEC,
        quality: int = DEFAULT_QUALITY,
    ) -> None:
        check_codec(codec, quality)
        self.path = Path(path)
        self.patch_px = int(patch_px)
        self.scales = tuple(scales)
        self.codec, self.quality = codec, int(quality)
        self._attrs = dict(attrs or {})
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._h5 = h5py.File(self._tmp, "w")
        self._n = 0
        self._coords = self._h5.create_dataset(
            "coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64, chunks=(4096, 2)
        )
        self._bytes, self._offsets, self._end = {}, {}, {}
        for s in self.scales:
            self._bytes[s] = self._h5.create_dataset(
                f"patches/{s}/bytes", shape=(0,), maxshape=(None,), dtype=np.uint8,
                chunks=(_BYTES_CHUNK,),
            )  # fmt: skip
            self._offsets[s] = self._h5.create_dataset(
                f"patches/{s}/offsets", data=np.zeros(1, np.int64), maxshape=(None,),
                chunks=(4096,),
            )  # fmt: skip
            self._end[s] = 0

    def append(self, coords: np.ndarray, patches: Mapping[str, np.ndarray]) -> None:
        """Append n patches given as pixels: ``coords`` (n, 2) int, ``patches[scale]``
        (n, P, P, 3) uint8; each patch is encoded with the store's codec."""
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        n = len(coords)
        self._check_scales(patches)
        for s, arr in patches.items():
            if arr.shape != (n, self.patch_px, self.patch_px, 3) or arr.dtype != np.uint8:
                raise ValueError(
                    f"patches[{s!r}] must be uint8 of shape {(n, self.patch_px, self.patch_px, 3)},"
                    f" got {arr.dtype} {arr.shape}"
                )
        encoded = {
            s: [encode_patch(p, self.codec, self.quality) for p in arr]
            for s, arr in patches.items()
        }
        self.append_encoded(coords, encoded)

    def append_encoded(self, coords: np.ndarray, encoded: Mapping[str, Sequence[bytes]]) -> None:
        """Append n patches already encoded with the store's codec and quality:
        ``encoded[scale]`` is a sequence of n byte strings, each one (P, P, 3) RGB patch."""
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        n = len(coords)
        self._check_scales(encoded)
        for s, blobs in encoded.items():
            if len(blobs) != n:
                raise ValueError(f"encoded[{s!r}] has {len(blobs)} patches for {n} coordinates")
        if n == 0:
            return
        lo, hi = self._n, self._n + n
        self._coords.resize((hi, 2))
        self._coords[lo:hi] = coords
        for s, blobs in encoded.items():
            sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=n)
            ends = self._end[s] + np.cumsum(sizes)
            data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
            ds, off = self._bytes[s], self._offsets[s]
            ds.resize((int(ends[-1]),))
            ds[self._end[s] : int(ends[-1])] = data
            off.resize((hi + 1,))
            off[lo + 1 : hi + 1] = ends
            self._end[s] = int(ends[-1])
        self._n = hi

    def _check_scales(self, patches: Mapping[str, Any]) -> None:
        if set(patches) != set(self.scales):
            raise ValueError(f"patches must have scales {self.scales}, got {sorted(patches)}")

    def close(self, ok: bool = True) -> None:
        """Write the attributes and move the file into place (or discard it if not ``ok``)."""
        if self._h5 is None:
            return
        attrs = {
            **self._attrs,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "codec": self.codec,
            "jpeg_quality": self.quality,
            "patch_px": self.patch_px,
            "scale_names": json.dumps(list(self.scales)),
            "n_patches": self._n,
            "csmil_version": __version__,
        }
        for k, v in attrs.items():
            self._h5.attrs[k] = json.dumps(v) if isinstance(v, dict | list) else v
        self._coords.attrs["patch_level"] = 0
        if "patch_size" in self._attrs:
            self._coords.attrs["patch_size"] = self._attrs["patch_size"]
        self._h5.close()
        self._h5 = None
        if ok:
            self._atomic.__exit__(None, None, None)
        else:
            err = RuntimeError("patch store discarded")
            self._atomic.__exit__(type(err), err, None)

    def __enter__(self) -> PatchStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


@dataclass
class PatchStore:
    """Read access to a patch store. Open with :func:`open_patch_store`; close when done.

    Encoded reads (:meth:`read_encoded`) return each patch's bytes; pixel reads (:meth:`read`,
    :meth:`iter_batches`) decode them on the calling thread. Batch loaders that decode on
    several threads or on the GPU are in :mod:`csmil.encoders.loader`.
    """

    path: Path
    h5: h5py.File
    _offsets: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def attrs(self) -> dict[str, Any]:
        out = {}
        for k, v in self.h5.attrs.items():
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    pass
            out[k] = v.item() if isinstance(v, np.generic) else v
        return out

    @property
    def n(self) -> int:
        return int(self.h5["coords"].shape[0])

    @property
    def patch_px(self) -> int:
        return int(self.h5.attrs["patch_px"])

    @property
    def codec(self) -> str:
        return str(self.h5.attrs["codec"])

    @property
    def scales(self) -> tuple[str, ...]:
        return tuple(json.loads(self.h5.attrs["scale_names"]))

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 top-left corners of the 20x patches."""
        return self.h5["coords"][:]

    def offsets(self, scale: str) -> np.ndarray:
        """(N + 1,) int64 byte offsets of the ``scale`` patches in its bytes dataset."""
        if scale not in self._offsets:
            self._offsets[scale] = self._group(scale)["offsets"][:]
        return self._offsets[scale]

    def encoded_nbytes(self, scale: str) -> int:
        """Bytes of all encoded ``scale`` patches."""
        return int(self.offsets(scale)[-1])

    def read_encoded(self, scale: str, index: slice | np.ndarray | None = None) -> list[np.ndarray]:
        """Encoded patches of one scale, a list of 1-D uint8 arrays in ``index`` order.

        A contiguous ``slice`` (step 1) is one read; an index array reads each run of
        consecutive rows at once. Repeated and unsorted indices are allowed.
        """
        off, ds = self.offsets(scale), self._group(scale)["bytes"]
        n = len(off) - 1
        if index is None:
            index = slice(0, n)
        if isinstance(index, slice):
            lo, hi, step = index.indices(n)
            if step != 1:
                return self.read_encoded(scale, np.arange(lo, hi, step))
            if hi <= lo:
                return []
            buf = ds[off[lo] : off[hi]]
            rel = off[lo : hi + 1] - off[lo]
            return [buf[rel[i] : rel[i + 1]] for i in range(hi - lo)]
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"{self.path}: patch index out of range [0, {n}) for {scale}")
        uniq = np.unique(index)
        blobs: dict[int, np.ndarray] = {}
        # runs of consecutive rows: one read each
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        for run in np.split(uniq, breaks) if len(uniq) else []:
            lo, hi = int(run[0]), int(run[-1]) + 1
            buf = ds[off[lo] : off[hi]]
            for i in range(lo, hi):
                blobs[i] = buf[off[i] - off[lo] : off[i + 1] - off[lo]]
        return [blobs[int(i)] for i in index]

    def read(self, scale: str, index: slice | np.ndarray | None = None) -> np.ndarray:
        """Decoded patches of one scale, (n, P, P, 3) uint8; all of them when ``index`` is
        None. Decodes on the calling thread."""
        blobs = self.read_encoded(scale, index)
        out = np.empty((len(blobs), self.patch_px, self.patch_px, 3), dtype=np.uint8)
        return decode_batch(blobs, self.codec, out)

    def iter_batches(self, scale: str, batch_size: int) -> Iterator[np.ndarray]:
        """Stream the decoded patches of one scale in order, ``batch_size`` at a time."""
        for lo in range(0, self.n, batch_size):
            yield self.read(scale, slice(lo, lo + batch_size))

    def _group(self, scale: str) -> h5py.Group:
        if scale not in self.scales:
            raise KeyError(f"{self.path}: no scale {scale!r}; this store has {self.scales}")
        return self.h5[f"patches/{scale}"]

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> PatchStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_patch_store(path: str | os.PathLike) -> PatchStore:
    """Open a patch store for reading, checking its format and version.

    A format-1 store (raw pixels) raises ValueError saying to delete it and re-tile.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"patch store {path} does not exist; run the tile step first")
    # No POSIX lock: read-only, and locks fail or hang on some cluster filesystems.
    h5 = h5py.File(path, "r", locking=False)
    fmt, ver = h5.attrs.get("format"), h5.attrs.get("format_version")
    if fmt == FORMAT and ver == 1:
        h5.close()
        raise ValueError(
            f"{path} is a format-1 patch store (raw pixels, written by an older csmil); this "
            f"version reads format {FORMAT_VERSION} (encoded patches). Re-tile the slide: "
            f"delete {path} and re-run the tile step (snakemake re-runs tile_slide for a "
            "missing store; by hand: csmil tile SLIDE OUT.h5)"
        )
    if fmt != FORMAT or ver != FORMAT_VERSION:
        h5.close()
        raise ValueError(
            f"{path} is not a csmil patch store of version {FORMAT_VERSION} "
            f"(format={fmt!r}, version={ver!r}); re-run the tile step"
        )
    return PatchStore(path, h5)
