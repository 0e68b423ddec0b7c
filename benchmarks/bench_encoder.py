"""Encoder steps, pipeline against the model alone: embedding and SimSiam training.

Builds, without OpenSlide, a format-2 patch store of toy-canvas patches (see
``bench_loader.py``) and measures in one run:

- embedding: :func:`csmil.encoders.embedding.embed_scale` over the store (loader + encoder, as
  the ``embed_slide`` step runs it), against the same encoder on one device-resident uint8
  batch of the same shape (normalise + forward, bf16 + channels-last on CUDA);
- SimSiam: :func:`csmil.encoders.training.train_simsiam` (loader, augmentation, step), against
  the same training step (two augmented views, forward, backward, SGD) on one device-resident
  batch; the first epoch (cuDNN autotuning) is left out of the pipeline's rate.

The ratio pipeline / model alone is the share of the device's speed the data path keeps.
Embedding counts patches per second of one scale; SimSiam counts source patches (two views).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_encoder.py --patch-px 64 --threads 2
    PYTHONPATH=src python benchmarks/bench_encoder.py --patch-px 256 --backbone resnet50 \\
        --n-patches 8192 --threads 16        # on a GPU
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_loader import toy_pixels, write_store  # noqa: E402

from csmil.encoders.augment import BatchAugment  # noqa: E402
from csmil.encoders.embedding import embed_scale  # noqa: E402
from csmil.encoders.resnet import normalize  # noqa: E402
from csmil.encoders.simsiam import SimSiam, build_backbone, load_encoder, save_encoder  # noqa: E402
from csmil.encoders.training import SimSiamSettings, history_path, train_simsiam  # noqa: E402
from csmil.io import read_tsv  # noqa: E402
from csmil.runtime import select_device, setup_logging  # noqa: E402
from csmil.slides.patchstore import open_patch_store  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def embed_model_alone(net, meta, batch: int, px: int, dev: torch.device, iters: int) -> float:
    cuda = dev.type == "cuda"
    x = torch.randint(0, 256, (batch, px, px, 3), dtype=torch.uint8, device=dev)
    x = x.permute(0, 3, 1, 2)  # (B, 3, P, P) channels-last, as the loader hands it over
    out = torch.empty((batch * iters, int(meta["feature_dim"])), device=dev)
    with torch.inference_mode():
        for i in range(iters + 2):
            if i == 2:  # two warm-up steps
                sync(dev)
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                f = net(normalize(x, meta["mean"], meta["std"]))
            if i >= 2:
                out[(i - 2) * batch : (i - 1) * batch] = f.float()
        sync(dev)
    return batch * iters / (time.perf_counter() - t0)


def embed_pipeline(store: Path, enc: Path, batch: int, dev, threads: int, decode: str):
    net, meta = load_encoder(enc, dev)
    with open_patch_store(store) as st:
        embed_scale(st, "20x", net, meta, batch, dev, "bench", threads, decode)  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        embed_scale(st, "20x", net, meta, batch, dev, "bench", threads, decode)
        sync(dev)
        return st.n / (time.perf_counter() - t0), net, meta


def simsiam_model_alone(backbone: str, batch: int, px: int, dev, steps: int) -> float:
    cuda = dev.type == "cuda"
    net, dim = build_backbone(backbone)
    model = SimSiam(net, dim).to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    aug, gen = BatchAugment(px), torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, px, px, 3), dtype=torch.uint8, device=dev).permute(0, 3, 1, 2)
    total = torch.zeros((), device=dev)
    for i in range(steps + 2):
        if i == 2:
            sync(dev)
            t0 = time.perf_counter()
        v1, v2 = normalize(aug(x, gen)), normalize(aug(x, gen))
        if cuda:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(v1, v2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
    total.item()
    return batch * steps / (time.perf_counter() - t0)


def simsiam_pipeline(store, out, args, dev, decode: str) -> float:
    settings = SimSiamSettings(
        backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size,
        warmup_epochs=0, schedule_epochs=None, cache_mb=4096,
    )  # fmt: skip
    s = train_simsiam([store], "20x", out, settings, device=str(dev.type),
                      num_threads=args.threads, decode=decode)  # fmt: skip
    hist = read_tsv(history_path(out))
    secs = hist["seconds"].iloc[1:].sum()  # without the first epoch (cuDNN autotuning)
    steps = s["n_patches"] // s["batch_size"]
    return steps * s["batch_size"] * (len(hist) - 1) / secs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch-px", type=int, default=64)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-patches", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=64, help="SimSiam batch")
    ap.add_argument("--embed-batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="SimSiam epochs (the first is warm-up)")
    ap.add_argument("--decode", nargs="+", default=["auto"], help="loader decode modes to run")
    ap.add_argument("--skip-simsiam", action="store_true")
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    setup_logging(level=logging.ERROR)
    os.environ.setdefault("CSMIL_NO_PROGRESS", "1")
    dev = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # the pipeline and the model alone alike
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    mode = f"{torch.cuda.get_device_name()}, bf16 + channels-last" if dev.type == "cuda" else "fp32"
    print(
        f"encoders: backbone {args.backbone}, patch_px {args.patch_px}, {args.n_patches} "
        f"patches, threads {args.threads}, device {dev} ({mode}), load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus, torch {torch.__version__}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        store = write_store(d / "s.h5", toy_pixels(args.n_patches, args.patch_px), args.threads)
        if not args.skip_embed:
            net, dim = build_backbone(args.backbone)
            enc = d / "enc.pt"
            save_encoder(enc, net, args.backbone, "20x", args.patch_px, dim, {})
            for decode in args.decode:
                rate, net, meta = embed_pipeline(
                    store, enc, args.embed_batch_size, dev, args.threads, decode
                )
                alone = embed_model_alone(
                    net, meta, args.embed_batch_size, args.patch_px, dev,
                    iters=max(3, min(50, args.n_patches // args.embed_batch_size)),
                )  # fmt: skip
                rows.append((f"embedding, decode {decode}", args.embed_batch_size, rate, alone))
                print(f"  {rows[-1][0]}: pipeline {rate:.0f}/s, model {alone:.0f}/s", flush=True)
        if not args.skip_simsiam:
            steps = max(3, min(30, args.n_patches // args.batch_size))
            alone = simsiam_model_alone(args.backbone, args.batch_size, args.patch_px, dev, steps)
            for decode in args.decode:
                rate = simsiam_pipeline(store, d / f"ss_{decode}.pt", args, dev, decode)
                rows.append((f"simsiam, decode {decode}", args.batch_size, rate, alone))
                print(f"  {rows[-1][0]}: pipeline {rate:.0f}/s, model {alone:.0f}/s", flush=True)
    print(f"{'step':<28}{'batch':>7}{'pipeline/s':>12}{'model alone/s':>15}{'ratio':>8}")
    for name, bs, rate, alone in rows:
        print(f"{name:<28}{bs:>7}{rate:>12.1f}{alone:>15.1f}{rate / alone:>7.2f}x")


if __name__ == "__main__":
    main()
