"""Patch batches for the encoders: one loader for SimSiam training and embedding.

Patch stores hold encoded patches (:mod:`csmil.slides.patchstore`). A batch is read as encoded
bytes and decoded on a pool of the job's threads (:func:`prefetch`: at most ``depth`` batches
ahead, so memory is a few batches whatever the cohort size; the JPEG/PNG decoders release the
GIL). Batches come out on the compute device as uint8 (B, 3, P, P) in channels-last layout:

- ``decode="cpu"``: the threads decode into (B, P, P, 3) buffers, pinned on CUDA so the copy
  to the GPU is asynchronous;
- ``decode="cuda"``: the threads only read bytes, and the batch is decoded on the GPU by
  torchvision's batched nvJPEG decode (JPEG stores only);
- ``decode="auto"``: "cuda" for JPEG stores on a CUDA device, else "cpu".

Batch contents do not depend on the number of threads. Training draws at most ``max_patches``
patches of one scale uniformly without replacement over all pretraining stores
(:class:`PatchSample`); when their encoded bytes fit in ``cache_mb`` they are read once and
held in memory (still encoded), otherwise every batch is read from the stores. Embedding reads
every patch of a store in store order (:func:`store_batches`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from csmil.runtime import progress
from csmil.slides.codec import decode_batch, decode_batch_cuda
from csmil.slides.patchstore import PatchStore, open_patch_store

T = TypeVar("T")
DECODES: tuple[str, ...] = ("auto", "cpu", "cuda")


def prefetch(
    jobs: Iterable[Callable[[], T]], threads: int = 1, depth: int | None = None
) -> Iterator[T]:
    """Run ``jobs`` on ``threads`` threads and yield their results in order.

    At most ``depth`` jobs (default ``threads + 1``) are submitted ahead of the one being
    consumed, which bounds memory to ``depth`` results.
    """
    threads = max(1, int(threads))
    depth = max(1, int(depth or threads + 1))
    it = iter(jobs)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for job in it:
            pending.append(pool.submit(job))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(nxt))
            yield result


def resolve_decode(decode: str, codec: str, device: torch.device) -> str:
    """ "cpu" or "cuda": where a batch of ``codec`` patches is decoded for ``device``."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if decode == "auto":
        return "cuda" if device.type == "cuda" and codec == "jpeg" else "cpu"
    if decode == "cuda" and (device.type != "cuda" or codec != "jpeg"):
        raise ValueError(
            f"decode='cuda' needs a CUDA device and a JPEG store, got device {device} and "
            f"codec {codec!r}; use decode='cpu'"
        )
    return decode


def batch_loader(
    fetch: Callable[[int], list[np.ndarray]],
    n_batches: int,
    codec: str,
    patch_px: int,
    device: torch.device,
    threads: int = 1,
    decode: str = "auto",
) -> Iterator[torch.Tensor]:
    """Batches ``0 .. n_batches - 1`` as uint8 (B, 3, P, P) channels-last tensors on ``device``.

    ``fetch(i)`` returns batch i's encoded patches (called on the worker threads); see the
    module docstring for ``decode``.
    """
    where = resolve_decode(decode, codec, device)
    pin = device.type == "cuda"

    def job(i: int) -> torch.Tensor | list[np.ndarray]:
        blobs = fetch(i)
        if where == "cuda":
            return blobs
        out = torch.empty((len(blobs), patch_px, patch_px, 3), dtype=torch.uint8, pin_memory=pin)
        decode_batch(blobs, codec, out.numpy())
        return out

    for item in prefetch((lambda i=i: job(i) for i in range(n_batches)), threads):
        if where == "cuda":
            x = decode_batch_cuda(item, device)  # (B, 3, P, P)
            yield x.contiguous(memory_format=torch.channels_last)
        else:
            yield item.to(device, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, P, P)


