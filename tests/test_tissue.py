"""Tissue mask (csmil.slides.tissue)."""

import numpy as np
import pytest

from csmil.slides.tissue import TissueParams, otsu_threshold, saturation, tissue_mask

PINK = (220, 150, 200)


def _noisy_white(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(240 + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def test_saturation_values():
    rgb = np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0], [200, 100, 100]]], np.uint8)
    np.testing.assert_allclose(saturation(rgb)[0], [0, 255, 0, 127.5])


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(10, 3, 2000), rng.normal(120, 10, 800)]
    t = otsu_threshold(np.clip(values, 0, 255))
    assert 30 < t < 100
    # two single values: the cut sits between them, not at either end
    t2 = otsu_threshold(np.r_[np.zeros(100), np.full(50, 80.0)])
    assert 20 < t2 < 60


def test_mask_finds_square_drops_speck_fills_hole():
    rgb = _noisy_white(128, 128)
    rgb[32:96, 32:96] = PINK  # tissue, 64 px = 512 µm at 8 µm/px
    rgb[58:66, 58:66] = 245  # an 8 px hole inside it (4,096 µm^2), survives the median blur
    rgb[4:12, 108:116] = PINK  # an 8 px speck (4,096 µm^2) far away
    mask, thr = tissue_mask(rgb, mpp=8.0)
    assert 15 <= thr < 80
    expected = np.zeros((128, 128), bool)
    expected[32:96, 32:96] = True
    assert (mask == expected).mean() > 0.99
    assert mask[61, 61]  # hole filled
    assert not mask[:20, 100:].any()  # speck removed
    # with hole filling and object removal off, both stay
    raw, _ = tissue_mask(rgb, 8.0, TissueParams(min_object_um2=0, max_hole_um2=0))
    assert not raw[61, 61] and raw[7, 111]


def test_black_border_is_not_tissue():
    rgb = _noisy_white(96, 96)
    rgb[:, :10] = (10, 5, 0)  # near-black scanner edge with a little colour
    rgb[30:70, 30:70] = PINK
    mask, _ = tissue_mask(rgb, 8.0)
    assert not mask[:, :10].any() and mask[50, 50]


def test_glass_only_gives_empty_mask():
    mask, thr = tissue_mask(_noisy_white(100, 100), 8.0)
    assert not mask.any() and thr >= 15


def test_fixed_threshold_option():
    rgb = _noisy_white(64, 64)
    rgb[16:48, 16:48] = (230, 200, 220)  # pale tissue, saturation ~33
    pale, thr = tissue_mask(rgb, 8.0, TissueParams(threshold=20))
    assert thr == 20 and pale[32, 32]
    none, _ = tissue_mask(rgb, 8.0, TissueParams(threshold=60))
    assert not none.any()


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="threshold"):
        TissueParams(threshold="triangle")
    with pytest.raises(ValueError, match="median_um"):
        TissueParams(median_um=-1)
    with pytest.raises(ValueError, match="mpp"):
        tissue_mask(_noisy_white(8, 8), 0.0)
