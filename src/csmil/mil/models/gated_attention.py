"""Gated attention MIL (Ilse, Tomczak and Welling, ICML 2018) with the scales as instances
(paper §5.1, method 4)."""

from __future__ import annotations

import torch
from torch import nn

from csmil import SCALES
from csmil.mil.models.base import (
    MILBatch,
    MILModel,
    MILOutput,
    attention_pool,
    masked_softmax,
    scales_as_instances,
)
from csmil.mil.models.layers import EMBED_DIM, GatedAttention, embedding


class GatedAttentionMIL(MILModel):
    """Gated ABMIL: h = ReLU(W x); a = softmax(w^T (tanh(V h) * sigmoid(U h))); y = sigmoid(c^T
    sum a h).

    All ``3N`` scale features of a bag are instances with shared weights and no scale identity,
    as in the paper's baseline. Sizes follow the DeepAttnMISL backbone the paper feeds every
    baseline into: embedding Linear(D, 64) + ReLU, gated attention 64 -> 32 (K = 1) and, as in
    Ilse et al., a single Linear(64, 1) + sigmoid classifier. 135,394 parameters at D = 2048.

    Attention: ``"scale"`` ``(B, N, 3)`` the attention of each of the ``3N`` instances (sums to
    1 over locations and scales together); ``"instance"`` ``(B, N)`` its sum over scales.
    """

    name = "gated_attention"

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, {})
        self.embedding = embedding(in_dim)
        self.attention = GatedAttention()
        self.classifier = nn.Linear(EMBED_DIM, 1)

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        x, mask = scales_as_instances(self.stacked_features(batch), batch.mask)  # (B, 3N, D)
        h = self.embedding(x)  # (B, 3N, 64)
        a = masked_softmax(self.attention(h), mask)  # (B, 3N)
        prob = torch.sigmoid(self.classifier(attention_pool(a, h)).squeeze(-1))  # (B,)
        a = a.reshape(batch.batch_size, batch.n_instances, len(SCALES))  # (B, N, 3)
        return MILOutput(prob=prob, attention={"instance": a.sum(-1), "scale": a})
