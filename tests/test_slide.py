"""Opening slides, MPP and physical level choice (csmil.slides.reader)."""

import logging

import numpy as np
import pytest
import tifffile

from csmil.slides.errors import SlideError
from csmil.slides.reader import (
    SlideMpp,
    best_level_for,
    open_slide,
    read_region_rgb,
    resolve_mpp,
    slide_mpp,
    slide_thumbnail,
)
from csmil.toy.svs import downsample_rgb, write_aperio_svs


class FakeSlide:
    """Just the attributes slide_mpp / best_level_for look at."""

    def __init__(self, properties=None, downsamples=(1.0, 4.0, 16.0)):
        self.properties = properties or {}
        self.level_downsamples = downsamples
        self.path = "fake.svs"


def _noise_rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def svs20(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "s20.svs"
    write_aperio_svs(path, np.full((1000, 1200, 3), 200, np.uint8), mpp=0.5, app_mag=20)
    return path


def test_open_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        open_slide(tmp_path / "nope.svs")


def test_open_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "notaslide.svs"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="notaslide.svs"):
        open_slide(bad)


def test_mpp_from_metadata_20x_and_40x(svs20, tmp_path):
    with open_slide(svs20) as s:
        assert slide_mpp(s) == pytest.approx(0.5)
        assert slide_mpp(s, mpp_override=0.3) == pytest.approx(0.3)
    p40 = tmp_path / "s40.svs"
    write_aperio_svs(p40, np.full((512, 512, 3), 200, np.uint8), mpp=0.25, app_mag=40)
    with open_slide(p40) as s:
        assert slide_mpp(s) == pytest.approx(0.25)


def test_mpp_falls_back_to_objective_power_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="csmil.slides.reader"):
        assert slide_mpp(FakeSlide({"openslide.objective-power": "40"})) == pytest.approx(0.25)
    assert "objective power" in caplog.text
    assert slide_mpp(FakeSlide({"openslide.objective-power": "20"})) == pytest.approx(0.5)


def test_no_mpp_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.tif"  # generic TIFF: no MPP, no objective power
    tifffile.imwrite(
        path, np.full((300, 300, 3), 200, np.uint8), tile=(256, 256), photometric="rgb"
    )
    with open_slide(path) as s:
        with pytest.raises(ValueError, match="mpp column"):
            slide_mpp(s)
        assert slide_mpp(s, mpp_override=0.5) == 0.5
    with pytest.raises(ValueError, match="mpp_override"):
        slide_mpp(FakeSlide(), mpp_override=-1)


def test_best_level_is_largest_downsample_not_exceeding_wanted(svs20):
    with open_slide(svs20) as s:
        ds = s.level_downsamples
        assert ds[2] != 16.0  # 1000 / 62 px: an odd-sized level, slightly off 16
        assert best_level_for(s, 16.0) == (2, ds[2])  # within tolerance
        assert best_level_for(s, 8.0) == (1, 4.0)
        assert best_level_for(s, 4.0) == (1, 4.0)
        assert best_level_for(s, 3.5) == (0, 1.0)
        assert best_level_for(s, 0.5) == (0, 1.0)  # finer than level 0: level 0
        assert best_level_for(s, 100.0)[0] == 2
    # a 2x pyramid (NDPI-like) picks by downsample, not index
    fake = FakeSlide(downsamples=(1.0, 2.0, 4.0, 8.0, 16.0, 32.0))
    assert best_level_for(fake, 16.0) == (4, 16.0)
    assert best_level_for(fake, 12.0) == (3, 8.0)
    with pytest.raises(ValueError, match="downsample_wanted"):
        best_level_for(fake, 0)


def test_read_region_outside_slide_is_white(svs20):
    with open_slide(svs20) as s:
        region = read_region_rgb(s, (-100, -50), 0, (200, 100))
    assert region.shape == (100, 200, 3)
    assert (region[:50, :] == 255).all() and (region[:, :100] == 255).all()
    assert abs(int(region[80, 150, 0]) - 200) <= 3


def test_thumbnail_is_box_average_even_without_pyramid(tmp_path):
    rgb = _noise_rgb(640, 960)
    path = tmp_path / "flat.tif"  # a single level: the thumbnail must come from level 0
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb")
    with open_slide(path) as s:
        thumb, ds = slide_thumbnail(s, downsample=16)
        small, ds_small = slide_thumbnail(s, max_side=96)
    assert ds == 16.0 and thumb.shape == (40, 60, 3)
    expected = downsample_rgb(rgb, 16).astype(int)
    assert np.abs(thumb.astype(int) - expected).max() <= 1
    assert small.shape == (64, 96, 3) and ds_small == pytest.approx(10.0)


@pytest.mark.parametrize(("mpp", "ok"), [(0.1, True), (20.0, True), (0.09, False), (20.5, False)])
def test_plausible_mpp_range(mpp, ok):
    fake = FakeSlide({"openslide.mpp-x": str(mpp), "openslide.mpp-y": str(mpp)})
    if ok:
        assert resolve_mpp(fake) == SlideMpp(mpp, "slide_metadata")
    else:
        with pytest.raises(SlideError, match=r"fake.svs: its metadata .* outside the 0.1-20"):
            resolve_mpp(fake)


def test_unparsable_mpp_falls_back_to_objective_power():
    fake = FakeSlide({"openslide.mpp-x": "n/a", "openslide.objective-power": "20"})
    assert resolve_mpp(fake) == SlideMpp(0.5, "objective_power")
