"""Embedding a patch store into a feature store with per-scale SimSiam encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csmil import SCALES
from csmil.encoders.embedding import embed_slide
from csmil.encoders.featurestore import read_features
from csmil.encoders.resnet import normalize
from csmil.encoders.simsiam import load_encoder
from csmil.encoders.training import SimSiamSettings, train_simsiam
from csmil.slides.patchstore import PatchStoreWriter, open_patch_store

PX = 32


def make_store(path, n, px=PX, seed=0):
    """A patch store of ``n`` random-noise patches per scale with distinct coordinates."""
    rng = np.random.default_rng(seed)
    patches = {s: rng.integers(0, 256, size=(n, px, px, 3), dtype=np.uint8) for s in SCALES}
    coords = np.stack([np.arange(n) * 256 + 7, np.arange(n) * 512 + 3], 1)
    with PatchStoreWriter(path, patch_px=px, attrs={"slide_id": "S1"}) as w:
        w.append(coords, patches)
    return path


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    train_store = make_store(d / "train.h5", 16, seed=9)
    paths = {}
    for i, s in enumerate(SCALES):
        paths[s] = d / f"{s}.pt"
        settings = SimSiamSettings(
            epochs=1, batch_size=8, warmup_epochs=0, schedule_epochs=None, seed=i
        )
        train_simsiam([train_store], s, paths[s], settings, num_threads=1)
    return paths


def test_embed_slide_shapes_coords_and_values(encoders, tmp_path):
    store = make_store(tmp_path / "s.h5", 21, seed=1)
    out = tmp_path / "s.features.h5"
    summary = embed_slide(store, encoders, out, batch_size=8, device="cpu")
    feats = read_features(out)
    assert feats.slide_id == "S1" and summary["n_patches"] == 21
    with open_patch_store(store) as st:
        assert np.array_equal(feats.coords, st.coords)
        p10 = st.read("10x", np.array([4, 17]))
    for s in SCALES:
        assert feats.features[s].shape == (21, 512)
        assert np.isfinite(feats.features[s]).all()
    assert feats.attrs["encoders"] == summary["encoders"]
    assert len(set(summary["encoders"].values())) == 3  # one distinct encoder per scale
    # rows follow the store order and match a direct forward pass through the 10x encoder
    net, meta = load_encoder(encoders["10x"])
    with torch.inference_mode():
        direct = net(normalize(torch.from_numpy(p10).permute(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(feats.features["10x"][[4, 17]], direct, rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats.features["10x"], feats.features["20x"])


def test_empty_store_gives_empty_feature_store(encoders, tmp_path):
    store = make_store(tmp_path / "empty.h5", 0)
    summary = embed_slide(store, encoders, tmp_path / "empty.features.h5", slide_id="E")
    feats = read_features(tmp_path / "empty.features.h5")
    assert summary["n_patches"] == 0 and feats.slide_id == "E"
    assert feats.coords.shape == (0, 2)
    assert all(feats.features[s].shape == (0, 512) for s in SCALES)


def test_patch_px_mismatch_and_missing_scale_are_errors(encoders, tmp_path):
    store = make_store(tmp_path / "big.h5", 3, px=48)
    with pytest.raises(ValueError, match="trained on 32 px patches but .* has 48 px"):
        embed_slide(store, encoders, tmp_path / "x.h5")
    ok = make_store(tmp_path / "ok.h5", 3)
    with pytest.raises(KeyError, match="no encoder given for scale"):
        embed_slide(ok, {"20x": encoders["20x"]}, tmp_path / "y.h5")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()
