"""Incremental reruns on a real cohort (a sample sheet): adding a slide re-runs only what
depends on it, and changing a setting of one stage re-runs that stage and what follows.

The cohort is a handful of toy slides written to a temporary folder and listed in a sample
sheet, as a lab would list its own slides; the settings are config.yaml with the overlay
tests/config/tiny.yaml.
"""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from csmil.config import load_config
from csmil.toy.generator import make_toy_slide, toy_sample_sheet

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
DATASET = "lab"
METHODS = ["csmil", "deepattnmisl_20x"]
N_PATIENTS = 6  # in the first run; the test then adds a seventh
TIMEOUT_S = 1200

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(TIMEOUT_S),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        *args,
    ]
    env = {**os.environ, "CSMIL_NO_PROGRESS": "1"}
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)


def run_ok(workdir: Path, config: Path, *args: str) -> str:
    proc = snakemake(workdir, config, *args)
    if proc.returncode != 0:
        logs = []
        for p in sorted(workdir.glob("logs/**/*.log")):
            text = p.read_text(errors="replace")
            if "Error" in text or "Traceback" in text:
                logs.append(f"--- {p}\n{text[-3000:]}")
        pytest.fail(
            f"snakemake {' '.join(args)} failed:\n{proc.stderr[-6000:]}\n" + "\n".join(logs)
        )
    return proc.stdout + proc.stderr


def planned_jobs(output: str) -> set[tuple[str, frozenset]]:
    """The jobs of a (dry-)run's log: (rule, wildcards as frozenset of name=value).

    A job of a group (the SLURM profile's ``groups``) is printed under its group job, indented.
    """
    jobs = set()
    pattern = r"^( *)(?:local)?rule (\w+):\n((?:\1    .*\n?)*)"
    for match in re.finditer(pattern, output, re.M):
        wildcards = re.search(r"^ *wildcards: (.*)$", match.group(3), re.M)
        items = frozenset(wildcards.group(1).split(", ")) if wildcards else frozenset()
        jobs.add((match.group(2), items))
    return jobs


def job(rule: str, **wildcards) -> tuple[str, frozenset]:
    return rule, frozenset(f"{k}={v}" for k, v in wildcards.items())


# Stages before MIL training: per slide, per patient, per encoder, the splits.
UPSTREAM_RULES = {
    "make_toy_slide",
    "tile_slide",
    "list_pretraining",
    "train_encoder",
    "embed_slide",
    "cluster_patient",
    "make_splits",
}


def mil_jobs() -> set:
    """MIL training (every fold) and evaluation per method, and the target rule."""
    jobs = {job("all")}
    for m in METHODS:
        jobs.add(job("evaluate", dataset=DATASET, method=m))
        jobs.add(job("train_mil", dataset=DATASET, method=m))
    return jobs


def fingerprint(paths) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of each file."""
    return {
        str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), Path(p).stat().st_mtime_ns)
        for p in paths
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Seven toy slides on disk (one per patient) and their sample sheet rows; the last
    one is not in the pretraining set and is held back for the test to add."""
    base = tmp_path_factory.mktemp("incremental")
    sheet = toy_sample_sheet(
        dataset=DATASET,
        cohort="micro",
        n_patients=N_PATIENTS + 1,
        seed=11,
        slides_dir=str(base / "slides"),
        pretrain_fraction=0.5,
    )
    (base / "slides").mkdir()
    size_px = yaml.safe_load(TINY.read_text())["datasets"]["micro"]["toy"]["size_px"]
    for row in sheet.itertuples():
        make_toy_slide(row.path, row.mask_path, row.cohort, int(row.label), int(row.seed), size_px)
    # Hold back a patient outside the pinned pretraining set.
    held = sheet.index[~sheet["pretrain"]][-1]
    order = [i for i in sheet.index if i != held] + [held]
    sheet = sheet.loc[order, ["slide_id", "patient_id", "path", "label", "pretrain"]]
    sheet["pretrain"] = sheet["pretrain"].map({True: "true", False: "false"})
    return base, sheet.reset_index(drop=True)


def write_setup(base: Path, rows: pd.DataFrame, name: str, **changes) -> Path:
    """A sample sheet of ``rows`` and a configuration (tiny settings) that points to it."""
    samples = base / f"{name}.tsv"
    rows.to_csv(samples, sep="\t", index=False)
    config = load_config(ROOT / "config.yaml", TINY)  # the overlay merged, then replaced below
    config["datasets"] = {DATASET: {"samples": str(samples)}}
    config["mil"]["methods"] = METHODS
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def grown(cohort):
    """Run the workflow on six slides, then add the seventh and run again; collect the
    dry-run job list of the second run and fingerprints taken around it."""
    base, rows = cohort
    workdir = base / "work"
    workdir.mkdir()
    first = write_setup(base, rows.iloc[:N_PATIENTS], "first")
    first_jobs = planned_jobs(run_ok(workdir, first))
    # Jobs that read every patient: all of the first run's jobs after the upstream stages
    # (MIL training and evaluation, and the comparisons, tables and figures built on them).
    cohort_level = {j for j in first_jobs if j[0] not in UPSTREAM_RULES}
    assert mil_jobs() <= cohort_level
    res = workdir / "results"
    old = rows.iloc[:N_PATIENTS]
    watched = (
        [res / DATASET / "patches" / f"{s}.h5" for s in old["slide_id"]]
        + [res / DATASET / "features" / f"{s}.h5" for s in old["slide_id"]]
        + [res / DATASET / "phenotypes" / f"{p}.tsv" for p in old["patient_id"]]
        + sorted((res / "encoders").glob("*/*"))
    )
    before = fingerprint(watched)
    splits_before = pd.read_csv(res / DATASET / "splits.tsv", sep="\t", dtype={"patient_id": str})

    second = write_setup(base, rows, "second")
    dry = run_ok(workdir, second, "--dry-run")
    run_ok(workdir, second)
    after = fingerprint(watched)
    splits_after = pd.read_csv(res / DATASET / "splits.tsv", sep="\t", dtype={"patient_id": str})
    return {
        "base": base,
        "workdir": workdir,
        "rows": rows,
        "config": second,
        "dry": dry,
        "before": before,
        "after": after,
        "splits": (splits_before, splits_after),
        "cohort_level": cohort_level,
    }


