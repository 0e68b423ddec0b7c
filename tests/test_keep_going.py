"""A bad slide does not cost the run: with --keep-going every other slide is tiled and
embedded, the failed slide's reason is kept for ``csmil qc``, and after the slide is left out
with the sample sheet's exclude column the run goes on without redoing anything."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from csmil.cli import main
from csmil.config import load_config
from csmil.slides.qc import failure_record_path, read_qc_table
from csmil.toy.generator import make_toy_slide, toy_sample_sheet

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
DATASET = "lab"
BAD = "lab_bad"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["--configfile", str(config), "--cores", "2", *args]
    env = {**os.environ, "CSMIL_NO_PROGRESS": "1"}
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


def write_setup(base: Path, rows: pd.DataFrame, name: str) -> Path:
    samples = base / f"{name}.tsv"
    rows.to_csv(samples, sep="\t", index=False)
    config = load_config(ROOT / "config.yaml", TINY)
    config["datasets"] = {DATASET: {"samples": str(samples)}}
    config["mil"]["methods"] = ["csmil"]
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("keep_going")
    sheet = toy_sample_sheet(
        dataset=DATASET, cohort="micro", n_patients=4, seed=5, slides_dir=str(base / "slides")
    )
    (base / "slides").mkdir()
    for row in sheet.itertuples():
        make_toy_slide(row.path, row.mask_path, row.cohort, int(row.label), int(row.seed), 1536)
    rows = sheet[["slide_id", "patient_id", "path", "label", "pretrain"]].copy()
    bad_path = base / "slides" / f"{BAD}.svs"
    bad_path.write_bytes(b"")  # a copy that never finished: an empty file
    bad = {"slide_id": BAD, "patient_id": "lab_p099", "path": str(bad_path), "label": 0}
    rows = pd.concat([rows, pd.DataFrame([{**bad, "pretrain": False}])], ignore_index=True)
    rows["pretrain"] = rows["pretrain"].map({True: "true", False: "false"})
    rows["exclude"] = ""
    workdir = base / "work"
    workdir.mkdir()
    res = workdir / "results" / DATASET
    # targets relative to the working directory, as the rules write them
    features = [f"results/{DATASET}/features/{s}.h5" for s in rows["slide_id"]]

    first = snakemake(workdir, write_setup(base, rows, "first"), "--keep-going", *features)
    qc_out = base / "qc.tsv"
    qc_rc = main(["qc", str(base / "first.tsv"), str(res / "patches"), "--out", str(qc_out)])

    rows.loc[rows["slide_id"] == BAD, "exclude"] = "empty file, re-copy from the scanner"
    second_config = write_setup(base, rows, "second")
    kept = [f for f in features if BAD not in f]
    table = f"results/tables/slide_qc_{DATASET}.tsv"
    dry = snakemake(workdir, second_config, "-n", *kept, table)
    second = snakemake(workdir, second_config, *kept, table)
    return {
        "rows": rows,
        "res": res,
        "first": first,
        "qc_rc": qc_rc,
        "qc": read_qc_table(qc_out),
        "dry": dry,
        "second": second,
        "table": workdir / table,
    }


def test_the_bad_slide_fails_and_every_other_slide_is_embedded(run):
    first, res = run["first"], run["res"]
    assert first.returncode != 0
    for slide in run["rows"]["slide_id"]:
        assert (res / "features" / f"{slide}.h5").exists() == (slide != BAD), first.stderr[-4000:]
    assert not (res / "patches" / f"{BAD}.h5").exists()
    log = (Path(res).parents[1] / "logs" / "tile_slide" / DATASET / f"{BAD}.log").read_text()
    assert f"{BAD}.svs" in log and "empty" in log


def test_qc_names_the_failed_slide_and_why(run):
    assert run["qc_rc"] == 0
    qc = run["qc"].set_index("slide_id")
    assert (qc.drop(index=BAD)["status"] == "ok").all()
    assert qc.loc[BAD, "status"] == "failed"
    record = failure_record_path(run["res"] / "patches" / f"{BAD}.h5").read_text()
    assert qc.loc[BAD, "reason"] == record.strip()
    assert "empty" in record and "exclude" in record  # what is wrong, and the way out


def test_excluding_the_slide_lets_the_run_go_on_without_redoing_work(run):
    dry = run["dry"]
    assert dry.returncode == 0, dry.stderr[-3000:]
    log = dry.stdout + dry.stderr
    assert "rule slide_qc:" in log
    for rule in ("tile_slide", "embed_slide", "train_encoder"):
        assert f"rule {rule}:" not in log, rule
    assert run["second"].returncode == 0, run["second"].stderr[-3000:]
    table = read_qc_table(run["table"]).set_index("slide_id")
    assert table.loc[BAD, "status"] == "excluded"
    assert table.loc[BAD, "reason"] == "empty file, re-copy from the scanner"
    assert (table.drop(index=BAD)["status"] == "ok").all()
    assert (table.drop(index=BAD)["tiles"] > 0).all()
