"""HIPT-style hierarchical transformer aggregator (after Chen et al., CVPR 2022) over the
per-scale SimSiam features (paper §5.1, method 9).

HIPT pre-trains two ViTs (16 px -> 256 px -> 4096 px) and trains only its slide-level
aggregator. We cannot pre-train HIPT's ViTs here (no 4096-px region pipeline and no such
compute in the workflow), so this model keeps HIPT's two-level transformer aggregation and
its attention-pooled head but runs them on our features: the lower level is the three scales
of one location, the upper level the locations of a bag.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csmil import SCALES
from csmil.mil.models.base import (
    MILBatch,
    MILModel,
    MILOutput,
    attention_pool,
    check_number,
    masked_softmax,
)
from csmil.mil.models.layers import EMBED_DIM, GatedAttention


def _encoder(n_layers: int, dropout: float, n_heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=EMBED_DIM,
        nhead=n_heads,
        dim_feedforward=EMBED_DIM,
        dropout=dropout,
        activation="relu",
        batch_first=True,
    )
    return nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False)


class HIPT(MILModel):
    """Two-level transformer MIL: scale tokens -> location tokens -> bag.

    1. phi: each scale feature -> Linear(D, 64) + ReLU + Dropout, plus a learned embedding of
       its scale (the lower level's position code).
    2. Local level (HIPT's region ViT): one transformer layer (64-d, 4 heads, feed-forward 64)
       over the 3 scale tokens of a location; their mean is the location token.
    3. Global level (HIPT's slide aggregator): two transformer layers over the location tokens
       of a bag (padding excluded through the key padding mask; no positional code, as the
       bags carry no coordinates), gated attention pooling 64 -> 64, rho Linear(64, 64) + ReLU
       + Dropout, classifier Linear(64, 1) + sigmoid.

    Sizes follow HIPT's aggregator (feed-forward width = model width, 2 global layers, gated
    attention L = D, dropout 0.25) at the DeepAttnMISL width of 64 instead of HIPT's 192.
    219,586 parameters at D = 2048.

    Attention: ``"instance"`` ``(B, N)`` the global gated attention.

    Args:
        in_dim: feature size D of every scale.
        dropout: dropout in phi, the transformer layers and rho (HIPT: 0.25).
    """

    name = "hipt"
    fold_batchable = False  # dropout inside the transformer layers
    n_heads = 4

    def __init__(self, in_dim: int, *, dropout: float = 0.25) -> None:
        check_number(self.name, "dropout", dropout, 0.0, 0.9)
        super().__init__(in_dim, {"dropout": float(dropout)})
        self.phi = nn.Sequential(nn.Linear(in_dim, EMBED_DIM), nn.ReLU(), nn.Dropout(dropout))
        self.scale_embedding = nn.Parameter(torch.randn(len(SCALES), EMBED_DIM) * 0.02)
        self.local = _encoder(1, dropout, self.n_heads)
        self.globe = _encoder(2, dropout, self.n_heads)
        self.attention = GatedAttention(EMBED_DIM, EMBED_DIM)
        self.rho = nn.Sequential(nn.Linear(EMBED_DIM, EMBED_DIM), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(EMBED_DIM, 1)

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        mask = batch.mask
        loc = self.location_tokens(batch)  # (B, N, 64)
        # A bag without any real location attends over its (zeroed) padding instead of over
        # nothing, which would be NaN; its outputs are masked out below.
        padding = ~mask & mask.any(dim=1, keepdim=True)  # (B, N)
        h = self.globe(loc, src_key_padding_mask=padding)  # (B, N, 64)
        a = masked_softmax(self.attention(h), mask)  # (B, N)
        bag = self.rho(attention_pool(a, h))  # (B, 64)
        prob = torch.sigmoid(self.classifier(bag).squeeze(-1))  # (B,)
        return MILOutput(prob=prob, attention={"instance": a})

    def location_tokens(self, batch: MILBatch) -> Tensor:
        """The local level: scale tokens -> location tokens ``(B, N, 64)``, zero at padding."""
        b, n = batch.mask.shape
        tokens = self.phi(self.stacked_features(batch)) + self.scale_embedding  # (B, N, 3, 64)
        local = self.local(tokens.reshape(b * n, len(SCALES), EMBED_DIM)).mean(dim=1)
        return local.reshape(b, n, EMBED_DIM).masked_fill(~batch.mask[..., None], 0.0)
