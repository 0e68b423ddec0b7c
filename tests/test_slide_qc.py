"""The slide QC table of a dataset and leaving a slide out: the sample sheet's exclude
column, the failure record a failed tiling job leaves, and ``csmil qc``."""

import numpy as np
import pandas as pd
import pytest

from csmil.cli import main
from csmil.config import ConfigError, SheetIndex, load_sample_sheet
from csmil.slides.qc import (
    QC_COLUMNS,
    clear_failure,
    failure_record_path,
    qc_table,
    read_qc_table,
    record_failure,
    write_qc_table,
)
from csmil.slides.tiling import tile_slide
from csmil.toy.svs import write_aperio_svs

PINK = (220, 150, 200)
GLASS = (242, 242, 242)


def _slide(path, tissue=True):
    rgb = np.full((1024, 1024, 3), GLASS, np.uint8)
    if tissue:
        rgb[256:768, 256:768] = PINK  # four 20x tiles of 32 px at 0.5 µm/px level 0
    write_aperio_svs(path, rgb, mpp=0.5)
    return path


def _sheet(tmp_path, rows):
    path = tmp_path / "samples.tsv"
    head = "slide_id\tpatient_id\tpath\tlabel\texclude\n"
    path.write_text(head + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def test_exclude_column_leaves_slides_and_empty_patients_out(tmp_path):
    sheet = _sheet(
        tmp_path,
        [
            ("a1", "pa", "a1.svs", 1, ""),
            ("a2", "pa", "a2.svs", 1, "out of focus"),
            ("b1", "pb", "b1.svs", 0, "yes"),
            ("c1", "pc", "c1.svs", 0, "FALSE"),
            ("d1", "pd", "d1.svs", 0, "no"),
        ],
    )
    df = load_sample_sheet(sheet)
    assert list(df["exclude"]) == ["", "out of focus", "yes", "", ""]
    index = SheetIndex.from_frame(df)
    assert list(index.rows) == ["a1", "c1", "d1"]
    assert index.excluded == {"a2": "out of focus", "b1": "yes"}
    assert index.patients == ["pa", "pc", "pd"]  # pb had one slide, excluded
    assert index.slides("pa") == ["a1"]
    assert [p["patient_id"] for p in index.patient_labels()] == ["pa", "pc", "pd"]
    with pytest.raises(KeyError, match="a2"):
        index.row("a2")


def test_sheet_without_exclude_column_keeps_every_slide(tmp_path):
    path = tmp_path / "samples.tsv"
    path.write_text("slide_id\tpatient_id\tpath\tlabel\ns1\tp1\ts1.svs\t1\n")
    index = SheetIndex.from_frame(load_sample_sheet(path))
    assert list(index.rows) == ["s1"] and index.excluded == {}


def test_repeated_slide_id_is_refused_even_when_excluded(tmp_path):
    sheet = _sheet(tmp_path, [("s1", "p1", "a.svs", 1, ""), ("s1", "p1", "b.svs", 1, "bad")])
    with pytest.raises(ConfigError, match="s1"):
        load_sample_sheet(sheet)


def test_failure_record_is_written_beside_the_store_and_cleared(tmp_path):
    store = tmp_path / "patches" / "s1.h5"
    record = record_failure(store, "the file is truncated.\n Copy it again")
    assert record == failure_record_path(store) == tmp_path / "patches" / "s1.h5.failed.txt"
    assert record.read_text() == "the file is truncated. Copy it again\n"
    clear_failure(store)
    assert not record.exists()
    clear_failure(store)  # nothing to clear is fine


def test_qc_table_has_every_status_and_round_trips(tmp_path):
    patches = tmp_path / "patches"
    tile_slide(_slide(tmp_path / "ok.svs"), patches / "ok.h5", patch_px=32, slide_id="ok")
    tile_slide(
        _slide(tmp_path / "glass.svs", tissue=False),
        patches / "glass.h5",
        patch_px=32,
        slide_id="glass",
    )
    record_failure(patches / "broken.h5", "corrupt tile data at level 0")
    stores = {s: patches / f"{s}.h5" for s in ("ok", "glass", "broken", "later")}
    df = qc_table(stores, {"dropped": "out of focus"})
    assert list(df.columns) == list(QC_COLUMNS)
    assert list(df["slide_id"]) == ["ok", "glass", "broken", "later", "dropped"]
    assert list(df["status"]) == ["ok", "empty", "failed", "pending", "excluded"]
    assert df.loc[0, "tiles"] > 0 and df.loc[1, "tiles"] == 0
    assert df.loc[2, "reason"] == "corrupt tile data at level 0"
    assert df.loc[4, "reason"] == "out of focus"
    assert df.loc[0, "mpp_source"] == "slide_metadata"

    write_qc_table(df, tmp_path / "qc.tsv")
    back = read_qc_table(tmp_path / "qc.tsv")
    assert list(back["status"]) == list(df["status"])
    assert back.loc[0, "reason"] == "" and back.loc[2, "reason"] == df.loc[2, "reason"]
    assert back.loc[0, "tiles"] == df.loc[0, "tiles"]


def test_store_of_another_slide_is_refused(tmp_path):
    tile_slide(_slide(tmp_path / "a.svs"), tmp_path / "a.h5", patch_px=32, slide_id="a")
    with pytest.raises(ValueError, match="holds slide 'a', not 'b'"):
        qc_table({"b": tmp_path / "a.h5"})


def test_read_qc_table_refuses_another_table(tmp_path):
    pd.DataFrame({"slide_id": ["s"], "fold": [0]}).to_csv(tmp_path / "x.tsv", sep="\t")
    with pytest.raises(ValueError, match="not a slide QC table"):
        read_qc_table(tmp_path / "x.tsv")


def test_cli_qc_lists_failed_and_excluded_slides(tmp_path, capsys):
    patches = tmp_path / "patches"
    tile_slide(_slide(tmp_path / "s1.svs"), patches / "s1.h5", patch_px=32, slide_id="s1")
    record_failure(patches / "s2.h5", "the file is empty (0 bytes)")
    sheet = _sheet(
        tmp_path,
        [
            ("s1", "p1", "s1.svs", 1, ""),
            ("s2", "p2", "s2.svs", 0, ""),
            ("s3", "p3", "s3.svs", 0, "scanner artefact"),
        ],
    )
    assert main(["qc", str(sheet), str(patches), "--out", str(tmp_path / "qc.tsv")]) == 0
    out = capsys.readouterr().out
    assert "the file is empty (0 bytes)" in out and "scanner artefact" in out
    assert "ok: 1" in out and "failed: 1" in out and "excluded: 1" in out
    assert list(read_qc_table(tmp_path / "qc.tsv")["status"]) == ["ok", "failed", "excluded"]
