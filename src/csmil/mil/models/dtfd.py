"""DTFD-MIL (Zhang et al., CVPR 2022): double-tier feature distillation over pseudo-bags
(paper §5.1, method 8)."""

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
    check_number,
    masked_softmax,
    scales_as_instances,
)
from csmil.mil.models.layers import EMBED_DIM, GatedAttention, embedding


class DTFD(MILModel):
    """Double-tier feature distillation MIL with the scales as instances.

    1. The ``3N`` scale features of a bag (shared weights, no scale identity, as the paper
       aggregates "multiple scales and multiple locations") are embedded by Linear(D, 64) +
       ReLU (DTFD's dimension reduction, here at the DeepAttnMISL width).
    2. The real instances are split at random into ``n_pseudo_bags`` pseudo-bags of (almost)
       equal size (contiguous chunks of a permutation). In training the permutation comes from
       torch's global generator (seeded by the trainer); in eval mode it comes from a generator
       seeded with ``seed`` for every bag, so a bag's split depends only on its number of real
       instances and predictions are deterministic. A bag with fewer real instances than
       pseudo-bags puts instance ``g mod n`` in pseudo-bag ``g`` (no empty pseudo-bag).
    3. Tier 1: gated attention (64 -> 32) within each pseudo-bag, pooled feature, and a tier-1
       classifier Linear(64, 1) whose sigmoid outputs ``(B, G)`` are returned as
       ``aux_probs["tier1"]``: every pseudo-bag inherits the bag label, as in DTFD's tier-1 loss.
    4. Distillation per pseudo-bag: ``"afs"`` the attention-pooled feature (default; the
       variant the DTFD paper reports best on CAMELYON16); ``"maxmins"`` the attention-weighted
       features a_k h_k of the instances with the highest and lowest tier-1 score (the
       classifier's weights applied to a_k h_k, DTFD's Grad-CAM-style instance probability);
       ``"maxs"`` the highest only.
    5. Tier 2: gated attention (64 -> 32) over the distilled features and a classifier
       Linear(64, 1) + sigmoid give ``prob``.

    No dropout (DTFD's default). 139,652 parameters at D = 2048.

    Attention: ``"scale"`` ``(B, N, 3)`` each of the ``3N`` instances' weight in the bag
    feature, i.e. tier-1 attention times the tier-2 weight of its pseudo-bag (AFS) or of its
    distilled copies (MaxMinS/MaxS), renormalised to sum to 1 per bag (a no-op for AFS);
    ``"instance"`` ``(B, N)`` its sum over scales.
    """

    name = "dtfd"

    def __init__(
        self, in_dim: int, *, n_pseudo_bags: int = 4, distill: str = "afs", seed: int = 0
    ) -> None:
        check_number(self.name, "n_pseudo_bags", n_pseudo_bags, 1, 1024, integer=True)
        check_choice(self.name, "distill", distill, ("afs", "maxmins", "maxs"))
        check_number(self.name, "seed", seed, 0, 2**63 - 1, integer=True)
        super().__init__(in_dim, {"n_pseudo_bags": n_pseudo_bags, "distill": distill, "seed": seed})
        self.n_pseudo_bags = n_pseudo_bags
        self.distill = distill
        self.seed = seed
        self.embedding = embedding(in_dim)
        self.tier1_attention = GatedAttention()
        self.tier1_classifier = nn.Linear(EMBED_DIM, 1)
        self.tier2_attention = GatedAttention()
        self.tier2_classifier = nn.Linear(EMBED_DIM, 1)
        # Pseudo-bag ranks given from outside (stacked training draws them per fold beforehand,
        # see :meth:`stacked_draws`); None: drawn in the forward pass.
        self.register_buffer("pseudo_ranks", None, persistent=False)

    def _ranks(self, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, M)`` rank of each real instance in its bag's random order, -1 at padding.
        In training the order comes from ``generator`` (default: torch's global one)."""
        b, m = mask.shape
        ranks = torch.full((b, m), -1, dtype=torch.long)
        gen = torch.Generator()
        for i in range(b):
            real = torch.nonzero(mask[i].cpu(), as_tuple=True)[0]
            if self.training:
                perm = torch.randperm(len(real), generator=generator)
            else:
                perm = torch.randperm(len(real), generator=gen.manual_seed(self.seed))
            ranks[i, real[perm]] = torch.arange(len(real))
        return ranks

    def stacked_draws(
        self, mask: Tensor, n: int, b: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """The random pseudo-bag ranks one forward pass on a fold's own ``(B_k, N_k)`` mask
        draws (from ``generator``, in the same order), padded to ``b`` bags of ``n``
        locations: the ``pseudo_ranks`` buffer of a stacked forward pass."""
        bk, nk = mask.shape
        x_mask = mask[:, :, None].expand(bk, nk, len(SCALES)).reshape(bk, nk * len(SCALES))
        ranks = self._ranks(x_mask, generator).reshape(bk, nk, len(SCALES))
        out = torch.full((b, n, len(SCALES)), -1, dtype=torch.long)
        out[:bk, :nk] = ranks
        return {"pseudo_ranks": out.reshape(b, n * len(SCALES))}

    def pseudo_bag_membership(self, mask: Tensor) -> Tensor:
        """``(B, M)`` instance mask -> ``(B, G, M)`` bool membership of pseudo-bags."""
        g = self.n_pseudo_bags
        ranks = self.pseudo_ranks if self.pseudo_ranks is not None else self._ranks(mask)
        ranks = ranks.to(mask.device)[:, None, :]  # (B, 1, M)
        n = mask.sum(dim=1)[:, None, None]  # (B, 1, 1)
        group = torch.arange(g, device=mask.device)[None, :, None]  # (1, G, 1)
        chunked = ranks * g // n.clamp_min(1) == group
        wrapped = ranks == group % n.clamp_min(1)
        return torch.where(n >= g, chunked, wrapped) & mask[:, None, :]

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        x, mask = scales_as_instances(self.stacked_features(batch), batch.mask)  # (B, M, D)
        h = self.embedding(x)  # (B, M, 64)
        member = self.pseudo_bag_membership(mask)  # (B, G, M)
        a1 = masked_softmax(self.tier1_attention(h)[:, None, :], member)  # (B, G, M)
        pooled = torch.einsum("bgm,bml->bgl", a1, h)  # (B, G, 64)
        tier1 = torch.sigmoid(self.tier1_classifier(pooled).squeeze(-1))  # (B, G)
        valid = member.any(dim=2)  # (B, G)
        if self.distill == "afs":
            distilled, dmask, source = pooled, valid, a1  # source: (B, K, M) weights
        else:
            distilled, dmask, source = self._select(h, a1, member, valid)
        a2 = masked_softmax(self.tier2_attention(distilled), dmask)  # (B, K)
        prob = torch.sigmoid(self.tier2_classifier(attention_pool(a2, distilled)).squeeze(-1))
        weight = torch.einsum("bk,bkm->bm", a2, source)  # (B, M)
        weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)
        weight = weight.reshape(batch.batch_size, batch.n_instances, len(SCALES))
        return MILOutput(
            prob=prob,
            attention={"instance": weight.sum(-1), "scale": weight},
            aux_probs={"tier1": tier1},
        )

    def _select(
        self, h: Tensor, a1: Tensor, member: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """MaxMinS / MaxS: per pseudo-bag, the a_k h_k of the top (and bottom) scored
        instance. Returns features ``(B, K, 64)``, their mask ``(B, K)`` and the one-hot
        instance weights ``(B, K, M)`` that produced them."""
        weighted = a1[..., None] * h[:, None]  # (B, G, M, 64)
        with torch.no_grad():
            score = weighted @ self.tier1_classifier.weight[0]  # (B, G, M)
            top = score.masked_fill(~member, -torch.inf).argmax(dim=2)  # (B, G)
            picks = [top]
            if self.distill == "maxmins":
                picks.append(score.masked_fill(~member, torch.inf).argmin(dim=2))
        idx = torch.stack(picks, dim=2)  # (B, G, P)
        gathered = weighted.gather(2, idx[..., None].expand(*idx.shape, h.shape[-1]))
        b, g, p = idx.shape
        onehot = torch.zeros(b, g, p, h.shape[1], dtype=h.dtype, device=h.device).scatter(
            3, idx[..., None], a1.gather(2, idx)[..., None]
        )
        dmask = valid[:, :, None].expand(b, g, p).reshape(b, g * p)
        return gathered.reshape(b, g * p, -1), dmask, onehot.reshape(b, g * p, -1)
