"""DeepAttnMISL (Yao et al., MedIA 2020) as used by the CS-MIL authors, and its multi-scale
bag variants (paper §5.1, methods 1-3, 5 and 6).

The authors' version attends over every sampled patch (not over cluster means as in the
original survival model) and ends in a sigmoid probability; see
``reference/official-implementation.md`` §2.1.
"""

from __future__ import annotations

from csmil import SCALES
from csmil.mil.models.base import MILBatch, MILModel, MILOutput, check_choice, scales_as_instances
from csmil.mil.models.layers import AttentionMILBranch


class DeepAttnMISL(MILModel):
    """Single-scale DeepAttnMISL on the ``scale`` features only.

    Linear(D, 64) + ReLU per instance; Tanh attention 64 -> 32 -> 1 with a masked softmax over
    instances; attention-weighted mean; head 64 -> 32 -> ReLU -> Dropout(0.5) -> 1 -> sigmoid.
    135,362 parameters at D = 2048. Attention: ``"instance"`` ``(B, N)``.

    Args:
        in_dim: feature size D.
        scale: which scale's features to read, one of ``csmil.SCALES``.
    """

    name = "deepattnmisl"

    def __init__(self, in_dim: int, *, scale: str = "20x") -> None:
        check_choice(self.name, "scale", scale, SCALES)
        super().__init__(in_dim, {"scale": scale})
        self.scale = scale
        self.scales = (scale,)
        self.net = AttentionMILBranch(in_dim)

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        x = self.scale_features(batch, self.scale)  # (B, N, D)
        prob, a = self.net(x, batch.mask)  # (B,), (B, N)
        return MILOutput(prob=prob, attention={"instance": a})


class DeepAttnMISLMulti(MILModel):
    """DeepAttnMISL with the scales as extra instances and no scale identity (method 5).

    Each location contributes its 20x, 10x and 5x features as three separate instances of one
    bag of ``3N``; one set of weights serves all of them, and nothing tells the network which
    scale an instance came from. 135,362 parameters at D = 2048.

    Attention: ``"scale"`` ``(B, N, 3)`` is the attention of each of the ``3N`` instances (it
    sums to 1 over locations and scales together); ``"instance"`` ``(B, N)`` is its sum over
    the three scales of a location.

    In the paper this baseline differs from MS-DA-MIL in how bags are built (patches of all
    scales clustered and sampled as independent instances), not in the network; on a batch of
    co-centred triplets both compute the same function.
    """

    name = "deepattnmisl_multi"

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, {})
        self.net = AttentionMILBranch(in_dim)

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        x, mask = scales_as_instances(self.stacked_features(batch), batch.mask)  # (B, 3N, D)
        prob, a = self.net(x, mask)  # (B,), (B, 3N)
        a = a.reshape(batch.batch_size, batch.n_instances, len(SCALES))  # (B, N, 3)
        return MILOutput(prob=prob, attention={"instance": a.sum(-1), "scale": a})


class MSDAMIL(DeepAttnMISLMulti):
    """MS-DA-MIL (Hashimoto et al., CVPR 2020), multi-scale stage (method 6).

    Hashimoto et al. embed each magnification with its own (pre-trained) feature extractor and
    put the features of the same location at every magnification into one bag, aggregated by
    one attention-MIL network with shared weights. Here the scale-specific extractors are the
    per-scale SimSiam encoders, so the MIL part is one DeepAttnMISL over the ``3N`` co-centred
    instances of a bag: 135,362 parameters at D = 2048, as in the CS-MIL paper's Table 6.
    The domain-adversarial branch is left out: it needs domain (hospital) labels, which a
    cohort here does not have, and it is not counted in Table 6. Attention as in
    :class:`DeepAttnMISLMulti`.
    """

    name = "msdamil"
