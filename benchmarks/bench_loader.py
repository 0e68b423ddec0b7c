"""Patch loader throughput: patches/s by thread count, against the format-1 baseline.

Builds, without OpenSlide, a format-2 store of ``--n-patches`` toy-canvas patches (micro
cohort, random ``--patch-px`` crops, JPEG 4:4:4) and the format-1 layout of the same pixels
(raw, gzip, one chunk per patch), then reads every patch of one scale in batches: the format-1
store on one thread (h5py decompresses), the format-2 store through
:func:`csmil.encoders.loader.store_batches` with 1, 2, 4, ... threads decoding on the CPU and,
on CUDA, with the batched GPU decode.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_loader.py --patch-px 256 --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from csmil import SCALES
from csmil.slides.codec import encode_patch


def toy_pixels(n: int, px: int, seed: int = 0) -> np.ndarray:
    """(n, px, px, 3) uint8 crops at random places of a micro toy canvas (crosses and all)."""
    from csmil.toy.generator import render_toy_canvas

    canvas = render_toy_canvas("micro", 1, seed, 3072).rgb
    rng = np.random.default_rng(seed)
    if px > 512:
        raise ValueError("patch_px up to 512")
    ys = rng.integers(0, 3072 - px, n)
    xs = rng.integers(0, 3072 - px, n)
    return np.stack([canvas[y : y + px, x : x + px] for y, x in zip(ys, xs, strict=True)])


def write_store(path: Path, pixels: np.ndarray, threads: int, quality: int = 90) -> Path:
    """A format-2 patch store whose three scales hold the same encoded ``pixels``."""
    from csmil.slides.patchstore import PatchStoreWriter

    with ThreadPoolExecutor(threads) as pool:
        blobs = list(pool.map(lambda p: encode_patch(p, "jpeg", quality), pixels))
    n = len(pixels)
    attrs = {"slide_id": "bench"}
    with PatchStoreWriter(path, patch_px=pixels.shape[1], attrs=attrs, quality=quality) as w:
        for lo in range(0, n, 1024):
            coords = np.stack(
                [np.arange(lo, min(n, lo + 1024)) * 256, np.zeros(min(1024, n - lo))], 1
            )
            w.append_encoded(coords, {s: blobs[lo : lo + 1024] for s in SCALES})
    return path


def write_format1(path: Path, pixels: np.ndarray) -> Path:
    """The format-1 layout: raw pixels, gzip, one chunk per patch (the baseline)."""
    import h5py

    px = pixels.shape[1]
    with h5py.File(path, "w") as h5:
        h5.create_dataset("patches/20x", data=pixels, chunks=(1, px, px, 3), compression="gzip")
    return path


def rate_format1(path: Path, batch: int) -> float:
    import h5py

    with h5py.File(path, "r") as h5:
        ds = h5["patches/20x"]
        t0 = time.perf_counter()
        for lo in range(0, ds.shape[0], batch):
            ds[lo : lo + batch]
        return ds.shape[0] / (time.perf_counter() - t0)


def rate_loader(path: Path, batch: int, threads: int, device: torch.device, decode: str) -> float:
    from csmil.encoders.loader import store_batches
    from csmil.slides.patchstore import open_patch_store

    with open_patch_store(path) as st:
        st.offsets("20x")
        t0 = time.perf_counter()
        n = 0
        for x in store_batches(st, "20x", batch, device, threads, decode):
            n += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch-px", type=int, default=256)
    ap.add_argument("--n-patches", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="best of this many reads")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the store")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    from csmil.runtime import select_device

    dev = select_device(args.device)
    print(
        f"loader: patch_px {args.patch_px}, {args.n_patches} patches, batch {args.batch_size}, "
        f"device {dev}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus, "
        f"python {sys.version.split()[0]}, torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pixels = toy_pixels(args.n_patches, args.patch_px)
        store = write_store(d / "f2.h5", pixels, max(args.threads), args.quality)
        old = write_format1(d / "f1.h5", pixels)
        per_patch = store.stat().st_size / 3 / len(pixels)
        print(f"bytes per patch: format 2 jpeg q{args.quality} {per_patch:,.0f}, "
              f"format 1 {old.stat().st_size / len(pixels):,.0f}")  # fmt: skip
        base = max(rate_format1(old, args.batch_size) for _ in range(args.repeats))
        print(
            f"{'reader':<34}{'threads':>8}{'patches/s':>11}{'vs format 1':>13}{'vs 1 thread':>13}"
        )
        print(f"{'format 1 (gzip, h5py)':<34}{1:>8}{base:>11.0f}{1.0:>12.2f}x{'':>13}")
        modes = ["cpu"] + (["cuda"] if dev.type == "cuda" else [])
        for mode in modes:
            one = None
            for t in args.threads:
                r = max(
                    rate_loader(store, args.batch_size, t, dev, mode) for _ in range(args.repeats)
                )
                one = one or r
                name = f"format 2 loader, decode {mode}"
                print(f"{name:<34}{t:>8}{r:>11.0f}{r / base:>12.2f}x{r / one:>12.2f}x")


if __name__ == "__main__":
    main()
