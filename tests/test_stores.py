import numpy as np
import openslide
import pytest

from csmil.encoders.featurestore import read_features, write_features
from csmil.io import atomic_path
from csmil.slides.patchstore import PatchStoreWriter, open_patch_store
from csmil.toy.svs import downsample_rgb, write_aperio_svs

SCALES = ("20x", "10x", "5x")


def random_patches(rng, n, p=8):
    return {s: rng.integers(0, 255, (n, p, p, 3), dtype=np.uint8) for s in SCALES}


def test_patch_store_roundtrip_streamed(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.h5"
    a, b = random_patches(rng, 3), random_patches(rng, 4)
    with PatchStoreWriter(path, patch_px=8, attrs={"slide_id": "s", "patch_size": 256}) as w:
        w.append(np.arange(6).reshape(3, 2), a)
        w.append(np.arange(8).reshape(4, 2) + 100, b)
    with open_patch_store(path) as ps:
        assert ps.n == 7 and ps.patch_px == 8 and ps.scales == SCALES
        assert ps.attrs["slide_id"] == "s"
        assert ps.coords.dtype == np.int64 and ps.coords[3].tolist() == [100, 101]
        np.testing.assert_array_equal(ps.read("10x")[:3], a["10x"])
        np.testing.assert_array_equal(
            ps.read("5x", np.array([4, 0, 4])), np.stack([b["5x"][1], a["5x"][0], b["5x"][1]])
        )
        batches = list(ps.iter_batches("20x", 5))
        assert [len(x) for x in batches] == [5, 2]


def test_empty_patch_store_is_valid(tmp_path):
    path = tmp_path / "empty.h5"
    with PatchStoreWriter(path, patch_px=8):
        pass
    with open_patch_store(path) as ps:
        assert ps.n == 0 and ps.read("20x").shape == (0, 8, 8, 3)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), PatchStoreWriter(path, patch_px=8):
        raise RuntimeError("boom")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_patch_store_rejects_wrong_shapes(tmp_path):
    with (
        PatchStoreWriter(tmp_path / "s.h5", patch_px=8) as w,
        pytest.raises(ValueError, match="uint8"),
    ):
        w.append(np.zeros((1, 2)), random_patches(np.random.default_rng(0), 1, p=4))


def test_open_rejects_foreign_file(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5["a"] = 1
    with pytest.raises(ValueError, match="not a csmil patch store"):
        open_patch_store(tmp_path / "x.h5")
    with pytest.raises(FileNotFoundError, match="tile step"):
        open_patch_store(tmp_path / "missing.h5")


def test_feature_store_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    feats = {s: rng.standard_normal((5, 16)).astype(np.float32) for s in SCALES}
    coords = rng.integers(0, 1000, (5, 2))
    write_features(tmp_path / "f.h5", "slide1", feats, coords, {s: "abc" for s in SCALES})
    sf = read_features(tmp_path / "f.h5")
    assert sf.slide_id == "slide1" and sf.n == 5 and sf.dim == 16
    np.testing.assert_array_equal(sf.features["10x"], feats["10x"])
    np.testing.assert_array_equal(sf.coords, coords)
    assert sf.attrs["encoders"] == {s: "abc" for s in SCALES}
    only = read_features(tmp_path / "f.h5", scales=("20x",))
    assert list(only.features) == ["20x"]
    with pytest.raises(ValueError, match=r"\(5, D\)"):
        write_features(tmp_path / "g.h5", "s", {"20x": feats["20x"][:4]}, coords, {})


def test_atomic_path_only_publishes_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("ok")
        assert not target.exists()
    assert target.read_text() == "ok"
    with pytest.raises(KeyError), atomic_path(tmp_path / "bad.txt") as tmp:
        tmp.write_text("partial")
        raise KeyError
    assert not (tmp_path / "bad.txt").exists()


def test_svs_opens_as_aperio_with_physical_metadata(tmp_path):
    rgb = np.full((1100, 900, 3), 230, np.uint8)
    rgb[100:300, 200:400] = (150, 40, 120)
    write_aperio_svs(tmp_path / "a.svs", rgb, mpp=0.5, app_mag=20)
    assert openslide.OpenSlide.detect_format(str(tmp_path / "a.svs")) == "aperio"
    with openslide.OpenSlide(str(tmp_path / "a.svs")) as s:
        assert s.dimensions == (900, 1100)
        assert [round(d) for d in s.level_downsamples] == [1, 4, 16]
        assert float(s.properties["openslide.mpp-x"]) == 0.5
        assert s.properties["openslide.objective-power"] == "20"
        px = np.asarray(s.read_region((250, 150), 0, (1, 1)).convert("RGB"))[0, 0]
        assert np.abs(px.astype(int) - (150, 40, 120)).max() < 12  # JPEG tolerance


def test_downsample_is_block_mean():
    x = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    y = downsample_rgb(x, 2)
    assert y.shape == (2, 2, 3)
    assert y[0, 0, 0] == round(x[:2, :2, 0].mean())
