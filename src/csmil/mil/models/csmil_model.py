"""CS-MIL: cross-scale attention MIL (Deng et al., MedIA 2024, §3.2, Eqs. 2-5).

Defaults reproduce the authors' released WSI model (``DeepAttnMISL_model_no21.py``): a shared
embedding E_ms, a per-scale scorer Conv(64->32) -> ReLU -> Conv(32->1) giving RAW scale scores
a_s (no softmax over scales), F_cs = sum_s a_s f_s, then DeepAttnMISL pooling and head.
137,475 parameters at D = 2048. The options select the paper's ablations (Tables 2 and 3).
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
    check_choice,
    masked_softmax,
    zero_padding,
)
from csmil.mil.models.layers import EMBED_DIM, HIDDEN_DIM, ClassifierHead, TanhAttention, embedding


class CSMIL(MILModel):
    """Cross-scale MIL.

    Per location, each scale's features F_s are embedded to f_s (64-d, Eq. 2), fused into one
    cross-scale feature, and the fused features are pooled by DeepAttnMISL's Tanh attention
    (masked softmax over instances) and classified by its head (Eq. 5).

    Args:
        in_dim: feature size D of every scale.
        shared_embedding: one Linear(D, 64) + ReLU for all scales (paper Eq. 2, released code);
            False gives each scale its own (Table 2 "non-sharing"; 399,747 params at 2048).
        scale_activation: ``"relu"`` (paper, released code) or ``"tanh"`` between the two
            layers of the cross-scale scorer (Table 2).
        scale_normalisation: ``"none"`` uses the raw scorer outputs as a_s (released code;
            they can be negative and need not sum to 1); ``"softmax"`` normalises them over
            the scales (paper Eq. 3; the authors' toy-data model).
        fusion: ``"attention"`` (cross-scale attention, Eq. 4); ``"mean"`` fixed 1:1:1 mean of
            f_s (Table 3 mean-vector, no scorer); ``"concat"`` concatenation [f_20x; f_10x;
            f_5x] (Table 3 concatenation, no scorer): the 192-d vector is the instance feature
            itself, so instance attention and head take 192 inputs (Linear(192, 32) each) and
            no extra projection layer is added (143,554 params at 2048). With mean or concat
            fusion there is no scorer, so ``scale_activation`` and ``scale_normalisation``
            have no effect.

    Attention: ``"instance"`` ``(B, N)``; ``"scale"`` ``(B, N, 3)`` the softmax over scales of
    the scale scores (the weights themselves with ``scale_normalisation="softmax"``; the
    authors' visualisation of the raw scores otherwise; 1/3 each for mean/concat fusion), zero
    at padding; ``"scale_raw"`` ``(B, N, 3)`` the raw scorer outputs (attention fusion only).
    """

    name = "csmil"

    def __init__(
        self,
        in_dim: int,
        *,
        shared_embedding: bool = True,
        scale_activation: str = "relu",
        scale_normalisation: str = "none",
        fusion: str = "attention",
    ) -> None:
        check_choice(self.name, "shared_embedding", shared_embedding, (True, False))
        check_choice(self.name, "scale_activation", scale_activation, ("relu", "tanh"))
        check_choice(self.name, "scale_normalisation", scale_normalisation, ("none", "softmax"))
        check_choice(self.name, "fusion", fusion, ("attention", "mean", "concat"))
        super().__init__(
            in_dim,
            {
                "shared_embedding": bool(shared_embedding),
                "scale_activation": scale_activation,
                "scale_normalisation": scale_normalisation,
                "fusion": fusion,
            },
        )
        self.fusion = fusion
        self.scale_normalisation = scale_normalisation
        n_embed = 1 if shared_embedding else len(SCALES)
        self.embeddings = nn.ModuleList(embedding(in_dim) for _ in range(n_embed))
        if fusion == "attention":
            act = nn.ReLU() if scale_activation == "relu" else nn.Tanh()
            self.scale_scorer = nn.Sequential(
                nn.Linear(EMBED_DIM, HIDDEN_DIM), act, nn.Linear(HIDDEN_DIM, 1)
            )
        width = EMBED_DIM * len(SCALES) if fusion == "concat" else EMBED_DIM
        self.attention = TanhAttention(width)
        self.head = ClassifierHead(width)

    def embed_scales(self, x: Tensor) -> Tensor:
        """``(B, N, 3, D)`` -> ``(B, N, 3, 64)`` per-scale embeddings f_s (Eq. 2)."""
        if len(self.embeddings) == 1:
            return self.embeddings[0](x)
        return torch.stack([e(x[:, :, i]) for i, e in enumerate(self.embeddings)], dim=2)

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        mask = batch.mask
        f = self.embed_scales(self.stacked_features(batch))  # (B, N, 3, 64)
        attention: dict[str, Tensor] = {}
        if self.fusion == "attention":
            raw = self.scale_scorer(f).squeeze(-1)  # (B, N, 3)
            soft = torch.softmax(raw, dim=-1)  # (B, N, 3)
            weights = soft if self.scale_normalisation == "softmax" else raw
            fused = torch.einsum("bns,bnsl->bnl", weights, f)  # (B, N, 64), Eq. 4
            attention["scale"] = zero_padding(soft, mask)
            attention["scale_raw"] = zero_padding(raw, mask)
        else:
            b, n = mask.shape
            fused = f.mean(dim=2) if self.fusion == "mean" else f.reshape(b, n, -1)
            thirds = torch.full((b, n, len(SCALES)), 1.0 / len(SCALES), device=f.device)
            attention["scale"] = zero_padding(thirds.to(f.dtype), mask)
        a = masked_softmax(self.attention(fused), mask)  # (B, N)
        attention["instance"] = a
        prob = self.head(attention_pool(a, fused))  # (B,)
        return MILOutput(prob=prob, attention=attention)
