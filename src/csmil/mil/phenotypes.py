"""Per-patient phenotype clusters: k-means on the patient's features (authors' code §1.2).

The authors cluster each patient's 20x features; the cluster of a patch is shared by its three
scales and bags draw patches from every cluster. Single-scale baselines cluster at their own
scale and the scales-as-instances baseline on all scales together, so the table holds one
clustering per choice. Output TSV columns: ``slide_id, patch_index, cluster`` (20x, the
default), ``cluster_10x``, ``cluster_5x`` and ``cluster_all`` (the three scales' features
concatenated, each scale standardised first so that none dominates).

This module owns the phenotype TSV: :data:`PHENOTYPE_COLUMNS` (required) and
:data:`CLUSTER_COLUMNS`, written by :func:`cluster_patient` and read by :func:`read_phenotypes`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from csmil import SCALES
from csmil.encoders.featurestore import read_features
from csmil.io import read_tsv, write_tsv
from csmil.runtime import COMPUTE_THREADS

log = logging.getLogger(__name__)

#: Columns every phenotype table has (the 20x clustering is ``cluster``).
PHENOTYPE_COLUMNS: tuple[str, ...] = ("slide_id", "patch_index", "cluster")
#: Clustering name -> phenotype table column.
CLUSTER_COLUMNS: dict[str, str] = {
    "20x": "cluster",
    "10x": "cluster_10x",
    "5x": "cluster_5x",
    "all": "cluster_all",
}


def read_phenotypes(path: str | os.PathLike) -> pd.DataFrame:
    """A phenotype table: one row per patch, ``slide_id`` (str), ``patch_index`` and the cluster
    columns of :data:`CLUSTER_COLUMNS` it holds (``cluster`` at least)."""
    table = read_tsv(path, dtype={"slide_id": str})
    missing = [c for c in PHENOTYPE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(PHENOTYPE_COLUMNS)}")
    return table


def kmeans_labels(features: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster ids (N,) for features (N, D); fewer distinct points than clusters is fine.

    With N < n_clusters every patch is its own cluster (the rest stay empty, which bags
    mask), as k-means cannot place more centres than points. k-means runs on
    :data:`csmil.runtime.COMPUTE_THREADS` ``["clustering"]`` threads (OpenMP and BLAS), as the
    centres' low-order bits follow the thread count.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

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
    # k-means sums over chunks of points per thread: a fixed count, whatever the job's cores
    with threadpool_limits(COMPUTE_THREADS["clustering"]):
        return km.fit_predict(np.asarray(features, dtype=np.float64)).astype(np.int64)


def cluster_patient(
    feature_paths: Sequence[str | os.PathLike],
    out_tsv: str | os.PathLike,
    n_clusters: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Fit k-means on all patches of one patient's slides, once per clustering (20x, 10x, 5x
    and all scales), and write the phenotype table. Returns it. A patient without patches gets
    an empty table (logged)."""
    slides, idx = [], []
    feats: dict[str, list[np.ndarray]] = {s: [] for s in SCALES}
    for path in feature_paths:
        sf = read_features(path, scales=SCALES)
        slides += [sf.slide_id] * sf.n
        idx.append(np.arange(sf.n))
        for s in SCALES:
            feats[s].append(sf.features[s])
    x = {s: np.concatenate(f) if f else np.zeros((0, 1), np.float32) for s, f in feats.items()}
    n = len(x["20x"])
    if n == 0:
        log.warning("no patches in %s: writing an empty phenotype table", list(feature_paths))
    x["all"] = np.concatenate([_standardise(x[s]) for s in SCALES], axis=1)
    df = pd.DataFrame(
        {"slide_id": slides, "patch_index": np.concatenate(idx) if idx else np.zeros(0, np.int64)}
    )
    for clustering, column in CLUSTER_COLUMNS.items():
        df[column] = kmeans_labels(x[clustering], n_clusters, seed)
        sizes = np.bincount(df[column], minlength=n_clusters) if n else []
        log.info("%s clustering: %d patches, cluster sizes %s", clustering, n, list(sizes))
    write_tsv(df, out_tsv)
    return df


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance columns (constant columns stay zero)."""
    if len(x) == 0:
        return x
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
