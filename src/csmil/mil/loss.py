"""The MIL training loss: binary NLL of the bag label, plus a model's auxiliary outputs."""

from __future__ import annotations

import torch

from csmil.mil.models import MILOutput

EPS = 1e-5


def bag_nll(prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Binary NLL (B,) of labels (B,) under probabilities (B,) clamped to [1e-5, 1 - 1e-5]."""
    p = prob.clamp(EPS, 1 - EPS)
    return -(label * torch.log(p) + (1 - label) * torch.log(1 - p))


def model_loss(out: MILOutput, label: torch.Tensor) -> torch.Tensor:
    """Per-bag training loss (B,): NLL of ``prob`` plus the mean NLL of every ``aux_probs``."""
    loss = bag_nll(out.prob, label)
    for aux in out.aux_probs.values():
        lab = label.reshape(-1, *([1] * (aux.dim() - 1))).expand_as(aux)
        loss = loss + bag_nll(aux, lab).reshape(len(label), -1).mean(dim=1)
    return loss