class PatchSample:
    """The drawn training patches of one scale, held encoded.

    Args:
        stores: patch stores to draw from; all must share ``patch_px`` and codec.
        scale: which patches to read.
        max_patches: draw at most this many (None: all), uniformly without replacement over
            all stores, with ``rng``; the draw is kept in store order.
        cache_mb: read the encoded bytes of all drawn patches into memory when they fit in
            this many MiB, else read every batch from the stores.
        rng: the NumPy generator of the draw (one ``choice`` call).

    Attributes ``patch_px``, ``codec``, ``n_available`` (patches of ``scale`` in all stores),
    ``refs`` ((n, 2) int64: store index, row in that store), ``nbytes`` (encoded bytes of the
    draw) and ``in_memory``.
    """

    def __init__(
        self,
        stores: Sequence[Path],
        scale: str,
        max_patches: int | None,
        cache_mb: float,
        rng: np.random.Generator,
    ) -> None:
        counts, px, codecs, sizes = [], set(), set(), []
        for path in stores:
            with open_patch_store(path) as st:
                if scale not in st.scales:
                    raise KeyError(f"{path}: no scale {scale!r}; this store has {st.scales}")
                counts.append(st.n)
                sizes.append(np.diff(st.offsets(scale)))
                if st.n:
                    px.add(st.patch_px)
                    codecs.add(st.codec)
        if len(px) > 1 or len(codecs) > 1:
            raise ValueError(
                f"patch stores differ in patch_px {sorted(px)} or codec {sorted(codecs)}; "
                "re-tile them alike"
            )
        self.patch_px = px.pop() if px else 0
        self.codec = codecs.pop() if codecs else "jpeg"
        self.n_available = int(sum(counts))
        n = self.n_available if max_patches is None else min(self.n_available, int(max_patches))
        flat = np.sort(rng.choice(self.n_available, size=n, replace=False)) if n else np.zeros(0)
        offsets = np.cumsum([0, *counts])
        store_of = np.searchsorted(offsets, flat, side="right") - 1
        self.refs = np.stack([store_of, flat - offsets[store_of]], 1).astype(np.int64)  # (n, 2)
        self.stores, self.scale = list(stores), scale
        all_sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        self.nbytes = int(all_sizes[flat.astype(np.int64)].sum()) if n else 0
        self.in_memory = self.nbytes <= cache_mb * 2**20
        self._open: dict[int, PatchStore] = {}
        self._lock = threading.Lock()
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        if self.in_memory and n:
            self._cache = self._read_all()

    def __len__(self) -> int:
        return len(self.refs)

    def encoded(self, idx: np.ndarray) -> list[np.ndarray]:
        """Encoded bytes of the drawn patches ``idx`` (positions in the draw)."""
        if self._cache is not None:
            buf, off = self._cache
            return [buf[off[i] : off[i + 1]] for i in idx]
        out: list[np.ndarray] = [None] * len(idx)  # type: ignore[list-item]
        refs = self.refs[idx]
        for s in np.unique(refs[:, 0]):
            rows = np.flatnonzero(refs[:, 0] == s)
            with self._lock:  # h5py serialises reads; the lock guards opening
                if s not in self._open:
                    self._open[s] = open_patch_store(self.stores[s])
                blobs = self._open[s].read_encoded(self.scale, refs[rows, 1])
            for r, b in zip(rows, blobs, strict=True):
                out[r] = b
        return out

    def batch(self, idx: np.ndarray) -> np.ndarray:
        """The drawn patches ``idx`` decoded on this thread → uint8 (len(idx), P, P, 3)."""
        out = np.empty((len(idx), self.patch_px, self.patch_px, 3), dtype=np.uint8)
        return decode_batch(self.encoded(idx), self.codec, out)

    def _read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Encoded bytes of all drawn patches in draw order: (buffer, (n + 1,) offsets)."""
        blobs: list[np.ndarray] = []
        for s in progress(np.unique(self.refs[:, 0]), f"reading {self.scale} patches"):
            local = self.refs[self.refs[:, 0] == s, 1]  # sorted, unique
            with open_patch_store(self.stores[s]) as st:
                blobs += st.read_encoded(self.scale, local)
        off = np.zeros(len(blobs) + 1, dtype=np.int64)
        off[1:] = np.cumsum([len(b) for b in blobs])
        return np.concatenate(blobs) if blobs else np.zeros(0, np.uint8), off

    def close(self) -> None:
        """Close the stores opened by lazy reads."""
        for st in self._open.values():
            st.close()
        self._open.clear()


def sample_batches(
    sample: PatchSample,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
    threads: int = 1,
    decode: str = "auto",
) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``order`` (a permutation of the draw) → uint8 (B, 3, P, P) on
    ``device``.

    Yields ``len(order) // batch_size`` batches (the last incomplete one is dropped); each
    batch's patches are read in draw order (sorted positions), which is store order.
    """

    def fetch(i: int) -> list[np.ndarray]:
        return sample.encoded(np.sort(order[i * batch_size : (i + 1) * batch_size]))

    n = len(order) // batch_size
    return batch_loader(fetch, n, sample.codec, sample.patch_px, device, threads, decode)


def store_batches(
    store: PatchStore,
    scale: str,
    batch_size: int,
    device: torch.device,
    threads: int = 1,
    decode: str = "auto",
) -> Iterator[torch.Tensor]:
    """Every patch of ``scale`` in an open patch store, in store order → uint8 (B, 3, P, P)
    on ``device``; the last batch holds the remainder."""

    def fetch(i: int) -> list[np.ndarray]:
        return store.read_encoded(scale, slice(i * batch_size, (i + 1) * batch_size))

    n = -(-store.n // batch_size)
    return batch_loader(fetch, n, store.codec, store.patch_px, device, threads, decode)
