"""Bag sampling: the authors' k ~ int N(3,1) per cluster scheme, naive bags, collation, loading."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from csmil import SCALES
from csmil.encoders.featurestore import write_features
from csmil.io import write_tsv
from csmil.mil.bags import (
    EmptyPatientError,
    PatientBags,
    PatientBagSource,
    load_patient,
    sample_bags,
)

SIZES = np.array([0, 1, 2, 5, 10, 3, 0, 7])  # instances per cluster; clusters 0 and 6 empty


def make_patient(pid: str, sizes=SIZES, dim: int = 4, label: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    clusters = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int64)
    n = len(clusters)
    half = n // 2
    return PatientBags(
        patient_id=pid,
        label=label,
        features={s: rng.normal(size=(n, dim)).astype(np.float32) for s in SCALES},
        clusters=clusters,
        slide_ids=np.array([f"{pid}_a"] * half + [f"{pid}_b"] * (n - half), dtype=object),
        patch_index=np.concatenate([np.arange(half), np.arange(n - half)]).astype(np.int64),
        slides={f"{pid}_a": half, f"{pid}_b": n - half},
    )


def per_cluster_counts(source: PatientBagSource, index: np.ndarray) -> np.ndarray:
    """(B, C) number of sampled instances from each cluster in each bag."""
    clusters = source._clusters.numpy()[np.where(index >= 0, index, source.n_total)]
    return np.stack(
        [
            np.bincount(c[i >= 0], minlength=source.n_clusters)
            for c, i in zip(clusters, index, strict=True)
        ]
    )


def test_cluster_bags_take_min_k_size_from_every_cluster():
    source = PatientBagSource([make_patient("p")], n_clusters=8)
    index = source.sample(np.zeros(4000, dtype=int), np.random.default_rng(1))
    counts = per_cluster_counts(source, index)
    k = counts[:, 4]  # cluster 4 has 10 patches, more than any k drawn here
    assert k.max() < 10
    np.testing.assert_array_equal(counts, np.minimum(k[:, None], SIZES[None, :]))
    assert (counts[:, [0, 6]] == 0).all()
    # k = max(1, int(N(3, 1))): P(1)=.159, P(2)=.341, P(3)=.341, P(4)=.136, P(5)=.021
    freq = np.bincount(k, minlength=6)[1:6] / len(k)
    np.testing.assert_allclose(freq, [0.159, 0.341, 0.341, 0.136, 0.021], atol=0.025)
    # one draw of k per bag: bag length is sum_c min(k, |c|)
    assert ((index >= 0).sum(1) == np.minimum(k[:, None], SIZES).sum(1)).all()


def test_sampling_is_uniform_with_replacement_within_a_cluster():
    source = PatientBagSource([make_patient("p")], n_clusters=8)
    index = source.sample(np.zeros(4000, dtype=int), np.random.default_rng(2))
    in_c4 = np.arange(source.cluster_start[0, 4], source.cluster_start[0, 4] + 10)
    picks = index[np.isin(index, in_c4)]
    freq = np.bincount(picks - in_c4[0], minlength=10) / len(picks)
    np.testing.assert_allclose(freq, 0.1, atol=0.015)
    # with replacement: some bags pick the same patch of cluster 4 twice
    dupes = [len(set(r[np.isin(r, in_c4)])) < np.isin(r, in_c4).sum() for r in index]
    assert 0.1 < np.mean(dupes) < 0.9


def test_sampling_is_reproducible_given_the_seed():
    source = PatientBagSource([make_patient("p"), make_patient("q", seed=3)], n_clusters=8)
    which = np.array([0, 1, 1, 0, 1])
    a = source.sample(which, np.random.default_rng(7))
    b = source.sample(which, np.random.default_rng(7))
    c = source.sample(which, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    # every sampled instance belongs to the patient the bag was drawn for
    owner = source.instance_patient[np.where(a >= 0, a, 0)]
    assert (owner[a >= 0] == np.broadcast_to(which[:, None], a.shape)[a >= 0]).all()


def test_naive_bags_have_the_cluster_bag_size_but_ignore_clusters():
    patients = [make_patient("p")]
    cluster = PatientBagSource(patients, n_clusters=8, bag_mode="cluster")
    naive = PatientBagSource(patients, n_clusters=8, bag_mode="naive")
    which = np.zeros(4000, dtype=int)
    a = cluster.sample(which, np.random.default_rng(5))
    b = naive.sample(which, np.random.default_rng(5))
    np.testing.assert_array_equal((a >= 0).sum(1), (b >= 0).sum(1))
    share = per_cluster_counts(naive, b).sum(0) / (b >= 0).sum()
    np.testing.assert_allclose(share, SIZES / SIZES.sum(), atol=0.02)
    with pytest.raises(ValueError, match="bag_mode"):
        PatientBagSource(patients, bag_mode="random")


def test_collate_pads_with_masked_zero_rows_and_maps_back_to_patches():
    patients = [make_patient("p", dim=6), make_patient("q", dim=6, sizes=[1, 0, 0, 0, 0, 0, 0, 0])]
    source = PatientBagSource(patients, n_clusters=8)
    batch, index = sample_bags(source, [1, 0, 1], np.random.default_rng(0))
    lengths = (index >= 0).sum(1)
    assert lengths[0] == lengths[2] == 1 and lengths[1] > 1
    B, N = index.shape
    assert N == lengths.max()
    for s in SCALES:
        assert batch.features[s].shape == (B, N, 6) and batch.features[s].dtype == torch.float32
    assert batch.clusters.shape == (B, N) and batch.clusters.dtype == torch.int64
    np.testing.assert_array_equal(batch.mask.numpy(), index >= 0)
    assert (batch.features["20x"][~batch.mask] == 0).all()
    for b, i in np.argwhere(index >= 0):
        gid = index[b, i]
        p = patients[source.instance_patient[gid]]
        row = np.flatnonzero(
            (p.slide_ids == source.slide_ids[gid]) & (p.patch_index == source.patch_index[gid])
        )[0]
        for s in SCALES:
            np.testing.assert_array_equal(batch.features[s][b, i].numpy(), p.features[s][row])
        assert batch.clusters[b, i] == p.clusters[row]


def test_empty_patient_and_bad_cluster_ids_give_named_errors():
    empty = make_patient("ghost", sizes=[0] * 8)
    assert empty.n == 0
    source = PatientBagSource([make_patient("p"), empty], n_clusters=8)
    source.sample([0], np.random.default_rng(0))
    with pytest.raises(EmptyPatientError, match="ghost.*ghost_a"):
        source.sample([0, 1], np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        PatientBagSource([make_patient("p")], n_clusters=4)


def test_load_patient_joins_slides_and_phenotypes(tmp_path):
    rng = np.random.default_rng(0)
    stores = []
    rows = []
    for slide, n in [("s1", 5), ("s_empty", 0), ("s2", 3)]:
        feats = {s: rng.normal(size=(n, 4)).astype(np.float32) for s in SCALES}
        write_features(tmp_path / f"{slide}.h5", slide, feats, np.zeros((n, 2)), {})
        stores.append(feats)
        rows += [{"slide_id": slide, "patch_index": i, "cluster": (i * 3) % 8} for i in range(n)]
    table = pd.DataFrame(rows).iloc[::-1]  # row order must not matter
    write_tsv(table, tmp_path / "pheno.tsv")
    paths = [tmp_path / f"{s}.h5" for s in ("s1", "s_empty", "s2")]
    p = load_patient("P1", 1, paths, tmp_path / "pheno.tsv")
    assert p.n == 8 and p.dim == 4 and p.slides == {"s1": 5, "s_empty": 0, "s2": 3}
    assert list(p.slide_ids) == ["s1"] * 5 + ["s2"] * 3
    np.testing.assert_array_equal(p.patch_index, [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(p.clusters, [0, 3, 6, 1, 4, 0, 3, 6])
    np.testing.assert_array_equal(p.features["5x"][5:], stores[2]["5x"])

    write_tsv(table[table["patch_index"] != 2], tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="missing \\[2\\]"):
        load_patient("P1", 1, paths, tmp_path / "bad.tsv")
    write_tsv(table.iloc[:0], tmp_path / "none.tsv")
    ghost = load_patient("P2", 0, [tmp_path / "s_empty.h5"], tmp_path / "none.tsv")
    with pytest.raises(EmptyPatientError, match="P2.*s_empty \\(0 patches\\)"):
        ghost.require_patches("trained on")
