"""The patch store: one HDF5 file per slide holding co-centred multi-scale patches.

Layout (format version 1)::

    /coords              (N, 2) int64   level-0 (x, y) of the top-left corner of the 20x patch
                                         attrs: patch_level=0, patch_size=<20x field in level-0 px>
    /patches/20x         (N, P, P, 3) uint8, chunked one patch per chunk, gzip-compressed
    /patches/10x         (N, P, P, 3) uint8
    /patches/5x          (N, P, P, 3) uint8
    attrs: format, format_version, slide_id, slide_path, mpp (level-0 µm/px), patch_px,
           scales (JSON: per scale its read level, level downsample, field in level-0 px and
           the µm/px of the stored pixels), n_patches, csmil_version, plus tiling settings.

``coords`` follows CLAM's naming so CLAM-style tools can read the tile grid. N may be 0: a
slide without tissue yields a valid, empty store. This module is the only one that opens patch
stores with h5py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from csmil import SCALES, __version__
from csmil.io import atomic_path

FORMAT = "csmil-patches"
FORMAT_VERSION = 1


class PatchStoreWriter:
    """Stream patches into a new patch store; the file appears under its name on ``close``.

    Use as a context manager::

        with PatchStoreWriter(out, patch_px=64, scales=SCALES, attrs={...}) as w:
            w.append(coords, {"20x": p20, "10x": p10, "5x": p5})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        patch_px: int,
        scales: tuple[str, ...] = SCALES,
        attrs: Mapping[str, Any] | None = None,
        compression: str = "gzip",
    ) -> None:
        self.path = Path(path)
        self.patch_px = int(patch_px)
        self.scales = tuple(scales)
        self._attrs = dict(attrs or {})
        self._compression = compression
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._h5 = h5py.File(self._tmp, "w")
        self._n = 0
        p = self.patch_px
        self._coords = self._h5.create_dataset(
            "coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64, chunks=(4096, 2)
        )
        self._patches = {
            s: self._h5.create_dataset(
                f"patches/{s}",
                shape=(0, p, p, 3),
                maxshape=(None, p, p, 3),
                dtype=np.uint8,
                chunks=(1, p, p, 3),
                compression=compression,
            )
            for s in self.scales
        }

    def append(self, coords: np.ndarray, patches: Mapping[str, np.ndarray]) -> None:
        """Append n patches: ``coords`` (n, 2) int, ``patches[scale]`` (n, P, P, 3) uint8."""
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        n = len(coords)
        if set(patches) != set(self.scales):
            raise ValueError(f"patches must have scales {self.scales}, got {sorted(patches)}")
        for s, arr in patches.items():
            if arr.shape != (n, self.patch_px, self.patch_px, 3) or arr.dtype != np.uint8:
                raise ValueError(
                    f"patches[{s!r}] must be uint8 of shape {(n, self.patch_px, self.patch_px, 3)},"
                    f" got {arr.dtype} {arr.shape}"
                )
        if n == 0:
            return
        lo, hi = self._n, self._n + n
        self._coords.resize((hi, 2))
        self._coords[lo:hi] = coords
        for s, ds in self._patches.items():
            ds.resize((hi, self.patch_px, self.patch_px, 3))
            ds[lo:hi] = patches[s]
        self._n = hi

    def close(self, ok: bool = True) -> None:
        """Write the attributes and move the file into place (or discard it if not ``ok``)."""
        if self._h5 is None:
            return
        attrs = {
            **self._attrs,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
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
    """Read access to a patch store. Open with :func:`open_patch_store`; close when done."""

    path: Path
    h5: h5py.File

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
    def scales(self) -> tuple[str, ...]:
        return tuple(json.loads(self.h5.attrs["scale_names"]))

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 top-left corners of the 20x patches."""
        return self.h5["coords"][:]

    def read(self, scale: str, index: slice | np.ndarray | None = None) -> np.ndarray:
        """Patches of one scale, (n, P, P, 3) uint8; all of them when ``index`` is None."""
        ds = self._dataset(scale)
        if index is None:
            return ds[:]
        if isinstance(index, np.ndarray):
            if len(index) == 0:
                return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
            # h5py wants increasing, unique indices
            uniq, inverse = np.unique(index, return_inverse=True)
            return ds[uniq][inverse]
        return ds[index]

    def iter_batches(self, scale: str, batch_size: int) -> Iterator[np.ndarray]:
        """Stream the patches of one scale in order, ``batch_size`` at a time."""
        ds = self._dataset(scale)
        for lo in range(0, ds.shape[0], batch_size):
            yield ds[lo : lo + batch_size]

    def _dataset(self, scale: str) -> h5py.Dataset:
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
    """Open a patch store for reading, checking its format and version."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"patch store {path} does not exist; run the tile step first")
    h5 = h5py.File(path, "r")
    fmt, ver = h5.attrs.get("format"), h5.attrs.get("format_version")
    if fmt != FORMAT or ver != FORMAT_VERSION:
        h5.close()
        raise ValueError(
            f"{path} is not a csmil patch store of version {FORMAT_VERSION} "
            f"(format={fmt!r}, version={ver!r}); re-run the tile step"
        )
    return PatchStore(path, h5)
