"""The encoders' patch loader: threaded decoding, bounded prefetch, identical batches."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from csmil import SCALES
from csmil.encoders.loader import (
    PatchSample,
    prefetch,
    resolve_decode,
    sample_batches,
    store_batches,
)
from csmil.slides.patchstore import PatchStoreWriter, open_patch_store

PX = 24


def make_store(path, n, seed=0, codec="jpeg"):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:PX, :PX]
    patches = {}
    for s in SCALES:
        colour = rng.uniform(40, 215, size=(n, 1, 1, 3))
        wave = np.sin((xx + yy)[None] / rng.uniform(2, 6, size=(n, 1, 1)))[..., None]
        patches[s] = np.clip(colour + 30 * wave, 0, 255).astype(np.uint8)
    with PatchStoreWriter(path, patch_px=PX, codec=codec) as w:
        w.append(np.stack([np.arange(n), np.zeros(n)], 1), patches)
    return path


def test_prefetch_keeps_order_and_bounds_work_ahead():
    started, lock = [], threading.Lock()

    def job(i):
        def run():
            with lock:
                started.append(i)
            return i

        return run

    got = []
    for i, r in enumerate(prefetch((job(i) for i in range(20)), threads=3, depth=4)):
        time.sleep(0.01)  # a slow consumer: the pool must not run ahead of ``depth``
        with lock:
            assert len(started) <= i + 1 + 4
        got.append(r)
    assert got == list(range(20))


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_store_batches_same_for_any_thread_count(tmp_path, codec):
    path = make_store(tmp_path / "s.h5", 23, codec=codec)
    cpu = torch.device("cpu")
    with open_patch_store(path) as st:
        ref = torch.from_numpy(st.read("10x")).permute(0, 3, 1, 2)
        runs = [list(store_batches(st, "10x", 5, cpu, threads=t)) for t in (1, 2, 4)]
    for batches in runs:
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        x = torch.cat(batches)
        assert x.dtype == torch.uint8 and x.shape == (23, 3, PX, PX)
        assert torch.equal(x, ref)
        assert batches[0].is_contiguous(memory_format=torch.channels_last)


def test_sample_batches_same_for_threads_and_cache(tmp_path):
    stores = [make_store(tmp_path / "a.h5", 17, 1), make_store(tmp_path / "b.h5", 9, 2)]
    order = np.random.default_rng(3).permutation(20)
    out = []
    for cache_mb, threads in ((64, 1), (64, 3), (0, 1), (0, 2)):
        sample = PatchSample(stores, "5x", 20, cache_mb, np.random.default_rng(0))
        assert sample.in_memory == (cache_mb > 0) and 0 < sample.nbytes < 20 * PX * PX * 3
        out.append(list(sample_batches(sample, order, 6, torch.device("cpu"), threads)))
        sample.close()
    assert all(len(b) == 3 for b in out)  # 20 // 6, the last incomplete batch dropped
    for batches in out[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out[0], batches, strict=True))


def test_decode_choice_is_validated():
    cpu = torch.device("cpu")
    assert resolve_decode("auto", "jpeg", cpu) == "cpu"
    with pytest.raises(ValueError, match="decode='cuda' needs a CUDA device"):
        resolve_decode("cuda", "jpeg", cpu)
    with pytest.raises(ValueError, match="decode must be one of"):
        resolve_decode("gpu", "jpeg", cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_matches_cpu_decode(tmp_path):
    path = make_store(tmp_path / "s.h5", 12)
    dev = torch.device("cuda")
    with open_patch_store(path) as st:
        cpu = torch.cat(list(store_batches(st, "20x", 5, dev, threads=2, decode="cpu")))
        gpu = torch.cat(list(store_batches(st, "20x", 5, dev, threads=2, decode="cuda")))
    assert gpu.shape == cpu.shape and gpu.device.type == "cuda"
    assert (gpu.int() - cpu.int()).abs().float().mean() < 1.5  # nvJPEG vs libjpeg IDCT
