"""The workflow on a real scheduler: `snakemake --profile profiles/slurm` against a private
single-node SLURM (tests/slurm_cluster.py) booted by the test, with fake GPUs.

Two clusters: one with accounting (slurmdbd + MariaDB, so the SLURM executor plugin polls
with its default, sacct) runs the tiny workflow; one without accounting runs a two-rule
workflow the way the profile's comments tell clusters without slurmdbd to (squeue status
queries) and clusters that want ``--gres=gpu:1`` instead of ``--gpus=1``.

The profile is used as shipped except for the polling interval (2 s instead of 40 s: one
idle node answers at once). The tiny configuration is cut to its first cohort and two methods:
every rule and every GPU rule still runs. The profile bundles the per-slide and per-patient
jobs (rule groups, ``group-components``), so the cluster sees fewer SLURM jobs than the
workflow has jobs; a second run with bundles of one computes the same features and phenotypes.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from slurm_cluster import SlurmCluster, missing_commands

from csmil.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
TINY = ROOT / "tests" / "config" / "tiny.yaml"
GPU_RULES = {"train_encoder", "embed_slide", "train_mil"}
# The rule groups the profile bundles, the rules in each and whether the bundle runs on a GPU.
GROUPS = {
    "tiling": ({"make_toy_slide", "tile_slide"}, False),
    "embedding": ({"embed_slide"}, True),
    "phenotypes": ({"cluster_patient"}, False),
}
POLLING = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
WORKFLOW_TIMEOUT_S = 900
DAEMON_LIFETIME_S = 1800

pytestmark = pytest.mark.slurm


def _skip_reason(accounting: bool) -> str | None:
    missing = missing_commands(accounting)
    if missing:
        return (
            f"SLURM is not installed (missing: {', '.join(missing)}); "
            ".ci/slurm-setup.sh installs it (Debian packages, as root)"
        )
    if os.geteuid() != 0:
        return "booting a private SLURM needs root (slurmd starts jobs as their owner)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is missing: pip install -e '.[slurm]'"
    return None


def _boot(accounting: bool, gpus: int, cpus: int | None = None) -> SlurmCluster:
    reason = _skip_reason(accounting)
    if reason:
        pytest.skip(reason)
    # A short root keeps the munge socket path far below the 108-byte limit.
    root = Path(tempfile.mkdtemp(prefix="csmil-slurm-"))
    cluster = SlurmCluster(
        root, gpus=gpus, cpus=cpus, accounting=accounting, lifetime_s=DAEMON_LIFETIME_S
    )
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def _shutdown(cluster: SlurmCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


def snakemake_on(
    cluster: SlurmCluster, workdir: Path, snakefile: Path, *args: str
) -> subprocess.CompletedProcess:
    """`snakemake --profile profiles/slurm` against ``cluster`` (killed after a limit)."""
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(WORKFLOW_TIMEOUT_S),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--profile",
        str(PROFILE),
        *POLLING,
        *args,
    ]
    env = {**cluster.env, "CSMIL_NO_PROGRESS": "1"}
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)


def _failure(proc: subprocess.CompletedProcess, workdir: Path, cluster: SlurmCluster) -> str:
    logs = []
    for p in sorted(workdir.glob("logs/**/*.log")) + sorted(
        workdir.glob(".snakemake/slurm_logs/**/*.log")
    ):
        text = p.read_text(errors="replace")
        if "Error" in text or "Traceback" in text:
            logs.append(f"--- {p}\n{text[-3000:]}")
    return (
        f"snakemake exited with {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n"
        + "\n".join(logs)
        + "\n"
        + cluster.log_tail()
    )


def rule_of(comment: str) -> str:
    """The rule name in the job comment the SLURM executor writes (rule_<name>[_wildcards_...])."""
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
    assert match, f"unexpected job comment {comment!r}"
    return match.group(1)


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> job count) from its log output."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


# -- a cluster without slurmdbd: squeue status queries, --gres GPU requests -------------------

TWO_RULES = """
rule all:
    input:
        "gpu.txt",


rule prepare:
    output:
        "a.txt",
    resources:
        mem_mb=100,
        runtime=5,
    shell:
        "echo ready > {output}"


rule on_gpu:
    input:
        "a.txt",
    output:
        "gpu.txt",
    resources:
        gpu=1,
        mem_mb=100,
        runtime=5,
    shell:
        "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {output}"
