"""Co-centred 20x / 10x / 5x patches (csmil.slides.tiling) on synthetic Aperio slides."""

import logging

import numpy as np
import pytest
import tifffile

from csmil import SCALES
from csmil.slides.patchstore import open_patch_store
from csmil.slides.tiling import tile_slide, tile_tissue_fraction
from csmil.toy.svs import write_aperio_svs

PINK = (220, 150, 200)
BLUE = (30, 30, 200)
BACKGROUND = (242, 242, 242)
DOT = (1152, 1152)  # level-0 centre of grid tile (row 4, col 4) at 0.5 µm/px
DOT_RADIUS = 40  # level-0 px at 0.5 µm/px


def _image_20x() -> np.ndarray:
    """2048 px (1024 µm) square at 0.5 µm/px: tissue in [512, 1792)^2, a blue dot, glass."""
    rgb = np.empty((2048, 2048, 3), np.uint8)
    rgb[:] = BACKGROUND
    rgb[512:1792, 512:1792] = PINK
    yy, xx = np.mgrid[:2048, :2048]
    rgb[(xx - DOT[0]) ** 2 + (yy - DOT[1]) ** 2 <= DOT_RADIUS**2] = BLUE
    return rgb


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    rgb = _image_20x()
    write_aperio_svs(d / "s20.svs", rgb, mpp=0.5, app_mag=20)
    # the same tissue scanned at 40x: twice the pixels, 0.25 µm/px
    write_aperio_svs(d / "s40.svs", rgb.repeat(2, 0).repeat(2, 1), mpp=0.25, app_mag=40)
    corner = np.full((1024, 1024, 3), BACKGROUND, np.uint8)
    corner[:512, :512] = PINK  # tissue reaching the slide's top-left corner
    write_aperio_svs(d / "corner.svs", corner, mpp=0.5, app_mag=20)
    write_aperio_svs(d / "glass.svs", np.full((1024, 1024, 3), BACKGROUND, np.uint8), mpp=0.5)
    return d


