"""SimSiam encoders, one per scale: model, training on patch stores, checkpoint save/load.

SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021) with the
settings of the CS-MIL authors' code (official-implementation.md §3.1): a torchvision ResNet
without pretrained weights (fc → Identity), a projector of ``proj_layers`` Linear-BN(-ReLU)
blocks (2 by default: Linear-BN-ReLU-Linear-BN, width = backbone width), a bottleneck predictor
(width/4) Linear-BN-ReLU-Linear, the symmetric negative cosine loss with stop-gradient (paper
Eq. 1–2), SGD (momentum 0.9, weight decay 1e-4, lr = base_lr × batch/256), linear warm-up then
cosine decay per step, and a constant predictor lr. The authors schedule the cosine over 800
epochs and stop at 200 (``schedule_epochs`` and ``epochs`` here). AMP is used on CUDA only.

Data: the patches of one scale from the given patch stores. At most ``max_patches`` patches are
used, drawn uniformly without replacement over all stores with the seed. When the drawn patches
fit in ``cache_mb`` they are read once and held in memory as uint8; otherwise each batch is
read lazily from the stores, so memory stays bounded by one batch whatever the cohort size.

The backbone's feature is read out by global ``pooling`` (average, max or GeM) of one or more
ResNet stages (``layers``), concatenated; the default, the average of the last stage, is
torchvision's. Max or GeM pooling and shallower stages keep a pattern that covers a few
positions of a patch from being averaged away with the rest of it.

The checkpoint follows docs/architecture.md (``kind="simsiam-encoder"``, backbone weights
only, plus ``pooling`` and ``layers``) and loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torchvision
from torch import nn

from csmil.encoders.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    BatchAugment,
    normalize,
)
from csmil.io import atomic_path, write_tsv
from csmil.runtime import progress, seed_everything, select_device, set_threads, versions
from csmil.slides.patchstore import open_patch_store

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Backbone name → feature width after global pooling of the last stage.
BACKBONES: dict[str, int] = {"resnet18": 512, "resnet50": 2048}
#: Global pooling of a feature map (B, C, h, w) → (B, C): mean, max, or GeM with p = 3.
POOLINGS: tuple[str, ...] = ("avg", "max", "gem")
#: ResNet stages that can be read out (pooled and concatenated), shallow to deep.
STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
GEM_P = 3.0
CHECKPOINT_KIND = "simsiam-encoder"


def global_pool(fmap: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool a feature map (B, C, h, w) over space → (B, C).

    ``avg`` is torchvision's global average; ``max`` keeps the strongest response anywhere, so
    a pattern covering a few positions is not diluted by the rest of the patch; ``gem`` is the
    generalised mean (mean of x^3)^(1/3) of the non-negative (post-ReLU) map, between the two.
    """
    if pooling == "avg":
        return fmap.mean(dim=(2, 3))
    if pooling == "max":
        return fmap.amax(dim=(2, 3))
    if pooling == "gem":
        return fmap.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class ReadoutResNet(nn.Module):
    """A torchvision ResNet whose features are the pooled outputs of chosen stages.

    ``forward``: (B, 3, P, P) → (B, D), D the sum of the read stages' widths, in stage order.
    The wrapped ResNet's modules are registered under their own names (``conv1``, ``layer4``,
    ...), so the state dict is exactly torchvision's without ``fc``; with ``layers=("layer4",)``
    and ``pooling="avg"`` the features equal torchvision's ``resnet(x)`` with ``fc = Identity``.
    """

    def __init__(self, net: nn.Module, pooling: str, layers: Sequence[str]) -> None:
        super().__init__()
        self.pooling, self.layers = pooling, tuple(layers)
        for name in ("conv1", "bn1", "relu", "maxpool", *STAGES):
            setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, P/4, P/4)
        pooled = []
        for name in STAGES:
            x = getattr(self, name)(x)  # (B, C, h, w)
            if name in self.layers:
                pooled.append(global_pool(x, self.pooling))
            if name == self.layers[-1]:
                break
        return torch.cat(pooled, dim=1)  # (B, D)


def _check_readout(pooling: str, layers: Sequence[str]) -> tuple[str, ...]:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    layers = tuple(layers)
    if not layers or any(name not in STAGES for name in layers):
        raise ValueError(f"layers must be a non-empty subset of {STAGES}, got {list(layers)}")
    return tuple(name for name in STAGES if name in layers)  # stage order, no duplicates