def test_adding_a_slide_plans_exactly_its_jobs_and_the_cohort_level_ones(grown):
    new = grown["rows"].iloc[-1]
    expected = {
        job("tile_slide", dataset=DATASET, slide=new.slide_id),
        job("embed_slide", dataset=DATASET, slide=new.slide_id),
        job("cluster_patient", dataset=DATASET, patient=new.patient_id),
        job("make_splits", dataset=DATASET),
    } | grown["cohort_level"]
    assert planned_jobs(grown["dry"]) == expected


def test_other_slides_and_encoders_are_untouched(grown):
    assert len(grown["before"]) >= 3 * N_PATIENTS + 6
    changed = [p for p in grown["before"] if grown["before"][p] != grown["after"][p]]
    assert changed == []


def test_existing_patients_keep_their_folds(grown):
    before, after = grown["splits"]
    new_patient = grown["rows"].iloc[-1].patient_id
    assert sorted(after["patient_id"]) == sorted([*before["patient_id"], new_patient])
    merged = before.merge(after, on="patient_id", suffixes=("_before", "_after"))
    assert len(merged) == len(before)
    assert (merged["fold_before"] == merged["fold_after"]).all()


def test_the_grown_cohort_is_complete(grown):
    out = run_ok(grown["workdir"], grown["config"], "--dry-run")
    assert "Nothing to be done" in out
    res = grown["workdir"] / "results" / DATASET
    new = grown["rows"].iloc[-1]
    assert (res / "features" / f"{new.slide_id}.h5").exists()
    for m in METHODS:
        preds = pd.concat(
            pd.read_csv(p, sep="\t", dtype={"patient_id": str})
            for p in (res / "mil" / m).glob("fold*/predictions.tsv")
        )
        assert sorted(preds["patient_id"]) == sorted(grown["rows"]["patient_id"])


def test_a_second_slide_of_a_known_patient_keeps_the_splits(grown):
    base, rows = grown["base"], grown["rows"]
    patient = rows[rows["pretrain"] == "false"].iloc[0]
    slide_id = f"{patient.patient_id}_s1"
    path = base / "slides" / f"{slide_id}.svs"
    make_toy_slide(
        path,
        base / "slides" / f"{slide_id}.mask.png",
        "micro",
        int(patient.label),
        seed=77,
        size_px=1536,
    )
    extra = pd.concat(
        [rows, pd.DataFrame([{**patient.to_dict(), "slide_id": slide_id, "path": str(path)}])],
        ignore_index=True,
    )
    config = write_setup(base, extra, "third")
    planned = planned_jobs(run_ok(grown["workdir"], config, "--dry-run"))
    expected = {
        job("tile_slide", dataset=DATASET, slide=slide_id),
        job("embed_slide", dataset=DATASET, slide=slide_id),
        job("cluster_patient", dataset=DATASET, patient=patient.patient_id),
    } | grown["cohort_level"]
    assert planned == expected


@pytest.mark.parametrize(
    "change, first_stage",
    [
        ({"tiling__tissue_threshold": 0.3}, "tile"),
        ({"clustering__n_clusters": 3}, "cluster"),
        ({"mil__epochs": 3}, "mil"),
    ],
)
def test_changing_a_stage_setting_reruns_that_stage_and_what_follows(grown, change, first_stage):
    base, rows = grown["base"], grown["rows"]
    config = write_setup(base, rows, f"changed-{first_stage}", **change)
    planned = planned_jobs(run_ok(grown["workdir"], config, "--dry-run"))
    tiling = {job("tile_slide", dataset=DATASET, slide=s) for s in rows["slide_id"]}
    encoders = {job("train_encoder", group=DATASET, scale=s) for s in ("20x", "10x", "5x")}
    embedding = {job("embed_slide", dataset=DATASET, slide=s) for s in rows["slide_id"]}
    clustering = {job("cluster_patient", dataset=DATASET, patient=p) for p in rows["patient_id"]}
    stages = {
        # The splits depend on patients and labels only, never on pixels or features.
        "tile": tiling
        | {job("list_pretraining", group=DATASET)}
        | encoders
        | embedding
        | clustering,
        "cluster": clustering,
        "mil": set(),
    }
    # Cohort-level jobs that read only what comes before the changed stage stay done: the
    # slide QC reads the patch stores, the cohort listing the features and phenotypes.
    untouched = {"tile": set(), "cluster": {"slide_qc"}, "mil": {"slide_qc", "list_cohort"}}
    cohort_level = {j for j in grown["cohort_level"] if j[0] not in untouched[first_stage]}
    assert planned == stages[first_stage] | cohort_level