"""


def test_cluster_without_accounting_uses_squeue_and_gres(tmp_path):
    cluster = _boot(accounting=False, gpus=1)
    try:
        # sacct fails here as on any cluster without slurmdbd.
        assert cluster.command(["sacct"], check=False).returncode != 0
        (tmp_path / "Snakefile").write_text(TWO_RULES)
        proc = snakemake_on(
            cluster,
            tmp_path,
            tmp_path / "Snakefile",
            # What the profile's comments say to set on such clusters:
            "--slurm-status-command",
            "squeue",
            "--slurm-no-account",
            "--set-resources",
            "on_gpu:slurm_partition=gpu",
            "on_gpu:gres=gpu:1",
            "on_gpu:gpu=0",
        )
        assert proc.returncode == 0, _failure(proc, tmp_path, cluster)
        records = cluster.jobs()
    finally:
        _shutdown(cluster)
    assert (tmp_path / "gpu.txt").read_text() == "CUDA_VISIBLE_DEVICES=0\n"
    by_rule = {rule_of(r["comment"]): r for r in records}
    assert sorted(by_rule) == ["on_gpu", "prepare"], records
    assert all(r["state"] == "COMPLETED" and r["exit_code"] == "0:0" for r in records)
    assert (by_rule["on_gpu"]["partition"], by_rule["on_gpu"]["gpus"]) == ("gpu", 1)
    assert "gres:gpu:1" in by_rule["on_gpu"]["tres_per_node"]
    assert by_rule["on_gpu"]["tres_per_job"] == ""  # --gres, not --gpus
    assert (by_rule["prepare"]["partition"], by_rule["prepare"]["gpus"]) == ("cpu", 0)


# -- the tiny workflow on a cluster with accounting -----------------------------------------


def tiny_one_cohort(path: Path) -> Path:
    """tests/config/tiny.yaml with its first cohort only and two MIL methods."""
    config = load_config(ROOT / "config.yaml", TINY)
    first = next(iter(config["datasets"]))
    config["datasets"] = {first: config["datasets"][first]}
    config["mil"]["methods"] = ["csmil", "deepattnmisl_20x"]
    path.write_text(yaml.safe_dump(config))
    return path


def bundle_sizes() -> dict[str, int]:
    """Slides (or patients) per SLURM job of each rule group, as the profile sets them."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return {group: int(n) for group, n in profile["group-components"].items()}


@pytest.fixture(scope="module")
def tiny_on_slurm(tmp_path_factory):
    """The tiny workflow with the profile's bundles, then its per-slide and per-patient stages
    again in another folder with bundles of one; the SLURM records of each run."""
    # Four CPU slots and two GPUs, even on a 2-core machine: most of a short job's time is
    # Python start-up and status polling, which overlap well.
    cluster = _boot(accounting=True, gpus=2, cpus=4)
    workdir = tmp_path_factory.mktemp("tiny-slurm")
    single = tmp_path_factory.mktemp("tiny-slurm-unbundled")
    config = tiny_one_cohort(workdir / "tiny-one-cohort.yaml")
    (dataset,) = yaml.safe_load(config.read_text())["datasets"]
    try:
        proc = snakemake_on(cluster, workdir, ROOT / "Snakefile", "--configfile", str(config))
        assert proc.returncode == 0, _failure(proc, workdir, cluster)
        records = cluster.jobs()
        ones = [f"{group}=1" for group in GROUPS]
        # up to the cohort listing: every slide's features and every patient's phenotypes
        target = f"results/{dataset}/cohort.inputs.json"
        args = ["--configfile", str(config), "--group-components", *ones, "--", target]
        single_proc = snakemake_on(cluster, single, ROOT / "Snakefile", *args)
        assert single_proc.returncode == 0, _failure(single_proc, single, cluster)
        seen = {r["id"] for r in records}
        single_records = [r for r in cluster.jobs() if r["id"] not in seen]
    finally:
        _shutdown(cluster)
    return workdir, proc, records, (single, single_proc, single_records)


def test_tiny_workflow_completes_on_slurm(tiny_on_slurm):
    workdir, _, _, _ = tiny_on_slurm
    datasets = yaml.safe_load((workdir / "tiny-one-cohort.yaml").read_text())["datasets"]
    (cohort,) = [spec["toy"]["cohort"] for spec in datasets.values()]
    df = pd.read_csv(workdir / "results" / "tables" / "table5.csv")
    assert df["method"].tolist() == ["csmil", "deepattnmisl_20x"]
    # Table 5 leaves the cohort that was cut out empty (NaN); the one that ran has numbers.
    values = df[[f"{cohort}_auc", f"{cohort}_ap"]].to_numpy(dtype=float)
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    for ds in datasets:
        slides = sorted(p.stem for p in (workdir / "results" / ds / "slides").glob("*.svs"))
        features = sorted(p.stem for p in (workdir / "results" / ds / "features").glob("*.h5"))
        assert slides and features == slides


