"""Embedding: every patch of a slide at every scale → that scale's SimSiam encoder → features.

Follows the authors' feature extraction (official-implementation.md §1.2 step 3): the backbone
in eval mode without gradients, ImageNet normalisation as in training, one feature vector per
patch and scale. Patches stream from the patch store through :mod:`csmil.encoders.loader`
(decoded on the job's threads, or on the GPU, a few batches ahead), so memory holds a few
batches of pixels plus the (N, D) features. On CUDA the encoder runs in bfloat16 autocast with
channels-last weights and the features collect on the device until the scale is done (no host
synchronisation per batch); on the CPU it runs in float32. Features are stored as float32.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csmil.encoders.featurestore import write_features
from csmil.encoders.loader import store_batches
from csmil.encoders.resnet import normalize
from csmil.encoders.simsiam import load_encoder
from csmil.runtime import progress, select_device, set_compute_threads
from csmil.slides.patchstore import PatchStore, open_patch_store

log = logging.getLogger(__name__)


def embed_slide(
    patch_h5: str | os.PathLike,
    encoder_paths: Mapping[str, str | os.PathLike],
    out_h5: str | os.PathLike,
    batch_size: int = 128,
    device: str = "auto",
    slide_id: str | None = None,
    num_threads: int | None = None,
    decode: str = "auto",
) -> dict[str, Any]:
    """Embed a slide's patch store into a feature store.

    ``num_threads`` sets the loader's decoding threads; torch computes on
    :data:`csmil.runtime.COMPUTE_THREADS` ``["embedding"]`` threads whatever it is;
    ``decode`` is where patches are decoded ("auto", "cpu", "cuda"; see
    :mod:`csmil.encoders.loader`).

    ``encoder_paths`` maps each scale of the store to its encoder checkpoint. Writes
    ``features/{scale}`` (N, D) float32 and the store's ``coords`` (N, 2) to ``out_h5``, with
    the encoder id of each scale. A store with N = 0 gives a valid empty feature store (0, D).
    Returns a summary dict (slide_id, n_patches, feature_dim, encoders, seconds, ...).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    set_compute_threads("embedding", num_threads)
    dev = select_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threads = max(1, int(num_threads or 1))
    features: dict[str, np.ndarray] = {}
    encoders: dict[str, str] = {}
    with open_patch_store(patch_h5) as store:
        sid = slide_id or str(store.attrs.get("slide_id") or Path(patch_h5).name.split(".")[0])
        missing = [s for s in store.scales if s not in encoder_paths]
        if missing:
            raise KeyError(
                f"{patch_h5}: no encoder given for scale(s) {missing}; encoder_paths has "
                f"{sorted(encoder_paths)} (train one encoder per scale)"
            )
        coords = store.coords
        for scale in store.scales:
            net, meta = load_encoder(encoder_paths[scale], dev)
            if meta["patch_px"] != store.patch_px:
                raise ValueError(
                    f"encoder {encoder_paths[scale]} was trained on {meta['patch_px']} px "
                    f"patches but {patch_h5} has {store.patch_px} px patches; re-train the "
                    "encoder or re-tile with the same patch_px"
                )
            if meta["scale"] != scale:
                log.warning(
                    "%s: the %s patches go through an encoder trained on %s patches (%s)",
                    sid, scale, meta["scale"], encoder_paths[scale],
                )  # fmt: skip
            encoders[scale] = meta["encoder_id"]
            features[scale] = embed_scale(
                store, scale, net, meta, batch_size, dev, sid, threads, decode
            )
            del net
    dims = {s: f.shape[1] for s, f in features.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(
            f"encoders of {sid} give different feature sizes {dims}; use one backbone for all "
            "scales"
        )
    write_features(out_h5, sid, features, coords, encoders)
    seconds = time.perf_counter() - t0
    n = len(coords)
    log.info("embedded %s: %d patches x %d scales in %.1f s", sid, n, len(features), seconds)
    return {
        "slide_id": sid,
        "out_h5": str(out_h5),
        "n_patches": n,
        "scales": list(features),
        "feature_dim": next(iter(dims.values()), 0),
        "encoders": encoders,
        "device": str(dev),
        "seconds": seconds,
        "patches_per_s": n * len(features) / seconds if seconds > 0 else float("nan"),
    }


def embed_scale(
    store: PatchStore,
    scale: str,
    net: torch.nn.Module,
    meta: Mapping[str, Any],
    batch_size: int,
    dev: torch.device,
    sid: str,
    threads: int = 1,
    decode: str = "auto",
) -> np.ndarray:
    """(N, D) float32 features of one scale of an open store, streamed in batches through
    ``net`` (an encoder from :func:`csmil.encoders.simsiam.load_encoder` on ``dev``)."""
    cuda = dev.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    out = torch.empty((store.n, int(meta["feature_dim"])), dtype=torch.float32, device=dev)
    batches = store_batches(store, scale, batch_size, dev, threads, decode)
    steps = -(-store.n // batch_size)
    lo = 0
    with torch.inference_mode():
        for x in progress(batches, f"embed {sid} {scale}", steps):  # (B, 3, P, P) uint8
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                f = net(normalize(x, meta["mean"], meta["std"]))  # (B, D)
            out[lo : lo + len(f)] = f.float()
            lo += len(f)
    return out.cpu().numpy()
