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
    attrs = {"slide_id": "s", "patch_size": 256}
    with PatchStoreWriter(path, patch_px=8, attrs=attrs, codec="png") as w:  # lossless
        w.append(np.arange(6).reshape(3, 2), a)
        w.append(np.arange(8).reshape(4, 2) + 100, b)
    with open_patch_store(path) as ps:
        assert ps.n == 7 and ps.patch_px == 8 and ps.scales == SCALES and ps.codec == "png"
        assert ps.attrs["format_version"] == 2 and len(ps.offsets("20x")) == 8
        assert ps.attrs["slide_id"] == "s"
        assert ps.coords.dtype == np.int64 and ps.coords[3].tolist() == [100, 101]
        np.testing.assert_array_equal(ps.read("10x")[:3], a["10x"])
        np.testing.assert_array_equal(
            ps.read("5x", np.array([4, 0, 4])), np.stack([b["5x"][1], a["5x"][0], b["5x"][1]])
        )
        batches = list(ps.iter_batches("20x", 5))
        assert [len(x) for x in batches] == [5, 2]
        np.testing.assert_array_equal(np.concatenate(batches)[3:], b["20x"])
        enc = ps.read_encoded("10x", np.array([6, 1, 6]))
        assert [bytes(e) for e in enc[::2]] == [bytes(enc[0])] * 2


def smooth_patches(rng, n, p):
    """Patches of smooth colour gradients with a thin green cross, as tissue-like content."""
    yy, xx = np.mgrid[:p, :p] / p
    base = rng.uniform(60, 200, (n, 1, 1, 3)) + 40 * np.stack([xx, yy, xx * yy], -1)[None]
    img = base.copy()
    img[:, p // 2, :, :] = (90, 200, 90)  # one-pixel green lines
    img[:, :, p // 2, :] = (90, 200, 90)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("px", [32, 256])
def test_jpeg_codec_round_trip_keeps_thin_coloured_lines(tmp_path, px):
    rng = np.random.default_rng(1)
    pats = {s: smooth_patches(rng, 5, px) for s in SCALES}
    path = tmp_path / "j.h5"
    with PatchStoreWriter(path, patch_px=px, quality=90) as w:
        w.append(np.zeros((5, 2)), pats)
    with open_patch_store(path) as ps:
        assert ps.codec == "jpeg" and ps.attrs["jpeg_quality"] == 90
        got = ps.read("20x").astype(int)
        raw_bytes = 5 * px * px * 3
        assert ps.encoded_nbytes("20x") < raw_bytes / (2 if px < 64 else 8)  # compressed
    ref = pats["20x"].astype(int)
    assert np.abs(got - ref).mean() < 2.0
    line = got[:, px // 2, :, :]  # (n, P, 3): the cross keeps its green
    assert (line[..., 1] - line[..., [0, 2]].max(-1)).mean() > 0.8 * 110
    with pytest.raises(ValueError, match="patch codec must be one of"):
        PatchStoreWriter(tmp_path / "x.h5", patch_px=8, codec="webp")
    with pytest.raises(ValueError, match="quality"):
        PatchStoreWriter(tmp_path / "x.h5", patch_px=8, quality=0)


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_patches_decode_into_the_batch_array_and_a_wrong_size_is_named(codec):
    from io import BytesIO

    from PIL import Image

    from csmil.slides.codec import decode_into, encode_patch

    rng = np.random.default_rng(2)
    patch = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    blob = np.frombuffer(encode_patch(patch, codec, 90), np.uint8)
    batch = np.zeros((3, 24, 24, 3), np.uint8)
    decode_into(blob, codec, batch[1])
    np.testing.assert_array_equal(batch[1], np.asarray(Image.open(BytesIO(blob.tobytes()))))
    assert not batch[0].any() and not batch[2].any()
    with pytest.raises(ValueError, match=r"decoded patch has shape \(24, 24, 3\), the store says"):
        decode_into(blob, codec, np.zeros((16, 16, 3), np.uint8))


def test_format_1_store_is_refused_with_retile_message(tmp_path):
    import h5py

    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as h5:  # the layout of format 1: raw pixels, gzip
        h5.create_dataset("coords", data=np.zeros((2, 2), np.int64))
        h5.create_dataset("patches/20x", data=np.zeros((2, 8, 8, 3), np.uint8), compression="gzip")
        h5.attrs["format"], h5.attrs["format_version"] = "csmil-patches", 1
    with pytest.raises(ValueError, match="format-1 patch store") as err:
        open_patch_store(path)
    assert str(path) in str(err.value) and "re-run the tile step" in str(err.value)


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
