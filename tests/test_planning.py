"""Planning large cohorts: sample sheets indexed once, input listings, and jobs whose inputs
do not grow with the cohort (what keeps `snakemake -n` linear in slides)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from csmil.config import SheetIndex, load_config, validate_sample_sheet
from csmil.inputs import nest, read_listing, write_listing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_dryrun import write_cohort, write_config  # noqa: E402


def sheet(rows):
    df = pd.DataFrame(rows, columns=["slide_id", "patient_id", "path", "label", "pretrain", "mpp"])
    return validate_sample_sheet(df.astype(str).replace("None", ""))


def test_sheet_index_answers_by_slide_and_by_patient():
    index = SheetIndex.from_frame(
        sheet(
            [
                ("s3", "pB", "b3.svs", 1, "true", 0.25),
                ("s1", "pA", "a1.svs", 0, "false", None),
                ("s2", "pB", "b2.svs", 1, "false", None),
            ]
        )
    )
    assert index.patients == ["pA", "pB"]
    assert index.slides("pB") == ["s3", "s2"]  # sheet order
    assert index.row("s3")["path"] == "b3.svs"
    assert index.row("s3")["mpp"] == 0.25 and index.row("s1")["mpp"] is None
    assert index.pretrain_slides == ["s3"]
    assert index.patient_labels() == [
        {"patient_id": "pA", "label": 0},
        {"patient_id": "pB", "label": 1},
    ]
    with pytest.raises(KeyError, match="slide 's9' is not in the sample sheet"):
        index.row("s9")
    with pytest.raises(KeyError, match="patient 'pC'"):
        index.slides("pC")


def test_listing_round_trips_names_order_and_lists(tmp_path):
    named = [("features__p2", ["b.h5", "a.h5"]), ("phenotypes__p2", "p2.tsv"), ("x", [])]
    path = tmp_path / "sub" / "cohort.inputs.json"
    write_listing(path, named)
    back = read_listing(path)
    assert list(back.items()) == named
    assert nest(back) == {
        "features": {"p2": ["b.h5", "a.h5"]},
        "phenotypes": {"p2": "p2.tsv"},
        "x": [],
    }
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_listing_refuses_other_files_and_versions(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"inputs": {}}))
    with pytest.raises(ValueError, match="not an input listing"):
        read_listing(other)
    path = tmp_path / "old.inputs.json"
    write_listing(path, {"a": "a.h5"})
    doc = json.loads(path.read_text())
    doc["version"] = 0
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="delete it and re-run"):
        read_listing(path)


def snakemake(workdir: Path, config: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["--configfile", str(config), "--cores", "1", *args]
    env = {**os.environ, "CSMIL_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def inputs_per_job(output: str) -> dict[str, list[int]]:
    """Rule -> the number of input files of each of its jobs, from a dry run's job list."""
    counts: dict[str, list[int]] = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", output, re.M):
        inputs = re.search(r"^    input: (.*)$", match.group(2), re.M)
        n = len(inputs.group(1).split(", ")) if inputs else 0
        counts.setdefault(match.group(1), []).append(n)
    return counts


@pytest.mark.parametrize("n_slides", [40, 400])
def test_jobs_of_folds_and_scales_have_inputs_that_do_not_grow(tmp_path, n_slides):
    """MIL methods (one job for all their folds) and encoder scales read the cohort through one
    listing each: their inputs are the same few files at 40 and at 400 slides (Snakemake pays
    for every input of every job)."""
    config = write_config(tmp_path, write_cohort(tmp_path, n_slides), ROOT / "config.yaml")
    counts = inputs_per_job(snakemake(tmp_path, config, "-n"))
    n_methods = len(yaml.safe_load(config.read_text())["mil"]["methods"])
    assert len(counts["train_mil"]) == n_methods
    assert set(counts["train_mil"]) == {2}  # cohort listing, splits
    assert set(counts["train_encoder"]) == {1}  # pretraining listing
    assert counts["list_cohort"] == [n_slides + n_slides // 2]  # features, phenotypes


def group_jobs(output: str) -> dict[str, list[set[str]]]:
    """Group -> the rules of each of its group jobs, from a dry run's job list."""
    groups: dict[str, list[set[str]]] = {}
    blocks = re.split(r"^.*Group job (\w+) \(jobs in lexicogr\. order\):$", output, flags=re.M)
    for name, block in zip(blocks[1::2], blocks[2::2], strict=True):
        rules = re.findall(r"^    (?:local)?rule (\w+):$", block, re.M)  # indented: in the group
        groups.setdefault(name, []).append(set(rules))
    return groups


def test_the_slurm_profile_bundles_slides_and_patients_and_plain_runs_do_not(tmp_path):
    """The SLURM profile groups the per-slide and per-patient rules and bundles 20 of a group's
    jobs per cluster job; the workflow itself declares no groups, so a dry run without the
    profile plans no group (and skips Snakemake's cost of checking them)."""
    n_slides = 60  # 30 patients
    config = write_config(tmp_path, write_cohort(tmp_path, n_slides), ROOT / "config.yaml")
    assert group_jobs(snakemake(tmp_path, config, "-n")) == {}
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    size = profile["group-components"]
    assert set(profile["groups"].values()) == set(size) == {"tiling", "embedding", "phenotypes"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)]
    cmd += ["--profile", str(ROOT / "profiles" / "slurm"), "--configfile", str(config), "-n"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bundled = group_jobs(proc.stdout + proc.stderr)
    expected = {"tiling": n_slides, "embedding": n_slides, "phenotypes": n_slides // 2}
    rules = {
        "tiling": {"tile_slide"},
        "embedding": {"embed_slide"},
        "phenotypes": {"cluster_patient"},
    }
    for group, n_jobs in expected.items():
        bundles = bundled[group]
        assert len(bundles) == -(-n_jobs // size[group])  # ceil: full bundles, then the rest
        assert all(b == rules[group] for b in bundles)


def test_groups_are_inactive_when_running_locally(tmp_path):
    """The rule groups bundle jobs on clusters only: a local run runs each job on its own."""
    config = load_config(ROOT / "config.yaml", ROOT / "tests" / "config" / "tiny.yaml")
    config["datasets"] = {"micro": config["datasets"]["micro"]}
    config["datasets"]["micro"]["toy"]["n_patients"] = 4
    path = tmp_path / "four-slides.yaml"
    path.write_text(yaml.safe_dump(config))
    slides = [f"results/micro/slides/micro_p00{i}_s0.svs" for i in range(2)]
    local = ["--profile", str(ROOT / "profiles" / "local")]
    # with the SLURM profile's groups (make_toy_slide in tiling) assigned on the command line,
    # a local run still runs each job on its own
    groups = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())["groups"]
    local += ["--groups", *(f"{rule}={group}" for rule, group in groups.items())]
    out = snakemake(tmp_path, path, *local, "--", *slides)
    assert "Group job" not in out
    assert len(re.findall(r"^(?:local)?rule make_toy_slide:$", out, re.M)) == 2
    assert all((tmp_path / s).stat().st_size > 0 for s in slides)
