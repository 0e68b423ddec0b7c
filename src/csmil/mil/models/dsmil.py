"""DS-MIL (Li, Li and Eliceiri, CVPR 2021): dual-stream MIL on concatenated per-location
multi-scale features (paper §5.1, method 7)."""

from __future__ import annotations

import math

import torch
from torch import nn

from csmil import SCALES
from csmil.mil.models.base import MILBatch, MILModel, MILOutput, attention_pool, masked_softmax


class DSMIL(MILModel):
    """Dual-stream MIL over the per-location concatenation [f_20x; f_10x; f_5x] (3D-d).

    - Max stream: an instance classifier Linear(3D, 1) scores every instance; the bag's max
      score c_m (over real instances) is the max-stream logit, and its instance is critical.
    - Bag stream: queries q_i = tanh(W2 relu(W1 h_i)) (3D -> 128 -> 128); attention
      A = masked softmax_i(<q_i, q_m> / sqrt(128)) against the critical instance's query;
      bag embedding b = sum_i A_i h_i (values are the features themselves, as in the authors'
      default without a value projection); bag logit = Linear(3D, 1)(b) (their Conv1d with a
      kernel of the full width).
    - One probability: prob = (sigmoid(c_m) + sigmoid(bag logit)) / 2, the authors' averaged
      test-time score. Training uses the NLL of this average (the original sums the two
      streams' BCE losses; both streams receive gradients either way).

    Like Li et al.'s multi-scale DS-MIL, features of a location's scales are concatenated, so
    the aggregator works on the raw 3D-d features without a dimension reduction. No dropout.
    815,362 parameters at D = 2048.

    Attention: ``"instance"`` ``(B, N)`` the bag-stream attention A; ``"instance_score"``
    ``(B, N)`` the max-stream instance probabilities sigmoid(c_i) (zero at padding).
    """

    name = "dsmil"
    query_dim = 128

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, {})
        width = in_dim * len(SCALES)
        self.instance_classifier = nn.Linear(width, 1)
        self.query = nn.Sequential(
            nn.Linear(width, self.query_dim),
            nn.ReLU(),
            nn.Linear(self.query_dim, self.query_dim),
            nn.Tanh(),
        )
        self.bag_classifier = nn.Linear(width, 1)

    def forward(self, batch: MILBatch) -> MILOutput:
        self.check_batch(batch)
        mask = batch.mask
        b, n = mask.shape
        h = self.stacked_features(batch).reshape(b, n, -1)  # (B, N, 3D)
        c = self.instance_classifier(h).squeeze(-1)  # (B, N)
        critical = c.masked_fill(~mask, -math.inf).argmax(dim=1)  # (B,); 0 for an empty bag
        max_logit = c.gather(1, critical[:, None]).squeeze(1)  # (B,)
        q = self.query(h)  # (B, N, 128)
        q_m = q.gather(1, critical[:, None, None].expand(b, 1, q.shape[-1]))  # (B, 1, 128)
        scores = (q @ q_m.transpose(1, 2)).squeeze(-1) / math.sqrt(self.query_dim)  # (B, N)
        a = masked_softmax(scores, mask)  # (B, N)
        bag_logit = self.bag_classifier(attention_pool(a, h)).squeeze(-1)  # (B,)
        prob = 0.5 * (torch.sigmoid(max_logit) + torch.sigmoid(bag_logit))
        inst = torch.sigmoid(c) * mask
        return MILOutput(prob=prob, attention={"instance": a, "instance_score": inst})
