"""Bad slides: every failure is a SlideError naming the file, what is wrong and what to do;
what tiling copes with (missing pyramid levels, a single level, coarse scans) is warned about
and recorded for quality control (csmil.slides.qc)."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from csmil import SCALES
from csmil.slides.errors import SlideError, SlideNotFoundError
from csmil.slides.patchstore import PatchStoreWriter, open_patch_store
from csmil.slides.qc import QC_COLUMNS, failed_qc_row, slide_qc
from csmil.slides.reader import open_slide, read_region_rgb, resolve_mpp
from csmil.slides.tiling import tile_slide
from csmil.toy.svs import downsample_rgb, write_aperio_svs

PINK = (220, 150, 200)
GLASS = (242, 242, 242)


def _tissue(side=1024):
    """``side`` px square, glass with a pink square of tissue in its middle half."""
    rgb = np.full((side, side, 3), GLASS, np.uint8)
    rgb[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = PINK
    return rgb


def _write_svs(path, rgb, description, downsamples=(1, 4, 16)):
    """An Aperio-layout SVS with a base-page ``description`` of our choosing (AppMag, MPP)."""
    with tifffile.TiffWriter(path) as tif:
        for i, factor in enumerate(downsamples):
            level = downsample_rgb(rgb, factor)
            desc = f"Aperio Image Library v12.0.0 \r\n{description}" if i == 0 else "Aperio"
            tif.write(
                level,
                photometric="rgb",
                tile=(256, 256),
                compression="jpeg",
                subfiletype=0 if i == 0 else 1,
                description=desc,
                metadata=None,
            )


def _tile_offset(path, page):
    """Byte offset of the first tile of ``page`` (a pyramid level) of a TIFF."""
    with tifffile.TiffFile(path) as tif:
        return int(tif.pages[page].dataoffsets[0])


def _corrupt_first_tile(src, dst, page):
    """Copy ``src`` to ``dst`` with the JPEG header of ``page``'s first tile overwritten."""
    data = bytearray(src.read_bytes())
    at = _tile_offset(src, page)
    data[at + 2 : at + 40] = b"\xff" * 38  # keeps SOI, wrecks the markers after it
    dst.write_bytes(bytes(data))
    return bytes(data)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.svs"
    write_aperio_svs(path, _tissue(), mpp=0.5, app_mag=20)
    return path


# --------------------------------------------------------------------------- unreadable files


def test_corrupt_tile_data_names_slide_level_and_region(good, tmp_path):
    bad = tmp_path / "corrupt.svs"
    _corrupt_first_tile(good, bad, page=1)  # level 1: read by tiling for 20x and 10x
    out = tmp_path / "corrupt.h5"
    with pytest.raises(SlideError) as err:
        tile_slide(bad, out, patch_px=64)
    msg = str(err.value)
    assert msg.startswith(f"slide {bad}: its tile data is corrupt or truncated: reading level 1")
    assert "failed twice" in msg and "OpenSlide said" in msg and "level-0 x" in msg
    assert "Copy the file again from its source" in msg
    assert err.value.path == str(bad) and "corrupt" in err.value.problem
    assert not out.exists()


def test_failed_read_leaves_a_fresh_handle(good, tmp_path, caplog):
    bad = tmp_path / "corrupt.svs"
    _corrupt_first_tile(good, bad, page=1)
    with open_slide(bad) as slide:
        with pytest.raises(SlideError, match="level 1"):
            slide.read_region((0, 0), 1, (64, 64))
        # OpenSlide errors are sticky: intact data reads at once because the handle was renewed
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="csmil.slides.reader"):
            rgb = read_region_rgb(slide, (300, 300), 0, (8, 8))
        assert caplog.text == ""
        assert np.abs(rgb.astype(int) - PINK).max() <= 6
        assert float(slide.properties["openslide.mpp-x"]) == 0.5


def test_failed_read_is_tried_again_on_a_fresh_handle(good, tmp_path, caplog):
    bad = tmp_path / "flaky.svs"
    _corrupt_first_tile(good, bad, page=1)
    with open_slide(bad) as slide:
        reopen = slide._reopen

        def repair_then_reopen(failed):  # the first read failed; the file is whole again
            bad.write_bytes(good.read_bytes())
            reopen(failed)

        slide._reopen = repair_then_reopen
        with caplog.at_level(logging.WARNING, logger="csmil.slides.reader"):
            img = slide.read_region((384, 384), 1, (64, 64))
    assert "reopening the slide" in caplog.text
    assert np.abs(np.asarray(img)[..., :3].astype(int) - PINK).max() <= 6


