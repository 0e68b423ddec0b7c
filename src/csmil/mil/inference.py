"""Scoring bags with a trained MIL model: test bags of patients, and their attention per patch.

Used by training (the test patients of a fold) and by prediction (new slides). Testing follows
the authors' procedure (reference notes §3.3): ``n_bags`` random bags per patient, scored in eval
mode without gradients. Attention (§5): every attention tensor of each bag is averaged, per
sampled patch, over the bags the patch appeared in (a patch drawn twice in one bag counts once
for that bag).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from csmil import SCALES
from csmil.mil.bags import PatientBagSource
from csmil.mil.results import ATTENTION_COLUMNS, ATTENTION_KEYS, SCALE_ATTENTION

log = logging.getLogger(__name__)


def predict_bags(
    model: torch.nn.Module,
    source: PatientBagSource,
    which: Sequence[int] | np.ndarray,
    n_bags: int,
    rng: np.random.Generator,
    batch_bags: int = 50,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Score ``n_bags`` random bags of each patient position in ``which`` (P,), eval mode.

    Returns probabilities (P, n_bags), the sampled global instance indices (P * n_bags, N; -1 =
    padding) and each attention tensor the model returns, padded to the same (P * n_bags, N, ...).
    """
    model.eval()
    which = np.repeat(np.asarray(which, dtype=np.int64), n_bags)
    index = source.sample(which, rng)
    probs, att, skipped = [], {}, set()
    with torch.no_grad():
        for g in range(0, len(which), batch_bags):
            chunk = index[g : g + batch_bags]
            batch = source.collate(chunk)
            out = model(batch)
            probs.append(out.prob.float().cpu().numpy())
            for name, a in out.attention.items():
                if tuple(a.shape[:2]) != tuple(batch.mask.shape):
                    skipped.add(name)  # not one value per instance: not exported
                    continue
                full = np.zeros((len(chunk), index.shape[1], *a.shape[2:]), np.float32)
                full[:, : a.shape[1]] = a.float().cpu().numpy()
                att.setdefault(name, []).append(full)
    if skipped:
        log.debug("attention %s is not per instance and is not exported", sorted(skipped))
    att = {k: np.concatenate(v) for k, v in att.items() if k not in skipped}
    return np.concatenate(probs).reshape(-1, n_bags), index, att


def attention_table(
    source: PatientBagSource, index: np.ndarray, attention: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """Per sampled patch, each attention averaged over the bags it appeared in.

    ``index`` (B, N) are global instance indices (-1 = padding); ``attention["instance"]`` is
    (B, N) and ``attention["scale"]`` (B, N, S) in ``SCALES`` order when present. Columns:
    :data:`csmil.mil.results.ATTENTION_COLUMNS` (NaN where the model has no such attention),
    sorted by patient, slide and patch.
    """
    bag, pos = np.nonzero(index >= 0)
    gid = index[bag, pos]
    _, first = np.unique(bag * (source.n_total + 1) + gid, return_index=True)  # once per bag
    bag, pos, gid = bag[first], pos[first], gid[first]
    patches, inverse, n_bags = np.unique(gid, return_inverse=True, return_counts=True)

    def mean_of(values: np.ndarray) -> np.ndarray:
        return np.bincount(inverse, weights=values, minlength=len(patches)) / n_bags

    nan = np.full(len(patches), np.nan)
    columns = {"instance": nan}
    if "instance" in attention:
        columns["instance"] = mean_of(attention["instance"][bag, pos])
    scale = attention.get("scale")
    for j, s in enumerate(SCALES):
        ok = scale is not None and scale.ndim == 3 and scale.shape[2] == len(SCALES)
        columns[SCALE_ATTENTION[s]] = mean_of(scale[bag, pos, j]) if ok else nan
    df = pd.DataFrame(
        {
            "patient_id": [source.patients[p].patient_id for p in source.instance_patient[patches]],
            "slide_id": source.slide_ids[patches],
            "patch_index": source.patch_index[patches],
            "n_bags": n_bags,
            **columns,
        },
        columns=list(ATTENTION_COLUMNS),
    )
    return df.sort_values(["patient_id", *ATTENTION_KEYS], ignore_index=True)
