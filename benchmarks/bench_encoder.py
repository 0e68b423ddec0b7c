"""Throughput of the encoder steps: SimSiam training and embedding, in patches per second.

Builds a synthetic patch store (random structured patches), trains a SimSiam encoder on it and
embeds it, then prints a table. Training counts source patches per second (each patch gives two
augmented views through the network); embedding counts patch-scale pairs per second.

    .venv/bin/python benchmarks/bench_encoder.py --patch-px 64 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from csmil import SCALES
from csmil.encoders.embedding import embed_slide
from csmil.encoders.training import SimSiamSettings, train_simsiam
from csmil.runtime import select_device, setup_logging
from csmil.slides.patchstore import PatchStoreWriter


def make_store(path: Path, n: int, px: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px]
    with PatchStoreWriter(path, patch_px=px, attrs={"slide_id": "bench"}) as w:
        for lo in range(0, n, 256):
            m = min(256, n - lo)
            period = rng.integers(3, 16, size=(m, 1, 1))
            wave = np.sin(2 * np.pi * (xx + yy)[None] / period)[..., None]  # (m, P, P, 1)
            base = rng.uniform(40, 215, size=(m, 1, 1, 3)) + 40 * wave
            img = np.clip(base + rng.normal(0, 8, (m, px, px, 3)), 0, 255).astype(np.uint8)
            coords = np.stack([np.arange(lo, lo + m) * 256, np.zeros(m)], 1)
            w.append(coords, {s: img for s in SCALES})
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch-px", type=int, default=64)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-patches", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--embed-batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    setup_logging(level=logging.ERROR)  # one encoder serves all scales here
    os.environ.setdefault("CSMIL_NO_PROGRESS", "1")
    dev = select_device(args.device)
    with tempfile.TemporaryDirectory() as d:
        store = make_store(Path(d) / "bench.h5", args.n_patches, args.patch_px)
        settings = SimSiamSettings(
            backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size,
            warmup_epochs=0, schedule_epochs=None,
        )  # fmt: skip
        train = train_simsiam([store], "20x", Path(d) / "20x.pt", settings,
                              device=args.device, num_threads=args.threads)  # fmt: skip
        enc = {s: Path(d) / "20x.pt" for s in SCALES}
        embed_slide(store, enc, Path(d) / "warm.h5", batch_size=args.embed_batch_size,
                    device=args.device, num_threads=args.threads)  # fmt: skip
        emb = embed_slide(store, enc, Path(d) / "f.h5", batch_size=args.embed_batch_size,
                          device=args.device, num_threads=args.threads)  # fmt: skip
    rows = [
        ("simsiam train (2 views)", args.batch_size, train["patches_per_s"]),
        ("embed (per patch-scale)", args.embed_batch_size, emb["patches_per_s"]),
    ]
    out = sys.stdout
    out.write(
        f"backbone={args.backbone} patch_px={args.patch_px} threads={args.threads} "
        f"device={dev} n_patches={args.n_patches} host={platform.node()}\n"
    )
    out.write(f"{'step':<26}{'batch':>7}{'patches/s':>12}\n")
    for name, bs, rate in rows:
        out.write(f"{name:<26}{bs:>7}{rate:>12.1f}\n")


if __name__ == "__main__":
    main()
