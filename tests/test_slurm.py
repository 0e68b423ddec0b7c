"""The workflow on a real scheduler: `snakemake --profile profiles/slurm` against a private
single-node SLURM (tests/slurm_cluster.py) booted by the test, with fake GPUs.

Two clusters: one with accounting (slurmdbd + MariaDB, so the SLURM executor plugin polls
with its default, sacct) runs the tiny workflow; one without accounting runs a two-rule
workflow the way the profile's comments tell clusters without slurmdbd to (squeue status
queries) and clusters that want ``--gres=gpu:1`` instead of ``--gpus=1``.

The profile is used as shipped except for the polling interval (2 s instead of 40 s: one
idle node answers at once). The tiny configuration is cut to its first cohort and two methods:
every rule and every GPU rule still runs, with 37 SLURM jobs instead of 87.
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


@pytest.fixture(scope="module")
def tiny_on_slurm(tmp_path_factory):
    # Four CPU slots and two GPUs, even on a 2-core machine: most of a short job's time is
    # Python start-up and status polling, which overlap well.
    cluster = _boot(accounting=True, gpus=2, cpus=4)
    workdir = tmp_path_factory.mktemp("tiny-slurm")
    config = tiny_one_cohort(workdir / "tiny-one-cohort.yaml")
    try:
        proc = snakemake_on(cluster, workdir, ROOT / "Snakefile", "--configfile", str(config))
        assert proc.returncode == 0, _failure(proc, workdir, cluster)
        records = cluster.jobs()
    finally:
        _shutdown(cluster)
    return workdir, proc, records


def test_tiny_workflow_completes_on_slurm(tiny_on_slurm):
    workdir, _, _ = tiny_on_slurm
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
    """The rules the Snakefile lists under ``localrules:`` (they run on the submitting node)."""
    text = (ROOT / "Snakefile").read_text()
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?[ \t]*\n)+)", text, re.MULTILINE)
    assert block, "the Snakefile declares no localrules"
    return {name.strip().rstrip(",") for name in block.group(1).split()}


def test_every_job_went_through_slurm_with_its_resources(tiny_on_slurm):
    _, proc, records = tiny_on_slurm
    planned = job_stats(proc.stdout + proc.stderr)
    local = local_rules()
    assert "all" in local and "evaluate" in local
    # local rules (the target rule and the seconds-long ones) run on the submitting node
    planned = {rule: n for rule, n in planned.items() if rule not in local}
    ran = Counter(rule_of(r["comment"]) for r in records)
    assert dict(ran) == planned
    assert GPU_RULES <= set(ran)
    for r in records:
        rule = rule_of(r["comment"])
        assert (r["state"], r["exit_code"]) == ("COMPLETED", "0:0"), r
        if rule in GPU_RULES:
            # The profile sends GPU rules to the GPU partition; SLURM granted one GPU.
            assert (r["partition"], r["gpus"]) == ("gpu", 1), r
        else:
            assert (r["partition"], r["gpus"]) == ("cpu", 0), r
