"""SimSiam training of one encoder per scale on patch stores: settings, steps, history.

The recipe of the CS-MIL authors' SimSiam code (official-implementation.md §3.1; Chen & He,
CVPR 2021, §4): SGD (momentum 0.9, weight decay 1e-4, lr = base_lr × batch/256), linear
warm-up then cosine decay per step for the encoder (backbone + projector), and a constant
predictor lr. The authors schedule the cosine over 800 epochs and stop at 200
(``schedule_epochs`` and ``epochs`` here). On CUDA the model runs in bfloat16 autocast with
channels-last weights and cuDNN autotuning, and the loss is summed on the device and read once
per epoch (no host synchronisation per step); on the CPU everything is float32.

Data: the patches of one scale from the given patch stores, at most ``max_patches`` of them,
drawn uniformly without replacement over all stores with the seed (:mod:`csmil.encoders.loader`).

A run is :func:`train_simsiam`, the steps in order: :func:`load_training_patches` (the seeded
draw), :func:`build_run` (model, optimiser, augmentation), :func:`train_epoch` per epoch and
:func:`save_training` (checkpoint and history). The seed fixes the patch draw, the weight
initialisation, every epoch's order and every augmentation.

Resuming: after every epoch the training state (model, optimiser, scaler, history, the Python,
NumPy and torch random states, the epoch-order generator and the augmentation generator) is
written atomically to :func:`resume_path` (``X.pt`` → ``X.resume.pt``). A new run of the same
job with the same settings and patch stores continues after the last saved epoch and ends
with the same weights as an uninterrupted run (on the CPU; on CUDA up to non-deterministic
kernels); a state from other settings is refused. SIGUSR1 and SIGTERM (a SLURM time limit)
stop the run between two steps, leaving the last epoch's state. The state file is removed once
the checkpoint is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from csmil.encoders.augment import AugmentConfig, BatchAugment
from csmil.encoders.loader import PatchSample, sample_batches
from csmil.encoders.resnet import normalize
from csmil.encoders.simsiam import (
    BACKBONES,
    SimSiam,
    build_backbone,
    check_readout,
    encoder_id,
    save_encoder,
)
from csmil.io import atomic_path, write_tsv
from csmil.runtime import progress, seed_everything, select_device, set_compute_threads

log = logging.getLogger(__name__)

#: Columns of the training-history TSV, one row per epoch.
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "loss", "lr", "seconds")


@dataclass(frozen=True)
class SimSiamSettings:
    """Settings of :func:`train_simsiam`; defaults are the authors' SimSiam recipe.

    Attributes:
        backbone: ResNet of the encoder, one of :data:`csmil.encoders.simsiam.BACKBONES`.
        epochs: epochs actually run (the authors' ``stop_at_epoch``, 200).
        batch_size: patches per step (two views each), reduced with a warning when fewer
            patches exist; the last incomplete batch of an epoch is dropped.
        base_lr: lr per 256 patches; the encoder lr is ``base_lr × batch_size / 256``.
        warmup_epochs: epochs of linear warm-up from 0 to the encoder lr.
        schedule_epochs: length of the warm-up + cosine schedule (the authors' ``num_epochs``,
            800); None means ``epochs``, i.e. the cosine reaches 0 at the end.
        proj_layers: Linear-BN blocks of the projector, 2 or 3.
        max_patches: use at most this many patches, a seeded uniform draw over all stores
            (None: all).
        cache_mb: hold the drawn patches in memory when their uint8 pixels fit in this many
            MiB, else read every batch from the stores.
        augment: :class:`AugmentConfig` (a dict of its fields is converted).
        seed: seeds the patch draw, the weights, the epoch orders and the augmentations.
        pooling: global pooling of the read feature maps, one of
            :data:`csmil.encoders.simsiam.POOLINGS` ("avg" is torchvision's); stored in the
            checkpoint, so embedding uses the same.
        layers: ResNet stages whose pooled outputs are concatenated into the feature (and fed
            to the projector), a subset of :data:`csmil.encoders.simsiam.STAGES`, kept in
            stage order; ("layer4",) is the usual read-out. Earlier stages keep small, fine
            patterns that the last stage may average away.
    """

    backbone: str = "resnet18"
    epochs: int = 200
    batch_size: int = 64
    base_lr: float = 0.05
    warmup_epochs: int = 10
    schedule_epochs: int | None = 800
    proj_layers: int = 2
    max_patches: int | None = None
    cache_mb: float = 4096
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    pooling: str = "avg"
    layers: tuple[str, ...] = ("layer4",)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # YAML gives a mapping
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        elif self.augment is None:
            object.__setattr__(self, "augment", AugmentConfig())
        epochs, schedule, warmup = self.epochs, self.schedule, self.warmup_epochs
        if epochs < 1 or schedule < epochs or not 0 <= warmup <= schedule:
            raise ValueError(
                "need epochs >= 1, schedule_epochs >= epochs and 0 <= warmup_epochs <= "
                f"schedule_epochs; got epochs={epochs}, schedule_epochs={schedule}, "
                f"warmup_epochs={warmup}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if self.proj_layers not in (2, 3):
            raise ValueError(f"proj_layers must be 2 or 3, got {self.proj_layers}")
        object.__setattr__(self, "layers", check_readout(self.pooling, self.layers))

    @property
    def schedule(self) -> int:
        """Epochs of the warm-up + cosine schedule, ``schedule_epochs`` or else ``epochs``."""
        return self.epochs if self.schedule_epochs is None else int(self.schedule_epochs)


@dataclass
class SimSiamRun:
    """What a training run holds from one epoch to the next (see :func:`build_run`).

    ``batch_size`` is the effective one (at most the number of drawn patches), ``steps`` the
    optimiser steps per epoch and ``lr`` the peak encoder lr.
    """

    model: SimSiam
    feature_dim: int
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    aug: BatchAugment
    gen: torch.Generator
    device: torch.device
    batch_size: int
    steps: int
    lr: float

    threads: int = 1
    decode: str = "auto"

    @property
    def amp(self) -> bool:
        """Mixed precision (bfloat16 autocast, channels-last, pinned batches): CUDA only."""
        return self.device.type == "cuda"


class TrainingInterrupted(RuntimeError):
    """SimSiam training stopped on a signal; re-running the job resumes it."""


_STOP = threading.Event()


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Set the stop flag on SIGUSR1 or SIGTERM while training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP.clear()
    sigs = [signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
    old = {sig: signal.signal(sig, lambda num, frame: _STOP.set()) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def lr_at(
    step: int, steps_per_epoch: int, lr: float, warmup_epochs: int, schedule_epochs: int
) -> float:
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


def resume_path(out_path: str | os.PathLike) -> Path:
    """The training state beside an encoder checkpoint: ``X.pt`` → ``X.resume.pt``."""
    p = Path(out_path)
    return p.with_name(p.stem + ".resume.pt")


def run_fingerprint(settings: SimSiamSettings, patch_stores: Sequence, scale: str) -> str:
    """Hash of what a run's result depends on: settings, scale and the patch stores (path,
    size and modification time: a store re-tiled to the same path is another store)."""
    stores = []
    for p in patch_stores:
        st = Path(p).stat()
        stores.append([str(Path(p)), st.st_size, st.st_mtime_ns])
    key = {"settings": asdict(settings), "scale": scale, "patch_stores": stores}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(
    path: Path, run: SimSiamRun, epoch: int, history: list, rng: np.random.Generator, fp: str
) -> None:
    """Write the training state after ``epoch`` atomically (see the module docstring)."""
    legacy = np.random.get_state()  # noqa: NPY002 - third-party code may use the global RNG
    state = {
        "kind": "simsiam-resume", "fingerprint": fp, "epoch": epoch,
        "history": [dict(r) for r in history],
        "model": run.model.state_dict(), "opt": run.opt.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {
            "python": json.dumps(random.getstate()),
            "numpy_global": json.dumps([legacy[0], legacy[1].tolist(), *legacy[2:]]),
            "numpy": json.dumps(rng.bit_generator.state),
            "torch": torch.get_rng_state(), "gen": run.gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
        },
    }  # fmt: skip
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(
    path: Path, run: SimSiamRun, rng: np.random.Generator, fp: str
) -> tuple[int, list[dict[str, float]]]:
    """Restore a saved training state into ``run`` and the generators; return (epoch done,
    history). Refuses a state written with other settings or patch stores."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("kind") != "simsiam-resume" or state.get("fingerprint") != fp:
        raise ValueError(
            f"{path} holds the training state of a run with other settings or patch stores "
            f"(fingerprint {state.get('fingerprint')!r}, this run {fp!r}); delete it to train "
            "from epoch 1"
        )
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["opt"])
    run.scaler.load_state_dict(state["scaler"])
    r = state["rng"]
    py = json.loads(r["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    leg = json.loads(r["numpy_global"])
    np.random.set_state((leg[0], np.asarray(leg[1], dtype=np.uint32), *leg[2:]))  # noqa: NPY002
    rng.bit_generator.state = json.loads(r["numpy"])
    torch.set_rng_state(r["torch"])
    run.gen.set_state(r["gen"])
    if r["cuda"] and run.device.type == "cuda":
        torch.cuda.set_rng_state_all(r["cuda"])
    return int(state["epoch"]), list(state["history"])


def load_training_patches(
    patch_stores: list[Path], scale: str, settings: SimSiamSettings, rng: np.random.Generator
) -> PatchSample:
    """Draw (and, when they fit, read) the ``scale`` training patches; at least 2 of them."""
    data = PatchSample(patch_stores, scale, settings.max_patches, settings.cache_mb, rng)
    if len(data) < 2:
        raise ValueError(
            f"SimSiam on scale {scale} needs at least 2 patches, found {len(data)} in "
            f"{len(patch_stores)} patch store(s) ({data.n_available} available); add "
            "pretraining slides with tissue or raise max_patches"
        )
    return data


def build_run(
    settings: SimSiamSettings,
    data: PatchSample,
    dev: torch.device,
    threads: int = 1,
    decode: str = "auto",
) -> SimSiamRun:
    """Batch size, lr, a fresh :class:`SimSiam` on ``dev``, its SGD optimiser, the batch
    augmentation and its generator (seeded with ``settings.seed``).

    The weights come from torch's global generator, so the caller seeds it first.
    """
    n, batch_size = len(data), settings.batch_size
    if n < batch_size:
        log.warning(
            "only %d %s patches: batch size reduced from %d to %d", n, data.scale, batch_size, n
        )
        batch_size = n
    steps = n // batch_size  # drop_last
    lr = settings.base_lr * batch_size / 256
    log.info(
        "SimSiam %s on %s: %d of %d patches (%s), %d px, batch %d, %d steps/epoch, lr %.4g, %s",
        settings.backbone, data.scale, n, data.n_available,
        "in memory" if data.in_memory else "lazy reads", data.patch_px, batch_size, steps, lr,
        dev,
    )  # fmt: skip
    net, dim = build_backbone(settings.backbone, settings.pooling, settings.layers)
    model = SimSiam(net, dim, settings.proj_layers).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    enc_params = [*model.backbone.parameters(), *model.projector.parameters()]
    opt = torch.optim.SGD(
        [{"params": enc_params}, {"params": model.predictor.parameters()}],
        lr=lr, momentum=0.9, weight_decay=1e-4,
    )  # fmt: skip
    return SimSiamRun(
        model=model,
        feature_dim=dim,
        opt=opt,
        scaler=torch.amp.GradScaler("cuda", enabled=False),  # bfloat16 needs no loss scaling
        aug=BatchAugment(data.patch_px, settings.augment),
        gen=torch.Generator().manual_seed(settings.seed),
        device=dev,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        threads=max(1, int(threads)),
        decode=decode,
    )


def train_epoch(
    run: SimSiamRun,
    data: PatchSample,
    epoch: int,
    settings: SimSiamSettings,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One epoch (1-based ``epoch``) over a fresh permutation of the drawn patches.

    Returns the history row: epoch, loss (mean over the epoch's steps, in [-1, 1]), lr (the
    encoder lr of the last step) and seconds. Raises FloatingPointError on a non-finite loss
    and :class:`TrainingInterrupted` when SIGUSR1 or SIGTERM arrived (checked between steps).
    """
    t0 = time.perf_counter()
    dev = run.device
    total = torch.zeros((), dtype=torch.float32, device=dev)  # summed on the device
    run.model.train()
    order = rng.permutation(len(data))
    batches = sample_batches(data, order, run.batch_size, dev, run.threads, run.decode)
    bar = progress(batches, f"simsiam {data.scale} epoch {epoch}", run.steps)
    for i, x in enumerate(bar):  # x: (B, 3, P, P) uint8 on dev
        if _STOP.is_set():
            raise TrainingInterrupted(
                f"SimSiam {data.scale} stopped by a signal in epoch {epoch} (step {i}); "
                "re-run the job to resume after the last saved epoch"
            )
        step = (epoch - 1) * run.steps + i
        step_lr = lr_at(step, run.steps, run.lr, settings.warmup_epochs, settings.schedule)
        run.opt.param_groups[0]["lr"] = step_lr  # the predictor group keeps ``lr``
        v1 = normalize(run.aug(x, run.gen))  # (B, 3, P, P) float32, ImageNet-normalised
        v2 = normalize(run.aug(x, run.gen))
        if run.amp:  # the views come out of grid_sample contiguous; the model is channels-last
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run.amp):
            loss = run.model(v1, v2)
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.opt)
        run.scaler.update()
        total += loss.detach().float()
    mean_loss = total.item() / run.steps  # the epoch's one read of a device value
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"SimSiam loss became {mean_loss} in epoch {epoch} on scale {data.scale}; "
            "lower base_lr or check the patches"
        )
    secs = time.perf_counter() - t0
    log.info(
        "epoch %d/%d loss %.4f lr %.4g (%.1f s)", epoch, settings.epochs, mean_loss, step_lr, secs
    )
    return {"epoch": epoch, "loss": mean_loss, "lr": step_lr, "seconds": secs}


def save_training(
    out_path: str | os.PathLike,
    run: SimSiamRun,
    data: PatchSample,
    settings: SimSiamSettings,
    patch_stores: Sequence[str | os.PathLike],
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """Write the encoder checkpoint ``out_path`` and its history TSV (:func:`history_path`,
    columns :data:`HISTORY_COLUMNS`), both atomically; return the checkpoint.

    The checkpoint's ``config`` records the settings as run (``batch_size`` the effective one,
    ``schedule_epochs`` resolved) with the peak ``lr``, ``n_patches`` and ``patch_stores``.
    """
    config = {
        "patch_stores": [str(p) for p in patch_stores], "epochs": settings.epochs,
        "schedule_epochs": settings.schedule, "warmup_epochs": settings.warmup_epochs,
        "batch_size": run.batch_size, "base_lr": settings.base_lr, "lr": run.lr,
        "proj_layers": settings.proj_layers, "max_patches": settings.max_patches,
        "n_patches": len(data), "seed": settings.seed, "augment": settings.augment.to_dict(),
        "pooling": settings.pooling, "layers": list(settings.layers),
    }  # fmt: skip
    ckpt = save_encoder(
        out_path, run.model.backbone, settings.backbone, data.scale, data.patch_px,
        run.feature_dim, config,
    )  # fmt: skip
    write_tsv(pd.DataFrame(history, columns=list(HISTORY_COLUMNS)), history_path(out_path))
    return ckpt


def train_simsiam(
    patch_stores: Sequence[str | os.PathLike],
    scale: str,
    out_path: str | os.PathLike,
    settings: SimSiamSettings | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    decode: str = "auto",
) -> dict[str, Any]:
    """Train a SimSiam encoder on the ``scale`` patches of ``patch_stores``; save its backbone.

    Writes the checkpoint ``out_path`` and the history ``history_path(out_path)`` (columns
    epoch, loss (mean over the epoch's steps), lr (encoder lr of its last step), seconds)
    atomically.

    Args:
        patch_stores: patch stores of the pretraining slides; all must share ``patch_px``.
        scale: which patches to train on (one encoder per scale).
        out_path: the encoder checkpoint to write (``.pt``).
        settings: :class:`SimSiamSettings` (None: the defaults).
        device: "auto", "cpu" or "cuda" (bfloat16 autocast and pinned memory on CUDA).
        num_threads: the loader's decoding threads (None: one). torch computes on
            :data:`csmil.runtime.COMPUTE_THREADS` ``["encoder"]`` threads whatever this is, so
            the weights do not depend on the job's cores.
        decode: where patches are decoded, "auto", "cpu" or "cuda" (see
            :mod:`csmil.encoders.loader`).

    Continues from :func:`resume_path` when a state of the same settings is there (see the
    module docstring) and removes it at the end.

    Returns:
        Summary: encoder_id, n_patches(_available), batch_size, final_loss, patches_per_s
        (source patches per training second), seconds, device, history path,
        resumed_from_epoch (0 for a fresh start).
    """
    t_start = time.perf_counter()
    settings = settings or SimSiamSettings()
    set_compute_threads("encoder", num_threads)
    dev = select_device(device)
    if not patch_stores:
        raise ValueError("patch_stores is empty: list the patch stores of the pretraining slides")
    stores = [Path(p) for p in patch_stores]
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rng = seed_everything(settings.seed)
    data = load_training_patches(stores, scale, settings, rng)
    run = build_run(settings, data, dev, threads=num_threads or 1, decode=decode)
    state_path, fp = resume_path(out_path), run_fingerprint(settings, patch_stores, scale)
    done, history = 0, []
    if state_path.exists():
        done, history = load_state(state_path, run, rng, fp)
        log.info("resuming %s from %s: %d of %d epochs done", scale, state_path, done,
                 settings.epochs)  # fmt: skip
    try:
        with _stop_on_signals():
            for e in range(done + 1, settings.epochs + 1):
                history.append(train_epoch(run, data, e, settings, rng))
                save_state(state_path, run, e, history, rng, fp)
    finally:
        data.close()
    ckpt = save_training(out_path, run, data, settings, patch_stores, history)
    state_path.unlink(missing_ok=True)
    train_secs = sum(r["seconds"] for r in history)
    return {
        "out_path": str(out_path), "encoder_id": encoder_id(ckpt), "scale": scale,
        "backbone": settings.backbone, "n_patches_available": data.n_available,
        "n_patches": len(data), "batch_size": run.batch_size, "epochs": settings.epochs,
        "final_loss": history[-1]["loss"],
        "patches_per_s": run.steps * run.batch_size * settings.epochs / train_secs,
        "seconds": time.perf_counter() - t_start, "device": str(dev),
        "history": str(history_path(out_path)), "resumed_from_epoch": done,
    }  # fmt: skip
