"""HIPT-style hierarchical transformer aggregator (after Chen et al., CVPR 2022) over the
per-scale SimSiam features (paper §5.1, method 9).

HIPT pre-trains two ViTs (16 px -> 256 px -> 4096 px) and trains only its slide-level
aggregator. We cannot pre-train HIPT's ViTs here (no 4096-px region pipeline and no such
compute in the workflow), so this model keeps HIPT's two-level transformer aggregation and
its attention-pooled head but runs them on our features: the lower level is the three scales
of one location, the upper level the locations of a bag.
"""

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
    check_number,
    masked_softmax,
)
from csmil.mil.models.layers import EMBED_DIM, GatedAttention, NoiseDropout, draw_noise


class SelfAttention(nn.Module):
    """Multi-head self-attention with :class:`torch.nn.MultiheadAttention`'s parameters (names,
    shapes and initialisation: ``in_proj_weight`` Xavier-uniform, zero biases) and arithmetic,
    with dropout on the attention weights through :class:`NoiseDropout`."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"model width {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.dropout = NoiseDropout(dropout)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """``x`` ``(B, T, L)``, ``key_padding`` ``(B, T)`` True where a token is ignored."""
        b, t, dim = x.shape
        h, dh = self.n_heads, dim // self.n_heads
        q, k, v = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
        q, k, v = (z.reshape(b, t, h, dh).transpose(1, 2) for z in (q, k, v))  # (B, H, T, dh)
        scores = (q * (1.0 / math.sqrt(dh))) @ k.transpose(-2, -1)  # (B, H, T, T)
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, t, dim)
        return self.out_proj(out)


class TransformerLayer(nn.Module):
    """A post-norm transformer encoder layer with the parameters and arithmetic of
    :class:`torch.nn.TransformerEncoderLayer` (``batch_first``, ReLU, ``norm_first=False``):
    ``x = norm1(x + drop1(attn(x)))``, ``x = norm2(x + drop2(linear2(drop(relu(linear1(x))))))``.
    Its four dropouts are :class:`NoiseDropout`, in that order."""

    def __init__(self, dim: int, n_heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, n_heads, dropout)
        self.linear1 = nn.Linear(dim, feedforward)
        self.dropout = NoiseDropout(dropout)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = NoiseDropout(dropout)
        self.dropout2 = NoiseDropout(dropout)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, key_padding)))
        ff = self.linear2(self.dropout(torch.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(ff))

    def noise_shapes(self, b: int, t: int, dim: int) -> list[tuple[int, ...]]:
        """The shapes of the noise one training pass over ``(b, t, dim)`` draws, in order."""
        return [(b, self.self_attn.n_heads, t, t), (b, t, dim), (b, t, self.linear1.out_features),
                (b, t, dim)]  # fmt: skip

    def noises(self) -> list[NoiseDropout]:
        """Its dropouts in the order a forward pass calls them."""
        return [self.self_attn.dropout, self.dropout1, self.dropout, self.dropout2]


class TransformerStack(nn.Module):
    """``n_layers`` :class:`TransformerLayer` s (``layers.0``, ``layers.1``, ... as torch's
    ``TransformerEncoder`` names them), each initialised on its own."""

    def __init__(self, n_layers: int, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(dim, n_heads, dim, dropout) for _ in range(n_layers)
        )

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, key_padding)
        return x


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
    219,586 parameters at D = 2048. The transformer layers are our own, with the parameters
    and arithmetic of torch's, so that their dropout noise can be drawn per fold when the
    folds train together (:meth:`stacked_draws`).

    Attention: ``"instance"`` ``(B, N)`` the global gated attention.

    Args:
        in_dim: feature size D of every scale.
        dropout: dropout in phi, the transformer layers and rho (HIPT: 0.25).
    """

    name = "hipt"
    n_heads = 4
    #: its stacked draws are dropout noise, from the fold's generator of torch's device
    stacked_draws_generator = "device"

    def __init__(self, in_dim: int, *, dropout: float = 0.25) -> None:
        check_number(self.name, "dropout", dropout, 0.0, 0.9)
        super().__init__(in_dim, {"dropout": float(dropout)})
        self.phi = nn.Sequential(nn.Linear(in_dim, EMBED_DIM), nn.ReLU(), NoiseDropout(dropout))
        self.scale_embedding = nn.Parameter(torch.randn(len(SCALES), EMBED_DIM) * 0.02)
        self.local = TransformerStack(1, EMBED_DIM, self.n_heads, dropout)
        self.globe = TransformerStack(2, EMBED_DIM, self.n_heads, dropout)
        self.attention = GatedAttention(EMBED_DIM, EMBED_DIM)
        self.rho = nn.Sequential(nn.Linear(EMBED_DIM, EMBED_DIM), nn.ReLU(), NoiseDropout(dropout))
        self.classifier = nn.Linear(EMBED_DIM, 1)

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        mask = batch.mask
        loc = self.location_tokens(batch)  # (B, N, 64)
        # A bag without any real location attends over its (zeroed) padding instead of over
        # nothing, which would be NaN; its outputs are masked out below.
        padding = ~mask & mask.any(dim=1, keepdim=True)  # (B, N)
        h = self.globe(loc, padding)  # (B, N, 64)
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

    def _noise_names(self) -> dict[NoiseDropout, str]:
        """Each dropout module's name (looked up once; stacked_draws runs every step)."""
        if "_names_of_noise" not in self.__dict__:
            self.__dict__["_names_of_noise"] = {
                m: name for name, m in self.named_modules() if isinstance(m, NoiseDropout)
            }
        return self.__dict__["_names_of_noise"]

    def stacked_draws(
        self, mask: Tensor, n: int, b: int, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        """The dropout noise one training pass on a fold's own ``(B_k, N_k)`` mask draws (from
        ``generator``, in the order and shapes of :meth:`forward`), padded with ones to ``b``
        bags of ``n`` locations: the ``noise`` buffers of a stacked pass. {} in eval mode."""
        if not self.training or not 0 < self.phi[2].p < 1:
            return {}
        bk, nk = mask.shape
        s, dim = len(SCALES), EMBED_DIM
        device = generator.device if generator is not None else torch.device("cpu")
        names = self._noise_names()
        out: dict[str, Tensor] = {}

        def put(module: NoiseDropout, own, full, region, flat: bool = False) -> None:
            padded = torch.ones(full, device=device)
            z = draw_noise(own, module.p, device, generator)
            padded[region] = z.reshape(padded[region].shape)
            out[f"{names[module]}.noise"] = padded.flatten(0, 1) if flat else padded

        bags_locations = (slice(bk), slice(nk))
        put(self.phi[2], (bk, nk, s, dim), (b, n, s, dim), bags_locations)
        for layer in self.local.layers:  # over (B * N) locations: padded as (B, N, ...)
            owns = layer.noise_shapes(bk * nk, s, dim)
            for module, own in zip(layer.noises(), owns, strict=True):
                put(module, own, (b, n, *own[1:]), bags_locations, flat=True)
        for layer in self.globe.layers:  # over B bags of N locations
            fulls = layer.noise_shapes(b, n, dim)
            owns = layer.noise_shapes(bk, nk, dim)
            for module, own, full in zip(layer.noises(), owns, fulls, strict=True):
                # attention weights (B, H, N, N): pad bags, queries and keys
                attention = (slice(bk), slice(None), slice(nk), slice(nk))
                put(module, own, full, attention if len(own) == 4 else bags_locations)
        put(self.rho[2], (bk, dim), (b, dim), (slice(bk),))
        return out
