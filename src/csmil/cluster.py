"""Per-patient phenotype clusters: k-means on the patient's 20x features (authors' code §1.2).

The cluster of a patch is shared by its three scales; bags draw patches from every cluster.
Output TSV columns: ``slide_id, patch_index, cluster``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from csmil.featurestore import read_features
from csmil.io import write_tsv

log = logging.getLogger(__name__)


def kmeans_labels(features: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster ids (N,) for features (N, D); fewer distinct points than clusters is fine.

    With N < n_clusters every patch is its own cluster (the rest stay empty, which bags
    mask), as k-means cannot place more centres than points.
    """
    from sklearn.cluster import KMeans

    n = len(features)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    n_distinct = len(np.unique(features, axis=0))
    k = min(n_clusters, n_distinct)
    if k < n_clusters:
        log.warning(
            "only %d distinct patches: using %d clusters instead of %d", n_distinct, k, n_clusters
        )
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    km = KMeans(n_clusters=k, random_state=seed, n_init=10)
    return km.fit_predict(np.asarray(features, dtype=np.float64)).astype(np.int64)


def cluster_patient(
    feature_paths: Sequence[str | os.PathLike],
    out_tsv: str | os.PathLike,
    n_clusters: int = 8,
    seed: int = 0,
    scale: str = "20x",
) -> pd.DataFrame:
    """Fit k-means on all patches of one patient's slides (``scale`` features) and write the
    phenotype table. Returns it. A patient without patches gets an empty table (logged)."""
    slides, idx, feats = [], [], []
    for path in feature_paths:
        sf = read_features(path, scales=(scale,))
        slides += [sf.slide_id] * sf.n
        idx.append(np.arange(sf.n))
        feats.append(sf.features[scale])
    x = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    if len(x) == 0:
        log.warning("no patches in %s: writing an empty phenotype table", list(feature_paths))
    labels = kmeans_labels(x, n_clusters, seed)
    df = pd.DataFrame(
        {
            "slide_id": slides,
            "patch_index": np.concatenate(idx) if idx else np.zeros(0, np.int64),
            "cluster": labels,
        }
    )
    write_tsv(df, out_tsv)
    sizes = np.bincount(labels, minlength=n_clusters) if len(labels) else []
    log.info("%d patches in %d clusters (sizes %s)", len(df), n_clusters, list(sizes))
    return df
