import numpy as np

from csmil.encoders.featurestore import write_features
from csmil.io import read_tsv
from csmil.mil.phenotypes import cluster_patient, kmeans_labels

SCALES = ("20x", "10x", "5x")


def make_slide(path, sid, centres, n_each, rng):
    x = np.concatenate([c + 0.05 * rng.standard_normal((n_each, 4)) for c in centres])
    feats = {s: x.astype(np.float32) for s in SCALES}
    write_features(path, sid, feats, np.zeros((len(x), 2)), {s: "e" for s in SCALES})
    return x


def test_patient_clusters_recover_blobs_across_slides(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 5
    make_slide(tmp_path / "a.h5", "a", centres[:2], 10, rng)
    make_slide(tmp_path / "b.h5", "b", centres[2:], 10, rng)
    df = cluster_patient(
        [tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "p.tsv", n_clusters=4, seed=0
    )
    assert df.columns.tolist() == [
        "slide_id",
        "patch_index",
        "cluster",
        "cluster_10x",
        "cluster_5x",
        "cluster_all",
    ]
    assert df["slide_id"].tolist() == ["a"] * 20 + ["b"] * 20
    assert df["patch_index"].tolist() == list(range(20)) * 2
    # each blob of 10 is one cluster, four distinct clusters in all
    blocks = df["cluster"].to_numpy().reshape(4, 10)
    assert all(len(set(b)) == 1 for b in blocks)
    assert len(set(blocks[:, 0])) == 4
    assert read_tsv(tmp_path / "p.tsv").equals(df)


def test_clustering_is_seeded_and_handles_few_patches():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 3))
    assert (kmeans_labels(x, 8, 3) == kmeans_labels(x, 8, 3)).all()
    few = kmeans_labels(x[:3], 8, 0)
    assert sorted(few.tolist()) == [0, 1, 2]
    assert kmeans_labels(np.zeros((0, 3)), 8, 0).shape == (0,)
    same = kmeans_labels(np.ones((5, 3)), 8, 0)
    assert (same == 0).all()


def test_empty_patient_gives_empty_table(tmp_path):
    write_features(
        tmp_path / "e.h5",
        "e",
        {s: np.zeros((0, 4), np.float32) for s in SCALES},
        np.zeros((0, 2)),
        {},
    )
    df = cluster_patient([tmp_path / "e.h5"], tmp_path / "p.tsv", n_clusters=8, seed=0)
    assert len(df) == 0 and (tmp_path / "p.tsv").exists()


def test_each_scale_is_clustered_on_its_own_features(tmp_path):
    rng = np.random.default_rng(2)
    # 20x features split patches into halves A/B; 5x features into odd/even patches
    half = np.repeat([0, 1], 10)
    parity = np.tile([0, 1], 10)
    f20 = (half[:, None] * 10 + 0.01 * rng.standard_normal((20, 3))).astype(np.float32)
    f5 = (parity[:, None] * 10 + 0.01 * rng.standard_normal((20, 3))).astype(np.float32)
    feats = {"20x": f20, "10x": f20, "5x": f5}
    write_features(tmp_path / "a.h5", "a", feats, np.zeros((20, 2)), {s: "e" for s in SCALES})
    df = cluster_patient([tmp_path / "a.h5"], tmp_path / "p.tsv", n_clusters=2, seed=0)

    def same_partition(labels, truth):
        return len(set(zip(labels, truth, strict=True))) == 2

    assert same_partition(df["cluster"], half)
    assert same_partition(df["cluster_10x"], half)
    assert same_partition(df["cluster_5x"], parity)
    assert not same_partition(df["cluster_5x"], half)
    assert df["cluster_all"].nunique() == 2
