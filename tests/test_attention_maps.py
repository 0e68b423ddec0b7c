import numpy as np
import pandas as pd
import pytest
from PIL import Image

from csmil import SCALES
from csmil.io import write_tsv
from csmil.mil.results import load_attention
from csmil.reporting.attention_maps import (
    PREVIEW_WIDTH,
    PatchGeometry,
    attention_canvas,
    attention_localisation,
    default_footprints,
    footprint_boxes,
    localisation_auroc,
    paint,
    render_dataset_maps,
    tile_mask_fraction,
)
from csmil.slides.patchstore import PatchStoreWriter
from csmil.toy.generator import write_toy_mask
from csmil.toy.svs import write_aperio_svs

TILE = 64  # level-0 px of a 20x tile in these synthetic slides
GRID = 8  # tiles per side: 512 x 512 px slides


def grid_coords():
    ys, xs = np.mgrid[0:GRID, 0:GRID]
    return np.stack([xs.ravel() * TILE, ys.ravel() * TILE], axis=1)  # (64, 2) x, y


def test_footprints_are_centred_fields_of_view():
    geom = PatchGeometry(np.array([[256, 512]]), 256.0, 0.5)
    np.testing.assert_allclose(footprint_boxes(geom, "20x"), [[256, 512, 512, 768]])
    np.testing.assert_allclose(footprint_boxes(geom, "10x"), [[128, 384, 640, 896]])
    np.testing.assert_allclose(footprint_boxes(geom, "5x"), [[-128, 128, 896, 1152]])
    with pytest.raises(ValueError, match="footprint must be one of"):
        footprint_boxes(geom, "40x")
    assert default_footprints("micro") == dict.fromkeys(("instance", *SCALES), "20x")
    assert default_footprints("macro")["instance"] == "5x"
    assert default_footprints(None) == {"instance": "20x", "20x": "20x", "10x": "10x", "5x": "5x"}


def test_paint_averages_overlapping_footprints():
    boxes = np.array([[0, 0, 8, 8], [4, 0, 12, 8]], dtype=float)  # level-0, overlap x in [4, 8)
    total, count = paint(np.array([1.0, 3.0]), boxes, (4, 8), downsample=2.0)
    np.testing.assert_array_equal(count[0], [1, 1, 2, 2, 1, 1, 0, 0])
    mean = attention_canvas(np.array([1.0, 3.0]), boxes, (4, 8), downsample=2.0)
    np.testing.assert_allclose(mean[0, :6], [1, 1, 2, 2, 3, 3])
    assert np.isnan(mean[:, 6:]).all()
    smooth = attention_canvas(np.array([1.0, 3.0]), boxes, (4, 8), 2.0, sigma_px=1.0)
    assert np.isnan(smooth[:, 6:]).all() and 1.0 < smooth[0, 3] < 3.0
    assert smooth[0, 0] < smooth[0, 5]  # smoothing keeps the order, never leaks NaN


def test_tile_mask_fraction_and_localisation_auroc():
    coords = grid_coords()
    geom = PatchGeometry(coords, float(TILE), 0.5)
    mask = np.zeros((128, 128), bool)  # downsample 4: 16 mask px per tile
    mask[:, :40] = True  # level-0 x < 160: tiles 0-1 fully inside, tile 2 half
    frac = tile_mask_fraction(geom, mask, 4.0)
    col = coords[:, 0] // TILE
    np.testing.assert_allclose(frac, np.select([col < 2, col == 2], [1.0, 0.5], 0.0))
    att = pd.DataFrame({"patch_index": np.arange(len(coords)), "instance": 1.0 / (1 + col)})
    res = localisation_auroc([(att, geom, mask, 4.0)])
    assert res == {"auroc": 1.0, "n_slides": 1, "n_patches": 64, "n_positive": 24}
    flipped = att.assign(instance=col.astype(float))
    assert localisation_auroc([(flipped, geom, mask, 4.0)])["auroc"] == 0.0
    empty = localisation_auroc([(att, geom, np.zeros_like(mask), 4.0)])
    assert empty["n_slides"] == 0 and np.isnan(empty["auroc"])


def test_load_attention_refuses_a_patch_in_two_folds(tmp_path):
    row = {"patient_id": "p", "slide_id": "s", "patch_index": 0, "n_bags": 1, "instance": 1.0}
    for k in range(2):
        write_tsv(pd.DataFrame([row]), tmp_path / f"a{k}.tsv")
    with pytest.raises(ValueError, match="more than one attention table"):
        load_attention([tmp_path / "a0.tsv", tmp_path / "a1.tsv"])