def local_rules() -> set[str]:
    """The rules that run on the submitting node: those the Snakefile lists under
    ``localrules:`` and those that declare ``localrule: True`` in rules/*.smk."""
    text = (ROOT / "Snakefile").read_text()
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?[ \t]*\n)+)", text, re.MULTILINE)
    assert block, "the Snakefile declares no localrules"
    local = {name.strip().rstrip(",") for name in block.group(1).split()}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for rule in re.split(r"^rule ", smk.read_text(), flags=re.MULTILINE)[1:]:
            if re.search(r"^    localrule: True$", rule, re.MULTILINE):
                local.add(rule.split(":", 1)[0])
    return local


def group_of(record: dict) -> str | None:
    """The rule group of a bundled SLURM job (its comment names the group, then its rules),
    or None for a job of one rule."""
    name = record["comment"].removeprefix("rule_")
    for group, (rules, _) in GROUPS.items():
        if name.startswith(f"{group}_") and name[len(group) + 1 :] in {
            "_".join(sorted(subset)) for subset in _subsets(rules)
        }:
            return group
    return None


def _subsets(rules: set[str]) -> list[set[str]]:
    items = sorted(rules)
    return [{r for i, r in enumerate(items) if mask >> i & 1} for mask in range(1, 2 ** len(items))]


def cluster_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule that the run planned for the cluster (local rules left out)."""
    local = local_rules()
    assert {"all", "evaluate", "list_cohort"} <= local
    planned = job_stats(proc.stdout + proc.stderr)
    return {rule: n for rule, n in planned.items() if rule not in local}


def test_every_job_went_through_slurm_with_its_resources(tiny_on_slurm):
    _, proc, records, _ = tiny_on_slurm
    planned = cluster_jobs(proc)
    grouped = {rule for rules, _ in GROUPS.values() for rule in rules}
    # jobs of one rule: one SLURM job each
    single = Counter(rule_of(r["comment"]) for r in records if group_of(r) is None)
    assert dict(single) == {rule: n for rule, n in planned.items() if rule not in grouped}
    assert GPU_RULES - grouped <= set(single)
    for r in records:
        assert (r["state"], r["exit_code"]) == ("COMPLETED", "0:0"), r
        group = group_of(r)
        on_gpu = GROUPS[group][1] if group else rule_of(r["comment"]) in GPU_RULES
        if on_gpu:
            # The profile sends GPU rules to the GPU partition; SLURM granted one GPU, also
            # to a bundle of GPU jobs, which run one after another.
            assert (r["partition"], r["gpus"]) == ("gpu", 1), r
        else:
            assert (r["partition"], r["gpus"]) == ("cpu", 0), r


def test_bundles_make_fewer_slurm_jobs_than_jobs(tiny_on_slurm):
    _, proc, records, _ = tiny_on_slurm
    planned = cluster_jobs(proc)
    sizes = bundle_sizes()
    assert set(sizes) == set(GROUPS)
    bundles = Counter(group_of(r) for r in records if group_of(r) is not None)
    for group, (rules, _) in GROUPS.items():
        # one component per slide (toy slide and its tiling) or patient
        components = max(planned[rule] for rule in rules)
        assert bundles[group] == -(-components // sizes[group]), (group, records)
    n_jobs = sum(planned.values())
    assert len(records) < n_jobs
    print(f"SLURM jobs: {len(records)} for {n_jobs} jobs ({len(records) / n_jobs:.2f})")


def test_bundles_compute_what_single_jobs_compute(tiny_on_slurm):
    from csmil.encoders.featurestore import read_features
    from csmil.mil.phenotypes import read_phenotypes

    workdir, _, _, (single, proc, records) = tiny_on_slurm
    # bundles of one: every SLURM job of a group holds one slide (or patient) only
    planned = cluster_jobs(proc)
    bundles = Counter(group_of(r) for r in records if group_of(r) is not None)
    for group, (rules, _) in GROUPS.items():
        assert bundles[group] == max(planned[rule] for rule in rules), (group, records)
    (dataset,) = yaml.safe_load((workdir / "tiny-one-cohort.yaml").read_text())["datasets"]
    bundled, alone = workdir / "results" / dataset, single / "results" / dataset
    stores = sorted(p.name for p in (bundled / "features").glob("*.h5"))
    assert stores and stores == sorted(p.name for p in (alone / "features").glob("*.h5"))
    for name in stores:
        a, b = read_features(bundled / "features" / name), read_features(alone / "features" / name)
        np.testing.assert_array_equal(a.coords, b.coords)
        assert a.features.keys() == b.features.keys()
        for scale in a.features:
            np.testing.assert_array_equal(a.features[scale], b.features[scale], err_msg=name)
    tables = sorted(p.name for p in (bundled / "phenotypes").glob("*.tsv"))
    assert tables and tables == sorted(p.name for p in (alone / "phenotypes").glob("*.tsv"))
    for name in tables:
        pd.testing.assert_frame_equal(
            read_phenotypes(bundled / "phenotypes" / name),
            read_phenotypes(alone / "phenotypes" / name),
        )
