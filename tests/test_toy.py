"""Toy cohorts: the files are real Aperio slides, and the anomalies live at the scales they should.

The scale checks mimic tiling: co-centred fields of 256, 512 and 1024 level-0 px around one
centre, each area-averaged to 64 px (20x, 10x and 5x patches). Each positive slide is compared
with its negative twin (same seed, so the same tissue and object positions, without the
anomaly), which isolates what the anomaly itself adds to a patch.
"""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from sklearn.metrics import roc_auc_score

from csmil.toy.generator import (
    make_toy_slide,
    read_toy_mask,
    render_toy_canvas,
    toy_sample_sheet,
    write_toy_mask,
)
from csmil.toy.patterns import GLASS, RingStyle, ring_layers

PATCH_PX = 64
FIELDS = {"20x": 256, "10x": 512, "5x": 1024}
SIZE = 2048
N_TWINS = 8


def area_patch(region: np.ndarray) -> np.ndarray:
    """Box-average an (S, S, 3) field to a (64, 64, 3) float patch."""
    k = region.shape[0] // PATCH_PX
    return region[..., :3].astype(np.float64).reshape(PATCH_PX, k, PATCH_PX, k, 3).mean((1, 3))


def read_field(slide: openslide.OpenSlide, cy: int, cx: int, side: int) -> np.ndarray:
    """The ``side`` px level-0 field centred on (cy, cx), as a 64 px patch."""
    region = slide.read_region((cx - side // 2, cy - side // 2), 0, (side, side))
    return area_patch(np.asarray(region))


def pixel_stats(patch: np.ndarray) -> dict[str, float]:
    """Simple statistics of a (64, 64, 3) patch that a cross could move."""
    grey = patch.mean(axis=2)
    lap = grey[1:-1, 1:-1] - 0.25 * (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
    )
    return {
        "green_fraction": float((patch[..., 1] > patch[..., [0, 2]].max(axis=2)).mean()),
        "white_fraction": float((patch.min(axis=2) >= 200).mean()),
        "brightest": float(np.percentile(patch.min(axis=2), 99.5)),
        "grey_max": float(grey.max()),
        "mean_r": float(patch[..., 0].mean()),
        "mean_g": float(patch[..., 1].mean()),
        "mean_b": float(patch[..., 2].mean()),
        "grey_std": float(grey.std()),
        "hf_energy": float((lap**2).mean()),
    }


def auc(neg: list[float], pos: list[float]) -> float:
    return float(roc_auc_score([0] * len(neg) + [1] * len(pos), list(neg) + list(pos)))


def dark_aspect(patch: np.ndarray, threshold: float) -> float:
    """Axis ratio (>= 1) of the second moments of dark pixels, weighted by darkness."""
    w = np.clip(threshold - patch.mean(axis=2), 0.0, None)
    if w.sum() <= 0:
        return 1.0
    yy, xx = np.mgrid[0 : w.shape[0], 0 : w.shape[1]].astype(np.float64)
    my, mx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
    cov = np.cov(np.stack([yy.ravel() - my, xx.ravel() - mx]), aweights=w.ravel(), bias=True)
    low, high = np.linalg.eigvalsh(cov)
    return float(np.sqrt(high / max(low, 1e-9)))


@pytest.fixture(scope="module")
def micro_twins(tmp_path_factory):
    """N_TWINS seeds, each written as a negative and a positive micro slide."""
    out = tmp_path_factory.mktemp("micro")
    twins = []
    for seed in range(N_TWINS):
        pair = {}
        for label in (0, 1):
            svs, mask = out / f"s{seed}_l{label}.svs", out / f"s{seed}_l{label}_mask.png"
            info = make_toy_slide(svs, mask, "micro", label, seed=100 + seed, size_px=SIZE)
            pair[label] = (svs, mask, info)
        twins.append(pair)
    return twins


def test_slide_is_aperio_with_physical_scale(micro_twins):
    svs, _, _ = micro_twins[0][1]
    assert openslide.OpenSlide.detect_format(str(svs)) == "aperio"
    with openslide.OpenSlide(str(svs)) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        assert float(slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER]) == 20.0
        assert slide.level_count == 3
        assert slide.dimensions == (SIZE, SIZE)
        np.testing.assert_allclose(slide.level_downsamples, (1.0, 4.0, 16.0), rtol=1e-3)
        level0 = np.asarray(slide.read_region((0, 0), 0, (SIZE, SIZE)))[..., :3]
    canvas = render_toy_canvas("micro", 1, seed=100, size_px=SIZE).rgb
    # JPEG at quality 90: the stored pixels are the rendered canvas up to compression noise.
    assert np.abs(level0.astype(int) - canvas).mean() < 3.0


def test_masks_mark_positive_regions_only(micro_twins, tmp_path):
    for pair in micro_twins:
        for label in (0, 1):
            svs, mask_path, info = pair[label]
            mask, ds = read_toy_mask(mask_path)
            assert ds == 4 and mask.shape == (SIZE // 4, SIZE // 4) and mask.dtype == bool
            assert mask.any() == bool(label)
            assert mask.mean() == pytest.approx(info["positive_fraction"], abs=0.01)
            assert (info["n_crosses"] > 0) == bool(label)
    # macro: the mask is the oblong frames, present only on positive slides
    for label in (0, 1):
        canvas = render_toy_canvas("macro", label, seed=5, size_px=SIZE)
        write_toy_mask(tmp_path / f"m{label}.png", canvas.positive, downsample=8)
        mask, ds = read_toy_mask(tmp_path / f"m{label}.png")
        assert ds == 8 and mask.shape == (SIZE // 8, SIZE // 8)
        assert mask.any() == bool(label) == (canvas.info["n_oblongs"] > 0)
        assert canvas.info["n_squares"] + canvas.info["n_oblongs"] >= 1


def test_mask_on_tissue_and_glass_around(micro_twins):
    svs, mask_path, info = micro_twins[1][1]
    rgb = render_toy_canvas("micro", 1, seed=101, size_px=SIZE).rgb.astype(float)
    glass = np.abs(rgb - GLASS).max(axis=2) < 12
    assert 0.55 <= info["tissue_fraction"] <= 0.85
    assert glass[[0, -1]].mean() > 0.9 and glass[:, [0, -1]].mean() > 0.9  # glass all round
    mask, ds = read_toy_mask(mask_path)
    positive = np.kron(mask, np.ones((ds, ds), bool))
    assert glass[positive].mean() < 0.01
    tissue = rgb[~glass]
    assert np.all(tissue.mean(axis=0)[[0, 2]] > tissue.mean(axis=0)[1])  # pink: R, B above G
    nuclei = (tissue[:, 0] < 150) & (tissue[:, 2] > tissue[:, 0])  # dark purple
    assert 0.02 < nuclei.mean() < 0.3


def test_render_is_deterministic():
    for cohort in ("micro", "macro"):
        a = render_toy_canvas(cohort, 1, seed=3, size_px=1536)
        b = render_toy_canvas(cohort, 1, seed=3, size_px=1536)
        c = render_toy_canvas(cohort, 1, seed=4, size_px=1536)
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.positive, b.positive)
        assert a.info == b.info
        assert not np.array_equal(a.rgb, c.rgb)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="cohort"):
        render_toy_canvas("nano", 1, 0, 2048)
    with pytest.raises(ValueError, match="size_px"):
        render_toy_canvas("micro", 1, 0, 1000)
    with pytest.raises(ValueError, match="label"):
        render_toy_canvas("micro", 2, 0, 2048)


def micro_scale_aucs(fields_of) -> tuple[dict[str, dict[str, float]], int]:
    """AUC of every :func:`pixel_stats` statistic, positive vs negative micro fields, per scale.

    ``fields_of`` yields ``(label, read, regions)``: ``read(cy, cx, side)`` returns the 64 px
    patch of a field. One tile centre per region, on a 64 px grid as a 20x tile grid gives.
    """
    stats: dict[str, dict[int, list[dict[str, float]]]] = {s: {0: [], 1: []} for s in FIELDS}
    for label, read, regions in fields_of:
        for region in regions:
            cy, cx = (int(region[k]) // 64 * 64 + 32 for k in ("cy", "cx"))
            for scale, side in FIELDS.items():
                stats[scale][label].append(pixel_stats(read(cy, cx, side)))
    aucs = {
        scale: {
            key: auc([s[key] for s in stats[scale][0]], [s[key] for s in stats[scale][1]])
            for key in stats[scale][0][0]
        }
        for scale in FIELDS
    }
    return aucs, min(len(stats["20x"][0]), len(stats["20x"][1]))


def band_offset(patch: np.ndarray, threshold: float) -> float:
    """Distance of the darkness-weighted centroid of dark pixels from the patch centre, as a
    fraction of the patch side (where in the field the band runs)."""
    w = np.clip(threshold - patch.mean(axis=2), 0.0, None)
    if w.sum() <= 0:
        return 0.0
    yy, xx = np.mgrid[0 : w.shape[0], 0 : w.shape[1]].astype(np.float64) + 0.5
    my, mx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
    return float(np.hypot(my - w.shape[0] / 2, mx - w.shape[1] / 2) / w.shape[0])


def macro_scale_aucs(canvases) -> tuple[dict[str, float], dict[str, int]]:
    """Oblong vs square AUCs: dark-band aspect ratio of the 5x field centred on each frame, and
    aspect ratio, dark fraction and band offset of every 20x tile (256 px grid) crossed by a
    frame's band."""
    keys = ("5x_aspect", "20x_aspect", "20x_dark", "20x_offset")
    values: dict[str, dict[str, list[float]]] = {k: {"square": [], "oblong": []} for k in keys}
    thickness = RingStyle().thickness
    for canvas in canvases:
        size = canvas.rgb.shape[0]
        for ring in canvas.info["rings"]:
            shape = ring["shape"]
            assert shape == ("oblong" if canvas.info["label"] == 1 else "square")
            cy, cx = int(ring["cy"]), int(ring["cx"])
            field = area_patch(canvas.rgb[cy - 512 : cy + 512, cx - 512 : cx + 512])
            values["5x_aspect"][shape].append(dark_aspect(field, 120.0))
            geometry = (ring["cy"], ring["cx"], ring["a"], ring["b"], ring["theta"], thickness)
            band, _, (sy, sx) = ring_layers(canvas.rgb.shape[:2], *geometry)
            on_band = np.zeros(canvas.rgb.shape[:2], bool)
            on_band[sy, sx] = band > 0.5
            tiles = on_band.reshape(size // 256, 256, size // 256, 256).sum(axis=(1, 3))
            for ty, tx in np.argwhere(tiles > 256 * 10):
                patch = area_patch(canvas.rgb[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256])
                values["20x_aspect"][shape].append(dark_aspect(patch, 90.0))
                values["20x_dark"][shape].append(float((patch.mean(axis=2) < 100).mean()))
                values["20x_offset"][shape].append(band_offset(patch, 90.0))
    aucs = {k: auc(v["square"], v["oblong"]) for k, v in values.items()}
    counts = {f"{k}_{shape}": len(v[shape]) for k, v in values.items() for shape in v}
    return aucs, counts


def test_micro_crosses_visible_at_20x_only(micro_twins):
    def fields_of():
        for pair in micro_twins:
            regions = pair[1][2]["regions"]
            assert regions == pair[0][2]["regions"]  # twins share their regions
            for label in (0, 1):
                with openslide.OpenSlide(str(pair[label][0])) as slide:
                    yield label, lambda cy, cx, side, s=slide: read_field(s, cy, cx, side), regions

    aucs, n = micro_scale_aucs(fields_of())
    assert n >= 12
    assert aucs["20x"]["green_fraction"] >= 0.9, aucs["20x"]
    for scale in ("10x", "5x"):
        for key, value in aucs[scale].items():
            assert abs(value - 0.5) <= 0.15, (scale, key, aucs[scale])


def test_macro_shape_visible_at_5x_only():
    canvases = (
        render_toy_canvas("macro", label, seed=200 + seed, size_px=SIZE)
        for seed in range(N_TWINS)
        for label in (0, 1)
    )
    aucs, counts = macro_scale_aucs(canvases)
    assert counts["5x_aspect_oblong"] >= 5 and counts["5x_aspect_square"] >= 5
    assert aucs["5x_aspect"] >= 0.9, aucs
    for key in ("20x_aspect", "20x_dark", "20x_offset"):
        assert abs(aucs[key] - 0.5) <= 0.1, aucs


def test_sample_sheet_balanced_and_deterministic(tmp_path):
    sheet = toy_sample_sheet(
        "micro",
        "micro",
        n_patients=9,
        seed=1,
        slides_dir=str(tmp_path),
        slides_per_patient=2,
        pretrain_fraction=0.5,
    )
    assert list(sheet.columns) == [
        "slide_id",
        "patient_id",
        "path",
        "label",
        "cohort",
        "seed",
        "mask_path",
        "pretrain",
    ]
    assert len(sheet) == 18 and sheet["slide_id"].is_unique and sheet["seed"].is_unique
    assert sheet["slide_id"].iloc[3] == "micro_p001_s1"
    assert not sheet["slide_id"].str.contains(r"\s").any()
    patients = sheet.groupby("patient_id").agg(
        label=("label", "first"), n_labels=("label", "nunique"), pretrain=("pretrain", "first")
    )
    assert (patients["n_labels"] == 1).all()
    assert patients["label"].sum() in (4, 5)  # round(9 * 0.5)
    pre = patients.groupby("label")["pretrain"].sum()
    assert pre[0] >= 1 and pre[1] >= 1 and patients["pretrain"].sum() in (4, 5)
    assert sheet.equals(
        toy_sample_sheet("micro", "micro", 9, 1, str(tmp_path), slides_per_patient=2)
    )
    other = toy_sample_sheet("micro", "micro", 9, 2, str(tmp_path), slides_per_patient=2)
    assert not sheet["seed"].equals(other["seed"])
    with pytest.raises(ValueError, match="dataset"):
        toy_sample_sheet("my data", "micro", 4, 0, str(tmp_path))