@pytest.fixture
def slide_files(tmp_path):
    """A 512 px slide, its 8x8 tile grid as a patch store, a mask of the left quarter."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(150, 230, size=(GRID * TILE, GRID * TILE, 3), dtype=np.uint8)
    write_aperio_svs(tmp_path / "s1.svs", rgb, mpp=0.5, downsamples=(1, 4), tile=128)
    coords = grid_coords()
    with PatchStoreWriter(
        tmp_path / "s1.h5", patch_px=4, attrs={"slide_id": "s1", "patch_size": TILE, "mpp": 0.5}
    ) as w:
        blank = np.zeros((len(coords), 4, 4, 3), np.uint8)
        w.append(coords, dict.fromkeys(SCALES, blank))
    positive = np.zeros(rgb.shape[:2], bool)
    positive[:, : 2 * TILE] = True
    write_toy_mask(tmp_path / "s1.mask.png", positive, downsample=4)
    col = coords[:, 0] // TILE
    att = pd.DataFrame(
        {
            "patient_id": "p1",
            "slide_id": "s1",
            "patch_index": np.arange(len(coords)),
            "n_bags": 3,
            "instance": np.where(col < 2, 0.1, 0.01),
            "scale_20x": np.where(col < 2, 0.6, 0.2),
            "scale_10x": 0.2,
            "scale_5x": np.where(col < 2, 0.2, 0.6),
        }
    )
    write_tsv(att, tmp_path / "attention.tsv")
    write_tsv(
        pd.DataFrame({"patient_id": ["p1"], "label": [1], "fold": [0], "prob": [0.8]}),
        tmp_path / "predictions.tsv",
    )
    slides = {
        "s1": {
            "slide": str(tmp_path / "s1.svs"),
            "patches": str(tmp_path / "s1.h5"),
            "mask": str(tmp_path / "s1.mask.png"),
        }
    }
    return tmp_path, slides


def test_dataset_maps_and_localisation_from_files(slide_files):
    root, slides = slide_files
    written = render_dataset_maps(
        [root / "attention.tsv"], slides, root / "maps", [root / "predictions.tsv"], "micro",
        max_side=128,
    )  # fmt: skip
    assert written == [str(root / "maps" / "s1.png")]
    png = (root / "maps" / "s1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the report's preview beside it: a JPEG no wider than the preview width, much smaller
    preview = root / "maps" / "s1.jpg"
    with Image.open(preview) as img:
        assert img.format == "JPEG" and img.width <= PREVIEW_WIDTH
    assert preview.stat().st_size < len(png) / 2
    loc = attention_localisation(
        [{"dataset": "d", "method": "m", "attention": [root / "attention.tsv"], "slides": slides}],
        root / "loc.csv",
    )
    # one row per attention the table holds: instance and every scale's weight that varies
    # (the fixture's 10x weight is one value everywhere)
    by = loc.set_index("attention")
    assert by.index.tolist() == ["instance", "scale_20x", "scale_5x"]
    assert by.loc["instance", "auroc"] == 1.0 and by.loc["instance", "n_positive"] == 16
    assert by["auroc"].tolist()[1:] == [1.0, 0.0]  # high, low on the mask
    back = pd.read_csv(root / "loc.csv")
    assert back.columns.tolist()[:4] == ["dataset", "method", "attention", "auroc"]
    # a model without scale attention (NaN columns) gets the instance row only
    write_tsv(load_attention([root / "attention.tsv"]).assign(scale_20x=np.nan, scale_10x=np.nan,
              scale_5x=np.nan), root / "single.tsv")  # fmt: skip
    single = attention_localisation(
        [{"dataset": "d", "method": "m", "attention": [root / "single.tsv"], "slides": slides}]
    )
    assert single["attention"].tolist() == ["instance"]


def test_render_paints_values_where_the_patches_are(slide_files):
    from csmil.reporting.attention_maps import render_slide

    root, slides = slide_files
    att = load_attention([root / "attention.tsv"])
    maps = render_slide(slides["s1"]["slide"], att, slides["s1"]["patches"], root / "x.png",
                        slides["s1"]["mask"], cohort=None, max_side=128, sigma_um=0)  # fmt: skip
    assert set(maps) == {"instance", "20x", "10x", "5x"}
    inst = maps["instance"]  # 128 px canvas: 4 level-0 px per pixel, left 32 columns positive
    assert inst.shape == (128, 128)
    np.testing.assert_allclose(inst[:, :32], 0.1)
    np.testing.assert_allclose(inst[:, 40:], 0.01)
    assert maps["20x"][64, 10] == pytest.approx(0.6)
    # the 5x field spans 4 tiles, so the 5x map mixes both sides near the boundary
    assert 0.2 < maps["5x"][64, 40] < 0.6
