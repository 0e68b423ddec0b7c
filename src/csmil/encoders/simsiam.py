"""SimSiam encoders, one per scale: the model and the encoder checkpoint (save/load).

SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021) with the
settings of the CS-MIL authors' code (official-implementation.md §3.1): a torchvision ResNet
without pretrained weights (fc → Identity), a projector of ``proj_layers`` Linear-BN(-ReLU)
blocks (2 by default: Linear-BN-ReLU-Linear-BN, width = backbone width), a bottleneck predictor
(width/4) Linear-BN-ReLU-Linear and the symmetric negative cosine loss with stop-gradient (paper
Eq. 1–2). Training (optimiser, schedule, data) is :mod:`csmil.encoders.training`.

The backbone's feature is read out by global ``pooling`` (average, max or GeM) of one or more
ResNet stages (``layers``), concatenated; the default, the average of the last stage, is
torchvision's. Max or GeM pooling and shallower stages keep a pattern that covers a few
positions of a patch from being averaged away with the rest of it.

The checkpoint follows docs/architecture.md (``kind="simsiam-encoder"``, backbone weights
only, plus ``pooling`` and ``layers``) and loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from csmil.encoders.resnet import IMAGENET_MEAN, IMAGENET_STD, RESNETS
from csmil.io import atomic_path
from csmil.runtime import versions

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


def check_readout(pooling: str, layers: Sequence[str]) -> tuple[str, ...]:
    """Validate a read-out: ``pooling`` in :data:`POOLINGS`, ``layers`` a non-empty subset of
    :data:`STAGES`; return the layers in stage order without duplicates."""
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
    layers = check_readout(pooling, layers)
    net = RESNETS[name]()
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


def save_encoder(
    out_path: str | os.PathLike,
    net: ReadoutResNet,
    backbone: str,
    scale: str,
    patch_px: int,
    feature_dim: int,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Write an encoder checkpoint atomically and return it (with its CPU ``state_dict``).

    ``net`` is the backbone of a trained :class:`SimSiam` (``backbone`` names its architecture,
    one of :data:`BACKBONES`; ``feature_dim`` its output width D); its read-out (``pooling``,
    ``layers``) is stored, with ``patch_px`` (pixels per side of the training patches), the
    ImageNet normalisation, the training ``config`` and the package versions. Plain types only,
    so the file loads with ``torch.load(weights_only=True)``.
    """
    ckpt = {
        "kind": CHECKPOINT_KIND, "backbone": backbone, "scale": scale,
        "patch_px": patch_px, "feature_dim": feature_dim, "pooling": net.pooling,
        "layers": list(net.layers), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "config": dict(config), "versions": {k: str(v) for k, v in versions().items()},
    }  # fmt: skip
    with atomic_path(out_path) as tmp:
        torch.save(ckpt, tmp)
    return ckpt


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
    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        net, dim = build_backbone(
            ckpt["backbone"], ckpt.get("pooling", "avg"), ckpt.get("layers", ["layer4"])
        )
    if dim != ckpt["feature_dim"]:
        raise ValueError(
            f"{path}: the read-out {ckpt.get('pooling', 'avg')} over "
            f"{ckpt.get('layers', ['layer4'])} gives {dim} features but the checkpoint says "
            f"feature_dim={ckpt['feature_dim']}; the checkpoint is inconsistent, re-train it"
        )
    net.load_state_dict(ckpt["state_dict"], assign=True)  # strict: every weight is loaded
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["encoder_id"] = encoder_id(ckpt)
    return net.to(device).eval(), meta
