"""HAG-MIL (Xiong et al., 2023): hierarchical attention-guided MIL over the scales
(paper §5.1, method 10)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from csmil import SCALES
from csmil.mil.models.base import (
    MILBatch,
    MILModel,
    MILOutput,
    attention_pool,
    check_choice,
    check_number,
    masked_softmax,
)
from csmil.mil.models.layers import AttentionMILBranch

#: Coarse to fine: guidance flows from the widest field of view to the narrowest.
COARSE_TO_FINE = tuple(reversed(SCALES))  # ("5x", "10x", "20x")


def top_fraction(logits: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """``(B, N)`` mask of the ``ceil(fraction * n_b)`` highest ``logits`` among the real
    instances of each bag (ties broken by position, so padding never changes the choice)."""
    order = logits.masked_fill(~mask, -math.inf).argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)  # (B, N)
    keep = torch.ceil(mask.sum(dim=1, keepdim=True) * fraction)  # (B, 1)
    return (rank < keep) & mask


class HAGMIL(MILModel):
    """Three scale-specific DeepAttnMISL networks with coarse-to-fine attention guidance.

    HAG-MIL (Xiong et al. 2023) looks at a slide like a pathologist: a low-magnification model
    attends over the whole slide, the most attended regions are zoomed into at the next
    magnification, and so on; predictions of the levels are fused. As in the CS-MIL paper's
    Table 6, each level here is its own DeepAttnMISL (embedding, Tanh attention, head), so the
    model has exactly 3 x 135,362 = 406,086 parameters at D = 2048; guidance and fusion add
    none. Since an instance holds a location's three co-centred fields of view, zooming into a
    location means reading its next finer scale.

    - Guidance (5x -> 10x -> 20x), ``guidance="hard"`` (default, HAG-MIL's zoom-in): a finer
      level only sees the ``ceil(zoom_fraction * n)`` locations that the coarser level attended
      most (n = locations the coarser level saw); the others are masked at the finer level.
      ``guidance="soft"``: the finer level's attention is multiplied by the coarser level's
      (guided) attention and renormalised, so every location stays in play.
    - Fusion: ``prob`` is the mean of the three levels' probabilities, each from its own head
      on its own (guided) attention pooling; every level is thus trained by the bag label.

    Attention: ``"instance"`` ``(B, N)`` the finest (20x) level's guided attention, the one
    behind the zoomed-in decision; ``"scale"`` ``(B, N, 3)`` each level's guided attention in
    ``csmil.SCALES`` order, every column summing to 1 over the locations that level saw.

    Args:
        in_dim: feature size D of every scale.
        guidance: ``"hard"`` or ``"soft"`` (above).
        zoom_fraction: share of locations kept at each zoom step with hard guidance, in (0, 1].
    """

    name = "hagmil"

    def __init__(self, in_dim: int, *, guidance: str = "hard", zoom_fraction: float = 0.5) -> None:
        check_choice(self.name, "guidance", guidance, ("hard", "soft"))
        check_number(self.name, "zoom_fraction", zoom_fraction, 1e-6, 1.0)
        super().__init__(in_dim, {"guidance": guidance, "zoom_fraction": float(zoom_fraction)})
        self.guidance = guidance
        self.zoom_fraction = float(zoom_fraction)
        self.levels = nn.ModuleDict({s: AttentionMILBranch(in_dim) for s in COARSE_TO_FINE})

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        seen = batch.mask  # (B, N) locations the current level looks at
        guide: Tensor | None = None  # coarser level's guided attention (soft guidance)
        probs, attention = [], {}
        for scale in COARSE_TO_FINE:
            net = self.levels[scale]
            h = net.embedding(self.scale_features(batch, scale))  # (B, N, 64)
            logits = net.attention(h)  # (B, N)
            a = masked_softmax(logits, seen)  # (B, N)
            if self.guidance == "soft" and guide is not None:
                a = a * guide
                a = a / a.sum(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
            probs.append(net.head(attention_pool(a, h)))  # (B,)
            attention[scale] = a
            if self.guidance == "hard":
                seen = top_fraction(logits, seen, self.zoom_fraction)
            guide = a
        prob = torch.stack(probs, dim=0).mean(dim=0)  # (B,)
        scale_att = torch.stack([attention[s] for s in SCALES], dim=-1)  # (B, N, 3)
        return MILOutput(prob=prob, attention={"instance": attention["20x"], "scale": scale_att})
