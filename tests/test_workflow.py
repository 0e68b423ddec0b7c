"""The whole workflow on the tiny configuration: every stage real, end to end."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from csmil.reporting.tables import CPU_LABEL

ROOT = Path(__file__).resolve().parents[1]
# The tiny settings: an overlay on config.yaml, merged by Snakemake in this order.
TINY = ROOT / "tests" / "config" / "tiny.yaml"
CONFIGS = [str(ROOT / "config.yaml"), str(TINY)]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        *CONFIGS,
        "--cores",
        "2",
        *args,
    ]
    env = {**os.environ, "CSMIL_NO_PROGRESS": "1"}
    return subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    proc = snakemake(workdir)
    if proc.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}"
            for p in sorted(workdir.glob("logs/**/*.log"))
            if "Error" in p.read_text() or "Traceback" in p.read_text()
        )
        pytest.fail(f"workflow failed:\n{proc.stderr[-6000:]}\n{logs}")
    return workdir


def configured_methods():
    import yaml

    return yaml.safe_load(TINY.read_text())["mil"]["methods"]


def test_table5_has_real_numbers_for_every_method(tiny_run):
    from csmil.mil.models import MIL_MODELS

    df = pd.read_csv(tiny_run / "results" / "tables" / "table5.csv")
    assert df["method"].tolist() == configured_methods()
    # every registered model is among the methods the tiny run trained
    trained = {
        m.rsplit("_", 1)[0] if m.endswith(("_20x", "_10x", "_5x")) else m for m in df["method"]
    }
    assert set(MIL_MODELS) <= trained
    values = df[["micro_auc", "micro_ap", "macro_auc", "macro_ap"]].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    # the CSV keeps 6 significant digits
    np.testing.assert_allclose(df["mean"], values.mean(axis=1), atol=1e-5)
    md = (tiny_run / "results" / "tables" / "table5.md").read_text()
    assert "| csmil |" in md


def test_tables_and_figures_are_written(tiny_run):
    res = tiny_run / "results"
    for n in (1, 2, 3, 4, 6):
        assert (res / "tables" / f"table{n}.csv").stat().st_size > 0
        assert (res / "tables" / f"table{n}.md").read_text().count("|") > 10
    t6 = pd.read_csv(res / "tables" / "table6.csv")
    assert len(t6) >= len(configured_methods())
    # the training memory of each model (a CPU run), not the whole job's
    assert (t6["memory_measure"] == CPU_LABEL).all() and (t6["peak_memory_mb"] >= 0).all()
    for ds in ("micro", "macro"):
        assert (res / "figures" / ds / "roc_pr.png").stat().st_size > 10_000
        assert any((res / "figures" / ds / "attention_maps").glob("*.png"))
    loc = pd.read_csv(res / "tables" / "attention_localisation.csv")
    assert {"dataset", "method", "attention", "auroc"} <= set(loc.columns)
    kinds = loc.groupby("method")["attention"].agg(set)
    assert kinds["csmil"] == {"instance", "scale_20x", "scale_10x", "scale_5x"}
    assert kinds["deepattnmisl_20x"] == kinds["csmil_mean"] == {"instance"}


def test_every_stage_left_its_outputs(tiny_run):
    from csmil.encoders.featurestore import read_features
    from csmil.slides.patchstore import open_patch_store

    res = tiny_run / "results"
    slides = sorted((res / "micro" / "slides").glob("*.svs"))
    assert len(slides) == 6
    for svs in slides:
        sid = svs.stem
        with open_patch_store(res / "micro" / "patches" / f"{sid}.h5") as ps:
            n = ps.n
            assert ps.patch_px == 32 and n > 0
        feats = read_features(res / "micro" / "features" / f"{sid}.h5")
        assert feats.n == n and feats.dim == 64 + 128 + 256 + 512  # layer1..layer4 read-out
    assert sorted(p.name for p in (res / "encoders" / "toy").glob("*.pt")) == [
        "10x.pt",
        "20x.pt",
        "5x.pt",
    ]
    splits = pd.read_csv(res / "micro" / "splits.tsv", sep="\t")
    assert sorted(splits["fold"].unique()) == [0, 1, 2]
    preds = pd.concat(
        pd.read_csv(p, sep="\t")
        for p in (res / "micro" / "mil" / "csmil").glob("fold*/predictions.tsv")
    )
    assert sorted(preds["patient_id"]) == sorted(splits["patient_id"])
    assert preds["prob"].between(0, 1).all()
    att = pd.read_csv(res / "micro" / "mil" / "csmil" / "fold0" / "attention.tsv", sep="\t")
    assert {"instance", "scale_20x", "scale_10x", "scale_5x"} <= set(att.columns)
    assert (tiny_run / "logs" / "train_mil").exists()


def test_report_builds_and_stays_small(tiny_run):
    proc = snakemake(tiny_run, "--report", "report.html")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = (tiny_run / "report.html").read_text()
    # every table and figure category is in it; the attention maps as their JPEG previews
    for name in ("table1", "roc_pr", "Attention maps"):
        assert name in html
    for ds in ("micro", "macro"):
        previews = list((tiny_run / "results" / "figures" / ds / "attention_maps").glob("*.jpg"))
        assert previews and previews[0].with_suffix(".png").exists()
    assert (tiny_run / "report.html").stat().st_size < 20_000_000


def test_second_run_has_nothing_to_do(tiny_run):
    proc = snakemake(tiny_run, "-n")
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_lint_is_clean(tmp_path):
    shutil.copy(TINY, tmp_path / "tiny.yaml")
    proc = snakemake(tmp_path, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
