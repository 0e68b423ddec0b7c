"""Building blocks shared by the MIL models: DeepAttnMISL's embedding, attention and head.

Layer sizes follow the CS-MIL authors' DeepAttnMISL (1x1 convolutions there, the same
per-instance linear maps here): embedding D->64 + ReLU; attention 64->32 -> Tanh -> 1; head
64->32 -> ReLU -> Dropout(0.5) -> 1 -> sigmoid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csmil.mil.models.base import attention_pool, masked_softmax

EMBED_DIM = 64
HIDDEN_DIM = 32


def embedding(in_dim: int, out_dim: int = EMBED_DIM) -> nn.Sequential:
    """Per-instance Linear(in_dim, out_dim) + ReLU (DeepAttnMISL's MI-FCN)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())


class TanhAttention(nn.Module):
    """Attention logits ``w^T tanh(V h)`` per instance: ``(..., L)`` -> ``(...)``."""

    def __init__(self, dim: int = EMBED_DIM, hidden: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).squeeze(-1)


class GatedAttention(nn.Module):
    """Gated attention logits ``w^T (tanh(V h) * sigmoid(U h))`` (Ilse et al. 2018, Eq. 9)."""

    def __init__(self, dim: int = EMBED_DIM, hidden: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)


class NoiseDropout(nn.Dropout):
    """Dropout whose noise can be given instead of drawn.

    Alone it is :class:`torch.nn.Dropout` as torch computes it on a CPU (Bernoulli noise from
    torch's global generator, scaled, multiplied), on every device. Given the buffer ``noise``
    (the input's shape, already scaled by ``1 / (1 - p)``) it multiplies by that instead: when
    the folds of a method are trained together (:mod:`csmil.mil.foldbatch`), each fold's noise
    is drawn beforehand from that fold's own generator, exactly as the fold trained alone draws
    it. A model holding these on instance-level tensors draws their noise itself
    (``stacked_draws``, as :class:`csmil.mil.models.hipt.HIPT`).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self.register_buffer("noise", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or self.p >= 1:
            return super().forward(x)
        noise = self.noise
        if noise is None:  # the arithmetic of torch's CPU dropout, on every device
            noise = draw_noise(x.shape, self.p, x.device, dtype=x.dtype)
        return x * noise


def draw_noise(
    shape: tuple[int, ...],
    p: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Dropout noise of ``shape``: Bernoulli(1 - p) scaled by ``1 / (1 - p)``, from
    ``generator`` (default: torch's global one for ``device``)."""
    z = torch.empty(shape, device=device, dtype=dtype)
    return z.bernoulli_(1 - p, generator=generator).div_(1 - p)


class FoldDropout(NoiseDropout):
    """:class:`NoiseDropout` on ``(B, F)`` bag vectors, whose noise the stacked training draws
    for every fold (module by module, in the order of the forward pass)."""


class ClassifierHead(nn.Module):
    """DeepAttnMISL's ``fc6``: ``(B, L)`` -> Linear(L, 32), ReLU, Dropout(0.5), Linear(32, 1),
    sigmoid -> ``(B,)`` probability."""

    def __init__(self, dim: int = EMBED_DIM, hidden: int = HIDDEN_DIM, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), FoldDropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, bag: Tensor) -> Tensor:
        return torch.sigmoid(self.net(bag).squeeze(-1))


class AttentionMILBranch(nn.Module):
    """One DeepAttnMISL network: embedding, Tanh attention over instances, head.

    135,362 parameters at ``in_dim=2048``: 131,136 + 2,113 + 2,113.
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.embedding = embedding(in_dim)
        self.attention = TanhAttention()
        self.head = ClassifierHead()

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, M, D)`` zero-padded, ``mask`` ``(B, M)`` -> prob ``(B,)``, attention
        ``(B, M)``."""
        h = self.embedding(x)  # (B, M, 64)
        a = masked_softmax(self.attention(h), mask)  # (B, M)
        return self.head(attention_pool(a, h)), a
