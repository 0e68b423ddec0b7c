"""Patch store size and tiling speed (needs OpenSlide).

1. Store size: default toy slides (micro and macro, both labels, 3072 px) tiled at
   ``--patch-px`` with JPEG at each ``--quality``, and the same patches in the format-1 layout
   (raw pixels, gzip, one chunk per patch) as the baseline: bytes per tile and store/slide.
2. Tiling a large synthetic slide (the toy canvas repeated to ``--large-px`` square, written as
   an Aperio SVS) against a one-pass read of the level-0 area its tissue tiles cover, each in a
   fresh process with its peak resident memory; the same on a slide of half the side shows
   whether memory stays flat in slide size.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_store.py --patch-px 256 --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from csmil.runtime import setup_logging, status_mb


def store_sizes(d: Path, patch_px: int, qualities: list[int], threads: int) -> None:
    import h5py

    from csmil.slides.patchstore import open_patch_store
    from csmil.slides.tiling import tile_slide
    from csmil.toy.generator import make_toy_slide

    slides = []
    for i, (cohort, label) in enumerate([("micro", 0), ("micro", 1), ("macro", 0), ("macro", 1)]):
        svs = d / f"{cohort}{label}.svs"
        make_toy_slide(svs, d / f"{cohort}{label}.png", cohort, label, seed=i)
        slides.append(svs)
    slide_bytes = sum(s.stat().st_size for s in slides)
    rows = []
    n_tiles = 0
    for q in qualities:
        size = 0
        n_tiles = 0
        for s in slides:
            out = d / f"{s.stem}_q{q}.h5"
            r = tile_slide(s, out, patch_px=patch_px, jpeg_quality=q, num_threads=threads)
            size += out.stat().st_size
            n_tiles += r["n_tiles"]
        rows.append((f"format 2, jpeg q{q} 4:4:4", size))
    size1 = 0
    for s in slides:  # format 1: the same patches as raw pixels, gzip, one chunk per patch
        png = d / f"{s.stem}_png.h5"
        tile_slide(s, png, patch_px=patch_px, codec="png", num_threads=threads)
        size2 = png.stat().st_size
        old = d / f"{s.stem}_f1.h5"
        with open_patch_store(png) as st, h5py.File(old, "w") as h5:
            h5.create_dataset("coords", data=st.coords)
            for sc in st.scales:
                h5.create_dataset(
                    f"patches/{sc}", data=st.read(sc), chunks=(1, patch_px, patch_px, 3),
                    compression="gzip",
                )  # fmt: skip
        size1 += old.stat().st_size
        rows.append(("format 2, png", size2)) if s == slides[0] else None
    rows.insert(0, ("format 1 (raw, gzip)", size1))
    print(f"\n== store size: {len(slides)} default toy slides, {n_tiles} tiles, "
          f"patch_px {patch_px}, slides {slide_bytes / 1e6:.2f} MB")  # fmt: skip
    print(f"{'layout':<28}{'MB':>9}{'KB/tile':>10}{'store/slide':>13}{'vs format 1':>13}")
    for name, size in rows:
        if name == "format 2, png":
            continue  # only the first slide was measured; not comparable
        print(
            f"{name:<28}{size / 1e6:>9.2f}{size / n_tiles / 1e3:>10.1f}"
            f"{size / slide_bytes:>13.2f}{size1 / size:>12.1f}x"
        )


def _maxrss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include the parent's
    peak from before the exec), MB."""
    peak = status_mb("VmHWM")
    return peak if np.isfinite(peak) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tile_job(svs: str, out: str, patch_px: int, threads: int, q) -> None:
    from csmil.slides.tiling import tile_slide

    setup_logging(level=40)
    r = tile_slide(svs, out, patch_px=patch_px, num_threads=threads)
    q.put({"seconds": r["seconds"], "n_tiles": r["n_tiles"], "rss_mb": _maxrss_mb()})


def _read_job(svs: str, patch_px: int, q) -> None:
    """Read once, in row strips one tile high, the level-0 area of the slide's tissue tiles."""
    from csmil.slides.reader import open_slide, read_region_rgb, slide_mpp
    from csmil.slides.tiling import tile_size_level0, tile_tissue_fraction
    from csmil.slides.tissue import TissueParams, slide_tissue_mask

    slide = open_slide(svs)
    mpp = slide_mpp(slide, None)
    tile = tile_size_level0(mpp)
    w, h = slide.dimensions
    mask, ds, _ = slide_tissue_mask(slide, 8.0, TissueParams(), mpp_override=mpp)
    keep = tile_tissue_fraction(mask, ds, tile, h // tile, w // tile) >= 0.25
    t0 = time.perf_counter()
    px = 0
    for r in np.flatnonzero(keep.any(1)):
        cols = np.flatnonzero(keep[r])
        width = (cols[-1] + 1 - cols[0]) * tile
        for x0 in range(cols[0] * tile, cols[0] * tile + width, 4096):  # ~16 Mpx regions
            cw = min(4096, cols[0] * tile + width - x0)
            px += read_region_rgb(slide, (x0, r * tile), 0, (cw, tile)).shape[1] * tile
    q.put({"seconds": time.perf_counter() - t0, "mpx": px / 1e6, "rss_mb": _maxrss_mb()})


def _in_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def large_slide(d: Path, side: int, patch_px: int, threads: int) -> None:
    from csmil.toy.generator import render_toy_canvas
    from csmil.toy.svs import write_aperio_svs

    canvas = render_toy_canvas("micro", 1, 0, 3072).rgb
    print(f"\n== tiling a large slide at {patch_px} px ({threads} threads) vs one read")
    print(f"{'slide px':>10}{'tiles':>8}{'tile s':>9}{'tiles/s':>9}{'tile MB':>9}"
          f"{'read s':>8}{'read Mpx':>10}{'read MB':>9}{'tile/read':>11}")  # fmt: skip
    for s in (side // 2, side):
        reps = -(-s // 3072)
        rgb = np.tile(canvas, (reps, reps, 1))[:s, :s]
        svs = d / f"large{s}.svs"
        write_aperio_svs(svs, rgb, mpp=0.5, app_mag=20)
        del rgb
        read = _in_process(_read_job, str(svs), patch_px)
        tile = _in_process(_tile_job, str(svs), str(d / f"large{s}.h5"), patch_px, threads)
        print(
            f"{s:>10}{tile['n_tiles']:>8}{tile['seconds']:>9.1f}"
            f"{tile['n_tiles'] / tile['seconds']:>9.1f}{tile['rss_mb']:>9.0f}"
            f"{read['seconds']:>8.1f}{read['mpx']:>10.0f}{read['rss_mb']:>9.0f}"
            f"{read['seconds'] / tile['seconds']:>10.2f}x"
        )
        svs.unlink()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch-px", type=int, default=256)
    ap.add_argument("--quality", type=int, nargs="+", default=[90, 85])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--large-px", type=int, default=20480, help="side of the large slide")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--skip-sizes", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(level=40)
    os.environ.setdefault("CSMIL_NO_PROGRESS", "1")
    load, py = os.getloadavg()[0], sys.version.split()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} cpus; python {py}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if not args.skip_sizes:
            store_sizes(d, args.patch_px, args.quality, args.threads)
        if not args.skip_large:
            large_slide(d, args.large_px, args.patch_px, args.threads)


if __name__ == "__main__":
    main()