def test_truncated_slide(good, tmp_path):
    bad = tmp_path / "cut.svs"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as err:
        open_slide(bad)
    msg = str(err.value)
    assert msg.startswith(f"slide {bad}: it is truncated: its TIFF structure refers to image")
    assert f"the file ends at byte {len(data) // 2}" in msg and "Copy the file again" in msg


@pytest.mark.parametrize(
    ("make", "problem", "fix"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)", "Copy the file again"),
        (lambda p: p.mkdir(), "it is a directory, not a slide file", ".mrxs file"),
        (lambda p: p.write_text("id\tlabel\n"), "it is in no format OpenSlide reads", "vips"),
        (
            lambda p: Image.fromarray(_tissue(64)).save(p, format="PNG"),
            "it is a PNG image, not a whole-slide image",
            "tiled pyramidal TIFF",
        ),
        (
            lambda p: tifffile.imwrite(p, _tissue(256), photometric="rgb"),  # strips, no tiles
            "it is a TIFF stored in strips, not tiles",
            "mpp column",
        ),
    ],
    ids=["empty", "directory", "text", "png", "striped-tiff"],
)
def test_files_that_are_not_slides(tmp_path, make, problem, fix):
    path = tmp_path / "slide.svs"
    make(path)
    with pytest.raises(SlideError) as err:
        tile_slide(path, tmp_path / "out.h5")
    msg = str(err.value)
    assert msg.startswith(f"slide {path}: {problem}") and fix in msg
    assert not (tmp_path / "out.h5").exists()


def test_missing_slide_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(SlideNotFoundError, match="does not exist") as err:
        open_slide(tmp_path / "gone.svs")
    assert isinstance(err.value, FileNotFoundError) and "sample sheet" in str(err.value)


def test_command_line_reports_a_bad_slide_without_traceback(good, tmp_path):
    bad = tmp_path / "corrupt.svs"
    _corrupt_first_tile(good, bad, page=1)
    run = subprocess.run(
        [sys.executable, "-m", "csmil.cli", "tile", str(bad), str(tmp_path / "o.h5")],
        capture_output=True,
        text=True,
        env={**os.environ, "CSMIL_NO_PROGRESS": "1"},
        check=False,
    )
    assert run.returncode == 2
    assert f"slide {bad}: its tile data is corrupt" in run.stderr
    assert "Traceback" not in run.stderr


# --------------------------------------------------------------------------- resolution


def _tiff_with_resolution(path, resolution, unit):
    tifffile.imwrite(
        path, _tissue(512), photometric="rgb", tile=(256, 256), resolution=resolution,
        resolutionunit=unit,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("resolution", "unit", "dpi"),
    [((28.35, 28.35), "CENTIMETER", 72), ((96, 96), "INCH", 96), ((300, 300), "INCH", 300)],
)
def test_screen_resolution_is_named_and_the_mpp_column_overrides_it(
    tmp_path, resolution, unit, dpi
):
    path = tmp_path / "export.tif"
    _tiff_with_resolution(path, resolution, unit)
    with pytest.raises(SlideError) as err:
        tile_slide(path, tmp_path / "out.h5")
    msg = str(err.value)
    mpp = (1e4 if unit == "CENTIMETER" else 25_400) / resolution[0]
    assert f"{mpp:.4g} µm/px, outside the 0.1-20 µm/px of whole-slide scans" in msg
    assert f"that is {dpi} dpi, a screen or print resolution" in msg
    tags = f"from the TIFF resolution tags: {resolution[0]:g} px per {unit.lower()}"
    assert tags in msg and "sample sheet's mpp column" in msg
    summary = tile_slide(path, tmp_path / "out.h5", patch_px=16, mpp_override=0.5)
    assert summary["mpp"] == 0.5 and summary["mpp_source"] == "sample_sheet"
    assert slide_qc(tmp_path / "out.h5")["mpp_source"] == "sample_sheet"


def test_implausible_metadata_mpp_suggests_the_objective_power(tmp_path):
    path = tmp_path / "odd.svs"
    _write_svs(path, _tissue(512), "512x512 (256x256) JPEG/RGB|AppMag = 20|MPP = 50")
    with open_slide(path) as slide, pytest.raises(SlideError) as err:
        resolve_mpp(slide)
    msg = str(err.value)
    assert "its metadata (openslide.mpp-x/mpp-y) gives 50 µm/px, outside the 0.1-20" in msg
    assert "dpi" not in msg  # 508 dpi is no screen resolution
    assert "mpp column" in msg and "objective power 20x suggests about 0.5 µm/px" in msg