def build_backbone(
    name: str, pooling: str = "avg", layers: Sequence[str] = ("layer4",)
) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet read out by ``pooling`` over ``layers``:
    (B, 3, P, P) → (B, D). D is 512 (resnet18) or 2048 (resnet50) for the last stage alone;
    each extra stage adds its width (resnet18: 64, 128, 256; resnet50: 256, 512, 1024)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    layers = _check_readout(pooling, layers)
    net = getattr(torchvision.models, name)(weights=None)
    widths = {s: getattr(net, s)[-1].bn2.num_features if name == "resnet18"
              else getattr(net, s)[-1].bn3.num_features for s in STAGES}  # fmt: skip
    return ReadoutResNet(net, pooling, layers), int(sum(widths[s] for s in layers))


class SimSiam(nn.Module):
    """Backbone + projector f and predictor h; ``forward(x1, x2)`` returns the loss in [-1, 1]."""

    def __init__(self, backbone: nn.Module, dim: int, proj_layers: int = 2) -> None:
        super().__init__()
        if proj_layers not in (2, 3):
            raise ValueError(f"proj_layers must be 2 or 3, got {proj_layers}")
        self.backbone = backbone
        blocks: list[nn.Module] = [nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
        if proj_layers == 3:
            blocks += [nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
        blocks += [nn.Linear(dim, dim), nn.BatchNorm1d(dim)]
        self.projector = nn.Sequential(*blocks)
        self.predictor = nn.Sequential(
            nn.Linear(dim, dim // 4),
            nn.BatchNorm1d(dim // 4),
            nn.ReLU(inplace=True),
            nn.Linear(dim // 4, dim),
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.backbone(x1))  # (B, D)
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (B, D)
        return (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean −cos(p, stopgrad(z)) over the batch (SimSiam Eq. 1); p, z (B, D)."""
    return -nn.functional.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def lr_at(step: int, steps_per_epoch: int, lr: float, warmup_epochs: int, schedule_epochs: int):
    """Learning rate of the encoder at ``step`` (0-based, counted over all epochs).

    Linear warm-up from 0 to ``lr`` over ``warmup_epochs``, then cosine from ``lr`` to 0 over
    the remaining ``schedule_epochs − warmup_epochs`` epochs; 0 after the schedule ends.
    """
    warm = warmup_epochs * steps_per_epoch
    total = schedule_epochs * steps_per_epoch
    if step < warm:
        return lr * step / warm
    if step >= total:
        return 0.0
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def history_path(out_path: str | os.PathLike) -> Path:
    """The training-history TSV beside an encoder checkpoint: ``X.pt`` → ``X.history.tsv``."""
    p = Path(out_path)
    return p.with_name(p.stem + ".history.tsv")


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


class _PatchSample:
    """The drawn training patches of one scale; ``batch(idx)`` → uint8 (B, P, P, 3)."""

    def __init__(self, stores: Sequence[Path], scale: str, max_patches, cache_mb, rng) -> None:
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
        self._open: dict[int, Any] = {}
        self._counts = counts
        self._cache = self._read_all() if self.in_memory and n else None

    def __len__(self) -> int:
        return len(self.refs)

    def batch(self, idx: np.ndarray) -> np.ndarray:
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
        for st in self._open.values():
            st.close()
        self._open.clear()


def train_simsiam(
    patch_stores: Sequence[str | os.PathLike],
    scale: str,
    out_path: str | os.PathLike,
    backbone: str = "resnet18",
    epochs: int = 200,
    batch_size: int = 64,
    base_lr: float = 0.05,
    warmup_epochs: int = 10,
    schedule_epochs: int | None = 800,
    proj_layers: int = 2,
    max_patches: int | None = None,
    cache_mb: float = 4096,
    augment: AugmentConfig | dict | None = None,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
    pooling: str = "avg",
    layers: Sequence[str] = ("layer4",),
) -> dict[str, Any]:
    """Train a SimSiam encoder on the ``scale`` patches of ``patch_stores``; save its backbone.

    Writes the checkpoint ``out_path`` and the history ``history_path(out_path)`` (columns
    epoch, loss (mean over the epoch's steps), lr (encoder lr of its last step), seconds)
    atomically.

    Args:
        patch_stores: patch stores of the pretraining slides; all must share ``patch_px``.
        scale: which patches to train on (one encoder per scale).
        epochs: epochs actually run (the authors' ``stop_at_epoch``, 200).
        schedule_epochs: length of the warm-up + cosine schedule (the authors' ``num_epochs``,
            800); None means ``epochs``, i.e. the cosine reaches 0 at the end.
        batch_size: patches per step (two views each), reduced with a warning when fewer
            patches exist; the last incomplete batch of an epoch is dropped.
        base_lr: lr per 256 patches; the encoder lr is ``base_lr × batch_size / 256``.
        max_patches: use at most this many patches, a seeded uniform draw over all stores.
        cache_mb: hold the drawn patches in memory when their uint8 pixels fit, else read
            every batch from the stores.
        augment: :class:`AugmentConfig` or a dict of its fields.
        device: "auto", "cpu" or "cuda" (AMP float16 and pinned memory on CUDA).
        num_threads: torch intra-op threads (None: leave as is).
        pooling: global pooling of the read feature maps, one of :data:`POOLINGS` ("avg" is
            torchvision's); stored in the checkpoint, so embedding uses the same.
        layers: ResNet stages whose pooled outputs are concatenated into the feature (and fed
            to the projector), a subset of :data:`STAGES`; ("layer4",) is the usual read-out.
            Earlier stages keep small, fine patterns that the last stage may average away.

    Returns:
        Summary: encoder_id, n_patches(_available), batch_size, final_loss, patches_per_s
        (source patches per training second), seconds, device, history path.
    """
    t_start = time.perf_counter()
    set_threads(num_threads)
    dev = select_device(device)
    aug_cfg = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**(augment or {}))
    schedule_epochs = epochs if schedule_epochs is None else int(schedule_epochs)
    if epochs < 1 or schedule_epochs < epochs or not 0 <= warmup_epochs <= schedule_epochs:
        raise ValueError(
            "need epochs >= 1, schedule_epochs >= epochs and 0 <= warmup_epochs <= "
            f"schedule_epochs; got epochs={epochs}, schedule_epochs={schedule_epochs}, "
            f"warmup_epochs={warmup_epochs}"
        )
    layers = _check_readout(pooling, layers)
    if not patch_stores:
        raise ValueError("patch_stores is empty: list the patch stores of the pretraining slides")
    rng = seed_everything(seed)
    data = _PatchSample([Path(p) for p in patch_stores], scale, max_patches, cache_mb, rng)
    n = len(data)
    if n < 2:
        raise ValueError(
            f"SimSiam on scale {scale} needs at least 2 patches, found {n} in "
            f"{len(patch_stores)} patch store(s) ({data.n_available} available); add "
            "pretraining slides with tissue or raise max_patches"
        )
    if n < batch_size:
        log.warning("only %d %s patches: batch size reduced from %d to %d", n, scale, batch_size, n)
        batch_size = n
    steps = n // batch_size  # drop_last
    lr = base_lr * batch_size / 256
    log.info(
        "SimSiam %s on %s: %d of %d patches (%s), %d px, batch %d, %d steps/epoch, lr %.4g, %s",
        backbone, scale, n, data.n_available, "in memory" if data.in_memory else "lazy reads",
        data.patch_px, batch_size, steps, lr, dev,
    )  # fmt: skip

    net, dim = build_backbone(backbone, pooling, layers)
    model = SimSiam(net, dim, proj_layers).to(dev)
    enc_params = [*model.backbone.parameters(), *model.projector.parameters()]
    opt = torch.optim.SGD(
        [{"params": enc_params}, {"params": model.predictor.parameters()}],
        lr=lr, momentum=0.9, weight_decay=1e-4,
    )  # fmt: skip
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    aug = BatchAugment(data.patch_px, aug_cfg)
    gen = torch.Generator().manual_seed(seed)
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def batches(order: np.ndarray) -> Iterator[torch.Tensor]:
        for i in range(steps):
            x = torch.from_numpy(data.batch(np.sort(order[i * batch_size : (i + 1) * batch_size])))
            yield x.pin_memory() if amp else x

    rows = []
    try:
        for epoch in range(1, epochs + 1):
            t0, total = time.perf_counter(), 0.0
            model.train()
            order = rng.permutation(n)
            bar = progress(prefetch(batches(order)), f"simsiam {scale} epoch {epoch}", steps)
            for i, x in enumerate(bar):
                step_lr = lr_at((epoch - 1) * steps + i, steps, lr, warmup_epochs, schedule_epochs)
                opt.param_groups[0]["lr"] = step_lr  # the predictor group keeps ``lr``
                x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, P, P) uint8
                v1 = normalize(aug(x, gen), mean, std)
                v2 = normalize(aug(x, gen), mean, std)
                with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                    loss = model(v1, v2)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += loss.item()
            mean_loss = total / steps
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"SimSiam loss became {mean_loss} in epoch {epoch} on scale {scale}; "
                    "lower base_lr or check the patches"
                )
            secs = time.perf_counter() - t0
            rows.append({"epoch": epoch, "loss": mean_loss, "lr": step_lr, "seconds": secs})
            log.info(
                "epoch %d/%d loss %.4f lr %.4g (%.1f s)", epoch, epochs, mean_loss, step_lr, secs
            )
    finally:
        data.close()

    config = {
        "patch_stores": [str(p) for p in patch_stores], "epochs": epochs,
        "schedule_epochs": schedule_epochs, "warmup_epochs": warmup_epochs,
        "batch_size": batch_size, "base_lr": base_lr, "lr": lr, "proj_layers": proj_layers,
        "max_patches": max_patches, "n_patches": n, "seed": seed, "augment": aug_cfg.to_dict(),
        "pooling": pooling, "layers": list(layers),
    }  # fmt: skip
    ckpt = {
        "kind": CHECKPOINT_KIND, "backbone": backbone, "scale": scale,
        "patch_px": data.patch_px, "feature_dim": dim, "pooling": pooling,
        "layers": list(layers), "mean": list(mean), "std": list(std),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()},
        "config": config, "versions": {k: str(v) for k, v in versions().items()},
    }  # fmt: skip
    with atomic_path(out_path) as tmp:  # plain types only: loads with weights_only=True
        torch.save(ckpt, tmp)
    write_tsv(pd.DataFrame(rows), history_path(out_path))
    seconds = time.perf_counter() - t_start
    train_secs = sum(r["seconds"] for r in rows)
    return {
        "out_path": str(out_path), "encoder_id": encoder_id(ckpt), "scale": scale,
        "backbone": backbone, "n_patches_available": data.n_available, "n_patches": n,
        "batch_size": batch_size, "epochs": epochs, "final_loss": rows[-1]["loss"],
        "patches_per_s": steps * batch_size * epochs / train_secs, "seconds": seconds,
        "device": str(dev), "history": str(history_path(out_path)),
    }  # fmt: skip


def encoder_id(ckpt: dict[str, Any]) -> str:
    """Short hash (12 hex) of an encoder's backbone name, scale, patch size, read-out (when not
    the default average of layer4) and weights."""
    key = f"{ckpt['backbone']}|{ckpt['scale']}|{ckpt['patch_px']}"
    pooling, layers = ckpt.get("pooling", "avg"), list(ckpt.get("layers", ["layer4"]))
    if (pooling, layers) != ("avg", ["layer4"]):
        key += f"|{pooling}|{','.join(layers)}"
    h = hashlib.sha256(key.encode())
    for k in sorted(ckpt["state_dict"]):
        h.update(k.encode())
        h.update(ckpt["state_dict"][k].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_encoder(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load an encoder checkpoint: (backbone in eval mode on ``device``, metadata).

    The metadata is the checkpoint without ``state_dict``, plus ``encoder_id``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist; run train_encoder")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a SimSiam encoder checkpoint (kind={kind!r})")
    net, dim = build_backbone(
        ckpt["backbone"], ckpt.get("pooling", "avg"), ckpt.get("layers", ["layer4"])
    )
    if dim != ckpt["feature_dim"]:
        raise ValueError(
            f"{path}: the read-out {ckpt.get('pooling', 'avg')} over "
            f"{ckpt.get('layers', ['layer4'])} gives {dim} features but the checkpoint says "
            f"feature_dim={ckpt['feature_dim']}; the checkpoint is inconsistent, re-train it"
        )
    net.load_state_dict(ckpt["state_dict"])
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["encoder_id"] = encoder_id(ckpt)
    return net.to(device).eval(), meta
