"""Patch batches for the encoders: the drawn training patches of SimSiam and a slide's patches
for embedding, read from patch stores and handed over as uint8 tensors (B, P, P, 3).

Training draws at most ``max_patches`` patches of one scale uniformly without replacement over
all pretraining stores (:class:`PatchSample`). When the drawn patches fit in ``cache_mb`` they
are read once and held in memory as uint8; otherwise each batch is read lazily from the stores,
so memory stays bounded by one batch whatever the cohort size. Embedding streams every patch
of a store in store order (:func:`store_batches`). Both overlap reading with compute through
:func:`prefetch`; on CUDA the batches are pinned for asynchronous copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from csmil.runtime import progress
from csmil.slides.patchstore import PatchStore, open_patch_store

T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` while a background thread produces the next ones (I/O overlap)."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(next, it, None) for _ in range(depth)]
        while True:
            item = futures.pop(0).result()
            if item is None:
                return
            futures.append(pool.submit(next, it, None))
            yield item


class PatchSample:
    """The drawn training patches of one scale; ``batch(idx)`` → uint8 (B, P, P, 3).

    Args:
        stores: patch stores to draw from; all must share ``patch_px``.
        scale: which patches to read.
        max_patches: draw at most this many (None: all), uniformly without replacement over
            all stores, with ``rng``; the draw is kept in store order.
        cache_mb: read all drawn patches into memory when their uint8 pixels fit in this many
            MiB, else read every batch from the stores.
        rng: the NumPy generator of the draw (one ``choice`` call).

    Attributes ``patch_px``, ``n_available`` (patches of ``scale`` in all stores), ``refs``
    ((n, 2) int64: store index, row in that store) and ``in_memory``.
    """

    def __init__(
        self,
        stores: Sequence[Path],
        scale: str,
        max_patches: int | None,
        cache_mb: float,
        rng: np.random.Generator,
    ) -> None:
        counts, px = [], set()
        for path in stores:
            with open_patch_store(path) as st:
                if scale not in st.scales:
                    raise KeyError(f"{path}: no scale {scale!r}; this store has {st.scales}")
                counts.append(st.n)
                if st.n:
                    px.add(st.patch_px)
        if len(px) > 1:
            raise ValueError(f"patch stores differ in patch_px {sorted(px)}; re-tile them alike")
        self.patch_px = px.pop() if px else 0
        self.n_available = int(sum(counts))
        n = self.n_available if max_patches is None else min(self.n_available, int(max_patches))
        flat = np.sort(rng.choice(self.n_available, size=n, replace=False)) if n else np.zeros(0)
        offsets = np.cumsum([0, *counts])
        store_of = np.searchsorted(offsets, flat, side="right") - 1
        self.refs = np.stack([store_of, flat - offsets[store_of]], 1).astype(np.int64)  # (n, 2)
        self.stores, self.scale = list(stores), scale
        self.in_memory = n * self.patch_px**2 * 3 <= cache_mb * 2**20
        self._open: dict[int, PatchStore] = {}
        self._counts = counts
        self._cache = self._read_all() if self.in_memory and n else None

    def __len__(self) -> int:
        return len(self.refs)

    def batch(self, idx: np.ndarray) -> np.ndarray:
        """The drawn patches ``idx`` (positions in the draw) → uint8 (len(idx), P, P, 3)."""
        return self._cache[idx] if self._cache is not None else self._read(idx)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.patch_px, self.patch_px, 3), dtype=np.uint8)
        refs = self.refs[idx]
        for s in np.unique(refs[:, 0]):
            rows = np.flatnonzero(refs[:, 0] == s)
            if s not in self._open:
                self._open[s] = open_patch_store(self.stores[s])
            out[rows] = self._open[s].read(self.scale, refs[rows, 1])
        return out

    def _read_all(self) -> np.ndarray:
        """All drawn patches, store by store. A store of which at least a tenth is drawn is
        read in contiguous blocks (decompressing every chunk once is then cheaper than
        h5py's point selections); a sparsely drawn one by index, in blocks."""
        out = np.empty((len(self.refs), self.patch_px, self.patch_px, 3), dtype=np.uint8)
        block = 1024
        for s in progress(np.unique(self.refs[:, 0]), f"reading {self.scale} patches"):
            rows = np.flatnonzero(self.refs[:, 0] == s)
            local = self.refs[rows, 1]  # sorted, unique
            with open_patch_store(self.stores[s]) as st:
                if len(local) * 10 >= self._counts[s]:
                    for lo, arr in enumerate(st.iter_batches(self.scale, block)):
                        lo *= block
                        sel = (local >= lo) & (local < lo + len(arr))
                        out[rows[sel]] = arr[local[sel] - lo]
                else:
                    for i in range(0, len(local), block):
                        out[rows[i : i + block]] = st.read(self.scale, local[i : i + block])
        return out

    def close(self) -> None:
        """Close the stores opened by lazy reads."""
        for st in self._open.values():
            st.close()
        self._open.clear()


def sample_batches(
    sample: PatchSample, order: np.ndarray, batch_size: int, pin: bool = False
) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``order`` (a permutation of the draw) → uint8 (B, P, P, 3).

    Yields ``len(order) // batch_size`` batches (the last incomplete one is dropped); each
    batch's patches are read in draw order (sorted positions), which is store order. ``pin``
    pins the batch in page-locked memory for an asynchronous copy to CUDA.
    """
    for i in range(len(order) // batch_size):
        idx = np.sort(order[i * batch_size : (i + 1) * batch_size])
        x = torch.from_numpy(sample.batch(idx))
        yield x.pin_memory() if pin else x


def store_batches(
    store: PatchStore, scale: str, batch_size: int, pin: bool = False
) -> Iterator[torch.Tensor]:
    """Every patch of ``scale`` in an open patch store, in store order → uint8 (B, P, P, 3).

    The last batch holds the remainder. ``pin`` pins each batch for an asynchronous copy.
    """
    for b in store.iter_batches(scale, batch_size):
        x = torch.from_numpy(b)  # (B, P, P, 3) uint8
        yield x.pin_memory() if pin else x