def test_objective_power_when_mpp_is_missing(tmp_path, caplog):
    path = tmp_path / "mag.svs"
    _write_svs(path, _tissue(2048), "2048x2048 (256x256) JPEG/RGB|AppMag = 40")
    with caplog.at_level(logging.WARNING, logger="csmil.slides.reader"):
        summary = tile_slide(path, tmp_path / "mag.h5", patch_px=32)
    assert summary["n_tiles"] == 4  # 256 µm of tissue: 2 x 2 tiles of 128 µm
    assert "assuming 0.25 µm/px from objective power 40x" in caplog.text
    assert "mpp in the sample sheet" in caplog.text
    assert summary["mpp"] == 0.25 and summary["mpp_source"] == "objective_power"
    row = slide_qc(tmp_path / "mag.h5")
    assert row["mpp_source"] == "objective_power" and row["mpp"] == 0.25 and row["tiles"] == 4
    # a power that gives an implausible resolution is refused, saying where it came from
    low = tmp_path / "low.svs"
    _write_svs(low, _tissue(512), "512x512 (256x256) JPEG/RGB|AppMag = 0.25")
    with open_slide(low) as slide, pytest.raises(SlideError) as err:
        resolve_mpp(slide)
    assert "no MPP, and its objective power 0.25x gives 40 µm/px" in str(err.value)


def test_no_resolution_at_all(tmp_path):
    path = tmp_path / "bare.svs"
    _write_svs(path, _tissue(512), "512x512 (256x256) JPEG/RGB")
    with open_slide(path) as slide:
        with pytest.raises(SlideError) as err:
            resolve_mpp(slide)
        assert str(err.value).startswith(f"slide {path}: its metadata has neither an MPP")
        assert "sample sheet's mpp column" in str(err.value)
        assert resolve_mpp(slide, 0.5).source == "sample_sheet"
        for wrong, said in ((352.8, "352.8 µm/px, outside"), (0, "not a positive number")):
            with pytest.raises(SlideError, match=said) as err:
                resolve_mpp(slide, wrong)
            assert "the sample sheet's mpp column (mpp_override) gives" in str(err.value)


# --------------------------------------------------------------------------- pyramids


def test_missing_level_is_read_from_a_finer_one(good, tmp_path, caplog):
    sparse = tmp_path / "sparse.svs"
    write_aperio_svs(sparse, _tissue(), mpp=0.5, app_mag=20, downsamples=(1, 16))
    with caplog.at_level(logging.WARNING, logger="csmil.slides.tiling"):
        got = tile_slide(sparse, tmp_path / "sparse.h5", patch_px=64)
    # 20x and 10x want downsample 4 and 8; the pyramid has 1 and 16
    assert {s: v["level"] for s, v in got["scales"].items()} == {"20x": 0, "10x": 0, "5x": 1}
    assert "no pyramid level near scale 20x" in caplog.text
    assert "no pyramid level near scale 10x" in caplog.text and "scale 5x" not in caplog.text
    assert "reading level 0 (downsample 1) and downsampling it 4x" in caplog.text
    tile_slide(good, tmp_path / "good.h5", patch_px=64)
    with open_patch_store(tmp_path / "sparse.h5") as a, open_patch_store(tmp_path / "good.h5") as b:
        np.testing.assert_array_equal(a.coords, b.coords)
        for s in SCALES:  # the same physical pixels, whichever level they came from
            assert np.abs(a.read(s).astype(int) - b.read(s).astype(int)).mean() < 2.0, s
    row = slide_qc(tmp_path / "sparse.h5")
    assert (row["level_20x"], row["level_10x"], row["level_5x"]) == (0, 0, 1)
    assert (row["mpp_20x"], row["mpp_10x"], row["mpp_5x"]) == (2.0, 4.0, 8.0)


def test_single_level_slide_is_accepted_with_a_warning(tmp_path, caplog):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, _tissue(1024), photometric="rgb", tile=(256, 256))
    with caplog.at_level(logging.WARNING, logger="csmil.slides.tiling"):
        got = tile_slide(path, tmp_path / "flat.h5", patch_px=32, mpp_override=0.5)
    assert "has a single level (no pyramid)" in caplog.text and "--pyramid" in caplog.text
    assert "no pyramid level near" not in caplog.text  # said once, not per scale
    assert got["n_tiles"] == 4 and {v["level"] for v in got["scales"].values()} == {0}