@pytest.fixture(scope="module")
def store20(slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "s20.h5"
    summary = tile_slide(slides / "s20.svs", out, patch_px=64)
    return out, summary


def _read_all(path):
    with open_patch_store(path) as st:
        return st.coords, {s: st.read(s) for s in st.scales}, st.attrs


def _blue_weight(patch):
    """Per pixel, how much of it is the blue dot (0 pink .. 1 blue), from B - R."""
    p = patch.astype(float)
    pink, blue = PINK[2] - PINK[0], BLUE[2] - BLUE[0]
    return np.clip((p[..., 2] - p[..., 0] - pink) / (blue - pink), 0, 1)


def test_levels_chosen_from_physical_scale(store20, slides, tmp_path):
    _, summary = store20
    # 20x slide, 1/4/16 pyramid, 64 px patches: 256/512/1024 px fields need 4/8/16 x
    got = {s: (v["level"], v["level_downsample"]) for s, v in summary["scales"].items()}
    assert got == {"20x": (1, 4.0), "10x": (1, 4.0), "5x": (2, 16.0)}
    assert [summary["scales"][s]["out_mpp"] for s in SCALES] == [2.0, 4.0, 8.0]
    # 40x slide: fields of 512/1024/2048 level-0 px need 8/16/32 x; the same physical outputs
    s40 = tile_slide(slides / "s40.svs", tmp_path / "s40.h5", patch_px=64)
    got40 = {s: (v["level"], v["level_downsample"]) for s, v in s40["scales"].items()}
    assert got40 == {"20x": (1, 4.0), "10x": (2, 16.0), "5x": (2, 16.0)}
    assert [s40["scales"][s]["field_level0_px"] for s in SCALES] == [512, 1024, 2048]
    assert [s40["scales"][s]["out_mpp"] for s in SCALES] == [2.0, 4.0, 8.0]
    # larger patches read finer levels
    s256 = tile_slide(slides / "s20.svs", tmp_path / "p256.h5", patch_px=256, max_tiles=2)
    assert {s: v["level"] for s, v in s256["scales"].items()} == {"20x": 0, "10x": 0, "5x": 1}


def test_tissue_tiles_kept_and_glass_dropped(store20):
    path, summary = store20
    coords, patches, attrs = _read_all(path)
    expected = {(x, y) for x in range(512, 1792, 256) for y in range(512, 1792, 256)}
    assert {tuple(c) for c in coords} == expected
    assert summary["n_tiles"] == 25 and summary["n_grid"] == 64
    assert attrs["patch_size"] == 256 and attrs["mpp"] == 0.5 and attrs["slide_id"] == "s20"
    assert attrs["mpp_source"] == "slide_metadata" and attrs["level_downsamples"][:2] == [1, 4]
    assert attrs["scales"]["5x"]["read_mpp"] == pytest.approx(0.5 * 16, rel=0.01)
    assert not any(attrs["scales"][s]["upsampled"] for s in SCALES)
    assert attrs["tissue_fraction"] == pytest.approx(1280**2 / 2048**2, abs=0.02)
    assert attrs["tissue"]["threshold"] == "otsu" and attrs["tissue_threshold"] == 0.25
    # a 20x patch of a tile away from the dot is pink all over
    i = next(k for k, c in enumerate(coords) if tuple(c) == (512, 512))
    np.testing.assert_allclose(patches["20x"][i].reshape(-1, 3).mean(0), PINK, atol=3)
    # its 5x field (512 µm around centre 640) is 1/4 glass: rows/cols before level-0 512
    p5 = patches["5x"][i].astype(float)
    np.testing.assert_allclose(p5[:20, :20].reshape(-1, 3).mean(0), BACKGROUND, atol=3)
    np.testing.assert_allclose(p5[40:, 40:].reshape(-1, 3).mean(0), PINK, atol=3)


def _dot_centroid_and_area(patch, around, half=14):
    """Centroid (x, y) and area (px) of the blue dot in a pink window around ``around``."""
    x0, y0 = int(around[0]) - half, int(around[1]) - half
    w = _blue_weight(patch[y0 : y0 + 2 * half, x0 : x0 + 2 * half])
    yy, xx = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
    return (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum(), w.sum()


def test_marker_is_centred_at_every_scale(store20):
    coords, patches, _ = _read_all(store20[0])
    i = next(k for k, c in enumerate(coords) if tuple(c) == (1024, 1024))
    areas = []
    for scale in SCALES:
        cx, cy, area = _dot_centroid_and_area(patches[scale][i], (32, 32))
        assert cx == pytest.approx(31.5, abs=0.3) and cy == pytest.approx(31.5, abs=0.3), scale
        areas.append(area)
    # radius 40 level-0 px at 4, 8, 16 level-0 px per patch px: 10, 5, 2.5 px
    np.testing.assert_allclose(areas, np.pi * np.array([10.0, 5.0, 2.5]) ** 2, rtol=0.12)
    # the tile to the left has the dot 256 level-0 px (16 px at 5x) right of its centre: in
    # its 5x field, not in its 20x field
    j = next(k for k, c in enumerate(coords) if tuple(c) == (768, 1024))
    assert _blue_weight(patches["20x"][j]).sum() < 1
    cx, cy, _ = _dot_centroid_and_area(patches["5x"][j], (48, 32))
    assert cx == pytest.approx(31.5 + 16, abs=0.3) and cy == pytest.approx(31.5, abs=0.3)


def test_40x_scan_doubles_coords_and_gives_same_patches(store20, slides, tmp_path):
    c20, p20, _ = _read_all(store20[0])
    tile_slide(slides / "s40.svs", tmp_path / "s40.h5", patch_px=64)
    c40, p40, attrs = _read_all(tmp_path / "s40.h5")
    assert attrs["patch_size"] == 512 and attrs["mpp"] == 0.25
    np.testing.assert_array_equal(c40, 2 * c20)
    for s in SCALES:
        diff = np.abs(p40[s].astype(int) - p20[s].astype(int))
        assert diff.mean() < 2.0, s


def test_fields_past_the_slide_edge_are_white(slides, tmp_path):
    tile_slide(slides / "corner.svs", tmp_path / "corner.h5", patch_px=64)
    coords, patches, _ = _read_all(tmp_path / "corner.h5")
    i = next(k for k, c in enumerate(coords) if tuple(c) == (0, 0))
    p5 = patches["5x"][i]  # 1024 px field around (128, 128): 384 px of it lies outside
    assert (p5[:20, :] >= 250).all() and (p5[:, :20] >= 250).all()
    np.testing.assert_allclose(p5[30:50, 30:50].reshape(-1, 3).mean(0), PINK, atol=3)


def test_glass_slide_gives_valid_empty_store(slides, tmp_path, caplog):
    out = tmp_path / "glass.h5"
    with caplog.at_level(logging.WARNING, logger="csmil.slides.tiling"):
        summary = tile_slide(slides / "glass.svs", out, patch_px=32)
    assert summary["n_tiles"] == 0 and "no tissue" in caplog.text
    with open_patch_store(out) as st:
        assert st.n == 0 and st.read("5x").shape == (0, 32, 32, 3)
        assert st.attrs["tissue_fraction"] == 0.0 and st.attrs["slide_id"] == "glass"


def test_deterministic_and_seeded_subsample(store20, slides, tmp_path):
    c_all, p_all, _ = _read_all(store20[0])
    tile_slide(slides / "s20.svs", tmp_path / "again.h5", patch_px=64)
    c2, p2, _ = _read_all(tmp_path / "again.h5")
    np.testing.assert_array_equal(c2, c_all)
    for s in SCALES:
        np.testing.assert_array_equal(p2[s], p_all[s])
    picks = []
    for seed in (1, 1, 2):
        out = tmp_path / f"sub{len(picks)}.h5"
        summary = tile_slide(slides / "s20.svs", out, patch_px=64, max_tiles=7, seed=seed)
        assert summary["n_tiles"] == 7 and summary["n_tissue_tiles"] == 25
        picks.append({tuple(c) for c in _read_all(out)[0]})
    assert picks[0] == picks[1] != picks[2]
    assert picks[2] <= {tuple(c) for c in c_all}


def test_small_read_blocks_give_the_same_patches(store20, slides, tmp_path):
    c_all, p_all, _ = _read_all(store20[0])
    # a budget below one 5x field forces one tile per block
    tile_slide(slides / "s20.svs", tmp_path / "small.h5", patch_px=64, max_read_px=1000)
    c, p, _ = _read_all(tmp_path / "small.h5")
    order = np.lexsort((c[:, 0], c[:, 1]))
    ref = np.lexsort((c_all[:, 0], c_all[:, 1]))
    np.testing.assert_array_equal(c[order], c_all[ref])
    for s in SCALES:
        np.testing.assert_array_equal(p[s][order], p_all[s][ref])


def test_tile_tissue_fraction_values():
    mask = np.zeros((8, 8), bool)
    mask[:4, :2] = True  # mask px = 64 level-0 px; tile = 256 px = 4 mask px
    frac = tile_tissue_fraction(mask, 64.0, 256, 2, 2)
    np.testing.assert_allclose(frac, [[0.5, 0.0], [0.0, 0.0]])


def test_clear_errors(slides, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.svs"):
        tile_slide(tmp_path / "missing.svs", tmp_path / "x.h5")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(
        plain, np.full((600, 600, 3), 200, np.uint8), tile=(256, 256), photometric="rgb"
    )
    with pytest.raises(ValueError, match="mpp column"):
        tile_slide(plain, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    summary = tile_slide(
        plain, tmp_path / "x.h5", patch_px=16, mpp_override=0.5, tissue_threshold=0.0
    )
    assert summary["n_tiles"] == 4 and summary["scales"]["5x"]["level"] == 0
    with pytest.raises(ValueError, match="tissue_threshold"):
        tile_slide(slides / "s20.svs", tmp_path / "y.h5", tissue_threshold=1.5)
    with pytest.raises(ValueError, match="patch_px"):
        tile_slide(slides / "s20.svs", tmp_path / "y.h5", patch_px=0)
