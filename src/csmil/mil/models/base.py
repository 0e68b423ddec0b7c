"""The MIL batch contract, masked softmax, and the base class every MIL model derives from.

Every model takes one :class:`MILBatch` and returns one :class:`MILOutput` (see
``docs/architecture.md``). Padded positions (``mask=False``) never change an output: models
zero their features on entry and give them exactly zero attention.

Attention names used across models (all ``(B, N, ...)``, zero at padded positions):

- ``"instance"`` ``(B, N)``: attention of each location; sums to 1 over the real instances
  of a bag (all zeros for a bag without any real instance).
- ``"scale"`` ``(B, N, S)``: attention per location and scale, in ``csmil.SCALES`` order. Its
  normalisation depends on the model and is stated in each model's docstring.
- further model-specific names (``"scale_raw"``, ``"instance_score"``) are documented where
  they are produced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from csmil import SCALES


@dataclass
class MILBatch:
    """B bags of N (padded) instances; instance ``i`` holds the co-centred features of a patch.

    Attributes:
        features: scale -> ``(B, N, D)`` float features; every scale of ``csmil.SCALES``.
        clusters: ``(B, N)`` int64 phenotype cluster id of each instance.
        mask: ``(B, N)`` bool, True for a real instance, False for padding / empty cluster.
    """

    features: dict[str, Tensor]
    clusters: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> MILBatch:
        """A copy of the batch with every tensor on ``device``."""
        return MILBatch(
            features={s: f.to(device) for s, f in self.features.items()},
            clusters=self.clusters.to(device),
            mask=self.mask.to(device),
        )

    @property
    def batch_size(self) -> int:
        """Number of bags B."""
        return int(self.mask.shape[0])

    @property
    def n_instances(self) -> int:
        """Padded number of instances N per bag."""
        return int(self.mask.shape[1])


@dataclass
class MILOutput:
    """What every MIL model returns.

    Attributes:
        prob: ``(B,)`` probability of class 1, in (0, 1); the bag prediction used everywhere.
        attention: named attention tensors (see the module docstring).
        aux_probs: extra probabilities of the bag label, ``(B,)`` or ``(B, K)``, that the model
            is also trained on (deep supervision, e.g. DTFD-MIL's tier-1 pseudo-bags). The
            training loss adds, for each, the NLL against the bag label averaged over ``K``.
            Empty for most models; evaluation ignores it.
    """

    prob: Tensor
    attention: dict[str, Tensor]
    aux_probs: dict[str, Tensor] = field(default_factory=dict)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``logits`` over ``dim`` restricted to positions where ``mask`` is True.

    Masked positions get exactly 0 weight and contribute nothing to the normaliser, so adding
    padding never changes the result. A slice without any True position returns all zeros
    (never NaN). ``logits`` and ``mask`` must broadcast to the same shape.
    """
    mask = mask.to(torch.bool)
    info = torch.finfo(logits.dtype)
    filled = logits.masked_fill(~mask, info.min)
    shifted = filled - filled.amax(dim=dim, keepdim=True).detach()
    weights = torch.exp(shifted) * mask
    return weights / weights.sum(dim=dim, keepdim=True).clamp_min(info.tiny)


def attention_pool(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum over instances: ``(B, N)`` weights and ``(B, N, L)`` values -> ``(B, L)``."""
    return torch.einsum("bn,bnl->bl", weights, values)


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` ``(B, N, ...)`` with every padded instance set to 0 (also replacing NaN/inf)."""
    shape = mask.shape + (1,) * (x.dim() - mask.dim())
    return x.masked_fill(~mask.to(torch.bool).reshape(shape), 0.0)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the figure of the paper's Table 6)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_choice(model: str, option: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ValueError naming the model, option, allowed values and received value."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"MIL model {model!r}: option {option}={value!r} is not valid; "
            f"choose one of {', '.join(repr(a) for a in allowed)}"
        )


def check_number(
    model: str, option: str, value: Any, low: float, high: float, integer: bool = False
) -> None:
    """Raise ValueError unless ``low <= value <= high`` (and an int when ``integer``)."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise ValueError(
            f"MIL model {model!r}: option {option} must be {what} in [{low}, {high}], got {value!r}"
        )


class MILModel(nn.Module):
    """Base class: stores what a checkpoint needs to rebuild the model.

    Subclasses set the class attribute ``name`` (the registry key), take ``in_dim`` plus
    keyword-only options, and pass the resolved options (all plain Python values) here.
    """

    name: ClassVar[str] = ""
    #: Scales whose features the model reads.
    scales: ClassVar[tuple[str, ...]] = SCALES
    #: Whether the folds of a method can be trained together as one stacked model
    #: (:mod:`csmil.mil.foldbatch`): a forward pass of tensor operations only (no Python loop
    #: over bags, no data-dependent shapes) whose randomness is either
    #: :class:`csmil.mil.models.layers.FoldDropout` on bag vectors or drawn by the model's own
    #: ``stacked_draws`` (see :func:`csmil.mil.foldbatch.can_batch`). Others train fold by fold.
    fold_batchable: ClassVar[bool] = True

    def __init__(self, in_dim: int, options: dict[str, Any]) -> None:
        super().__init__()
        if isinstance(in_dim, bool) or not isinstance(in_dim, int) or in_dim < 1:
            raise ValueError(
                f"MIL model {self.name!r}: in_dim must be a positive integer (the feature "
                f"size D), got {in_dim!r}"
            )
        self.in_dim = in_dim
        self.options = dict(options)
        # Input standardisation per scale, (S, D): identity until set from training features.
        # Buffers, not parameters: saved in the state dict, not counted, not trained.
        self.register_buffer("feature_mean", torch.zeros(len(SCALES), in_dim))
        self.register_buffer("feature_std", torch.ones(len(SCALES), in_dim))

    def set_feature_standardisation(self, mean: Tensor, std: Tensor) -> None:
        """Standardise every input feature as ``(x - mean) / std`` from now on.

        ``mean`` and ``std`` are ``(S, D)``, one row per scale in ``csmil.SCALES`` order
        (usually the training patients' patch statistics); ``std`` must be positive. They are
        stored in the state dict, so a loaded checkpoint applies the same standardisation.
        """
        shape = (len(SCALES), self.in_dim)
        mean, std = torch.as_tensor(mean).float(), torch.as_tensor(std).float()
        if mean.shape != shape or std.shape != shape:
            raise ValueError(
                f"MIL model {self.name!r}: standardisation mean and std must have shape {shape} "
                f"(scales, in_dim), got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not torch.isfinite(mean).all() or not (torch.isfinite(std) & (std > 0)).all():
            raise ValueError(
                f"MIL model {self.name!r}: standardisation needs finite means and finite, "
                "positive standard deviations"
            )
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def param_count(self) -> int:
        """Number of trainable parameters."""
        return count_parameters(self)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"name={self.name!r}, in_dim={self.in_dim}" + (f", {opts}" if opts else "")

    def check_batch(self, batch: MILBatch, scales: Sequence[str] | None = None) -> None:
        """Raise ValueError when ``batch`` lacks a scale or has inconsistent shapes."""
        mask = batch.mask
        if mask.dim() != 2 or mask.shape[1] == 0:
            raise ValueError(
                f"MIL model {self.name!r}: batch mask must be (B, N) with N >= 1, got shape "
                f"{tuple(mask.shape)}; a bag sampler must pad empty bags to one masked position"
            )
        for s in scales if scales is not None else self.scales:
            if s not in batch.features:
                raise ValueError(
                    f"MIL model {self.name!r} needs {s} features but the batch has only "
                    f"{sorted(batch.features)}"
                )
            f = batch.features[s]
            if f.dim() != 3 or f.shape[:2] != mask.shape or f.shape[2] != self.in_dim:
                raise ValueError(
                    f"MIL model {self.name!r}: features[{s!r}] must have shape "
                    f"{(*mask.shape, self.in_dim)} (B, N, in_dim), got {tuple(f.shape)}"
                )

    def scale_features(self, batch: MILBatch, scale: str) -> Tensor:
        """One scale's ``(B, N, D)`` features, standardised (see
        :meth:`set_feature_standardisation`), with padded instances zeroed."""
        i = SCALES.index(scale)
        x = (batch.features[scale] - self.feature_mean[i]) / self.feature_std[i]
        return zero_padding(x, batch.mask)

    def stacked_features(self, batch: MILBatch) -> Tensor:
        """All scales stacked as ``(B, N, S, D)`` in ``csmil.SCALES`` order, padding zeroed."""
        return torch.stack([self.scale_features(batch, s) for s in SCALES], dim=2)


def scales_as_instances(batch_features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten ``(B, N, S, D)`` to ``(B, N*S, D)`` instances (location-major) and their mask.

    Padding locations stay at the end of each bag, so appending padding keeps the order of the
    real instances.
    """
    b, n, s, d = batch_features.shape
    return batch_features.reshape(b, n * s, d), mask[:, :, None].expand(b, n, s).reshape(b, n * s)