def test_coarse_scan_is_upsampled_and_flagged(tmp_path, caplog):
    path = tmp_path / "coarse.svs"  # a 5x scan: 2 µm/px
    write_aperio_svs(path, _tissue(512), mpp=2.0, app_mag=5, downsamples=(1, 4))
    with caplog.at_level(logging.WARNING, logger="csmil.slides.tiling"):
        tile_slide(path, tmp_path / "coarse.h5", patch_px=256)
    # fields of 128/256/512 µm are 64/128/256 level-0 px, stored at 256 px
    assert "scale 20x stores 0.5 µm/px but the slide's level 0 is 2 µm/px" in caplog.text
    assert "scale 10x stores 1 µm/px" in caplog.text and "scale 5x" not in caplog.text
    row = slide_qc(tmp_path / "coarse.h5")
    assert [row[f"upsampled_{s}"] for s in SCALES] == [True, True, False]
    assert [row[f"mpp_{s}"] for s in SCALES] == [0.5, 1.0, 2.0]
    with open_patch_store(tmp_path / "coarse.h5") as st:
        assert st.attrs["scales"]["10x"]["read_mpp"] == 2.0
        assert st.attrs["level_downsamples"] == [1.0, 4.0]


# --------------------------------------------------------------------------- QC rows


def test_qc_rows_ok_empty_and_failed(good, tmp_path):
    got = tile_slide(good, tmp_path / "good.h5", patch_px=32)
    row = slide_qc(tmp_path / "good.h5")
    assert tuple(row) == QC_COLUMNS
    assert row["slide_id"] == "good" and row["status"] == "ok" and row["reason"] == ""
    assert row["tiles"] == got["n_tiles"] == 4
    assert row["tissue_fraction"] == pytest.approx(0.25, abs=0.02)
    assert row["mpp"] == 0.5 and row["mpp_source"] == "slide_metadata"
    assert [row[f"level_{s}"] for s in SCALES] == [1, 2, 2]
    assert [row[f"mpp_{s}"] for s in SCALES] == [4.0, 8.0, 16.0]
    assert not any(row[f"upsampled_{s}"] for s in SCALES)

    glass = tmp_path / "glass.svs"
    write_aperio_svs(glass, np.full((512, 512, 3), GLASS, np.uint8), mpp=0.5)
    tile_slide(glass, tmp_path / "glass.h5", patch_px=32)
    empty = slide_qc(tmp_path / "glass.h5")
    assert empty["status"] == "empty" and empty["tiles"] == 0
    assert (
        empty["reason"] == "no tissue tiles: tissue covers 0.0% of the slide, tile threshold 0.25"
    )

    failed = failed_qc_row("s9", "the file is empty (0 bytes)")
    assert tuple(failed) == QC_COLUMNS and failed["status"] == "failed"
    assert failed["reason"] == "the file is empty (0 bytes)" and failed["slide_id"] == "s9"
    assert all(failed[c] is None for c in QC_COLUMNS[3:])
    with pytest.raises(ValueError, match="needs a reason"):
        failed_qc_row("s9", " ")


def test_qc_of_a_store_written_before_qc_attributes(tmp_path):
    scales = {
        "20x": {"level": 0, "level_downsample": 1.0, "field_level0_px": 64, "out_mpp": 1.0},
        "10x": {"level": 0, "level_downsample": 1.0, "field_level0_px": 128, "out_mpp": 2.0},
        "5x": {"level": 0, "level_downsample": 1.0, "field_level0_px": 256, "out_mpp": 4.0},
    }
    attrs = {"slide_id": "old", "mpp": 2.0, "tissue_fraction": 0.4, "scales": scales}
    with PatchStoreWriter(tmp_path / "old.h5", patch_px=64, attrs=attrs) as w:
        w.append(np.zeros((1, 2)), {s: np.zeros((1, 64, 64, 3), np.uint8) for s in SCALES})
    row = slide_qc(tmp_path / "old.h5")
    assert row["mpp_source"] == "unknown" and row["status"] == "ok" and row["tiles"] == 1
    # level 0 is 2 µm/px: stored at 1 µm/px is upsampled, at 2 and 4 µm/px it is not
    assert [row[f"upsampled_{s}"] for s in SCALES] == [True, False, False]
