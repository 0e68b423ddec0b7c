"""Crash safety: a job killed mid-run leaves nothing that a re-run trusts.

A node crash is simulated by SIGKILL to Snakemake's whole process group (Snakemake and the
job it runs) as soon as a job of one kind is seen running: a writer's temporary file or one of
its outputs appears (the later, harder moment), or, on a retry, its log file appears. After
each kill:

* every file under ``results/`` that has an output's name is whole: byte-identical to the
  same file of a clean, uninterrupted run (a ``.pt`` equal once loaded, a training history
  equal but for its ``seconds``). csmil writes every output to a temporary file and renames it
  (csmil.io.atomic_path), so that not even a run outside Snakemake (the csmil command line,
  ``csmil qc``) meets a torn file; a writer that wrote in place fails here;
* the killed job is planned again by ``snakemake -n --rerun-incomplete`` (as the profiles
  run), for its outputs are missing or, where some were written, marked incomplete (and the
  first time that happens, a dry run without ``--rerun-incomplete`` must refuse to run);
* if the kill came after the job had finished, the round is tried again, forcing the kind
  and killing sooner: the test fails rather than pass without having caught a job.

The kinds are killed in pipeline order in one working folder (after ``snakemake --unlock``,
which a killed run needs), then a last run completes and every result equals the clean run's.
The settings are the tiny ones on one toy cohort and one method, the target Table 5.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from csmil.config import load_config
from csmil.mil.results import MEMORY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
DATASET, GROUP, METHOD = "micro", "toy", "csmil"
TARGET = "results/tables/table5.csv"
N_PATIENTS = 4  # two pretraining slides; three folds of 2, 1 and 1 patients
TIMEOUT_S = 600  # one Snakemake call
POLL_S = 0.05

pytestmark = pytest.mark.slow

# Each kind of job that writes outputs, in pipeline order, with the names of its outputs
# (globs under the working folder). A writer's temporary file is ".<name>.<random>.tmp"
# beside the output (csmil.io.atomic_path); the encoder's resume state (X.resume.pt) matches
# "*.pt" too.
KINDS = {
    "tile_slide": [f"results/{DATASET}/patches/*.h5"],
    "train_encoder": [f"results/encoders/{GROUP}/*.pt", f"results/encoders/{GROUP}/*.tsv"],
    "embed_slide": [f"results/{DATASET}/features/*.h5"],
    "cluster_patient": [f"results/{DATASET}/phenotypes/*.tsv"],
    "make_splits": [f"results/{DATASET}/splits*.tsv"],
    "train_mil": [f"results/{DATASET}/mil/{METHOD}/fold*/*"],
    "table5": ["results/tables/table5.*"],
}
# What fires the kill, attempt by attempt: a new output or temporary file of the kind (the job
# is writing), then its log file (the job has just started).
TRIGGERS = ("output", "output", "log", "log")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


@dataclass
class Job:
    rule: str
    output: list[str]
    log: list[str]
    reason: str


JOB_HEADER = re.compile(r"^( *)(?:local)?rule (\w+):$")


def parse_jobs(text: str) -> list[Job]:
    """The jobs a Snakemake (dry-)run prints: rule, outputs, logs and reason of each (a job of
    a group job is printed indented)."""
    jobs, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        header = JOB_HEADER.match(lines[i])
        i += 1
        if not header:
            continue
        indent, fields = len(header.group(1)), {}
        while i < len(lines) and lines[i].strip():
            line = lines[i]
            if len(line) - len(line.lstrip()) <= indent:
                break
            key, _, value = line.strip().partition(": ")
            fields[key] = value
            i += 1
        # a path may carry a flag: "results/x.tsv (update)"
        output, log = (
            [re.sub(r" \(\w+\)$", "", p) for p in fields[k].split(", ")] if fields.get(k) else []
            for k in ("output", "log")
        )
        jobs.append(Job(header.group(2), output, log, fields.get("reason", "")))
    return jobs


def snakemake_cmd(config: Path, *args: str, rerun_incomplete: bool = True) -> list[str]:
    # The target goes first: an option that takes several values (--forcerun) would take a
    # target after it as one of its values, and Snakemake would run the whole workflow.
    return [
        sys.executable, "-m", "snakemake", TARGET, "-s", str(ROOT / "Snakefile"),
        "--configfile", str(config), "--cores", "2",
        *(["--rerun-incomplete"] if rerun_incomplete else []), *args,
    ]  # fmt: skip


ENV = {**os.environ, "CSMIL_NO_PROGRESS": "1"}


def snakemake(workdir: Path, config: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(config, "-d", str(workdir), *args, **kw)
    return subprocess.run(
        cmd, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def run_ok(workdir: Path, config: Path, *args: str) -> str:
    proc = snakemake(workdir, config, *args)
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def dry_run(workdir: Path, config: Path) -> list[Job]:
    return parse_jobs(run_ok(workdir, config, "--dry-run"))


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """The tiny settings on one toy cohort (of four patients) and one method."""
    settings = load_config(ROOT / "config.yaml", TINY)
    settings["datasets"] = {DATASET: settings["datasets"][DATASET]}
    settings["datasets"][DATASET]["toy"]["n_patients"] = N_PATIENTS
    settings["mil"]["methods"] = [METHOD]
    path = tmp_path_factory.mktemp("crash") / "crash.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def clean(config) -> tuple[Path, dict[str, Job]]:
    """A clean run of the target: its folder and its jobs by log file."""
    workdir = config.parent / "clean"
    workdir.mkdir()
    jobs = {log: job for job in parse_jobs(run_ok(workdir, config)) for log in job.log}
    assert {job.rule for job in jobs.values()} >= set(KINDS)
    return workdir, jobs


# ---------------------------------------------------------------- comparing with the clean run


def same_object(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(same_object(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_object, a, b))
    return a == b


def same_file(path: Path, reference: Path) -> bool:
    """Whether a file holds what the clean run's does: a checkpoint (whose zip archive is named
    after its temporary file) once loaded, a training history but for the seconds and memory it
    took."""
    if path.suffix == ".pt":
        return same_object(
            torch.load(path, weights_only=True), torch.load(reference, weights_only=True)
        )
    if path.name.endswith("history.tsv"):  # seconds and memory are measured, not computed
        measured = ["seconds", *MEMORY_COLUMNS.values()]
        tables = [
            pd.read_csv(p, sep="\t").drop(columns=measured, errors="ignore")
            for p in (path, reference)
        ]
        return tables[0].equals(tables[1])
    return path.read_bytes() == reference.read_bytes()


def unsound_outputs(workdir: Path, reference: Path) -> list[str]:
    """Files under an output's name in ``workdir``/results that differ from the clean run's or
    do not load (Snakemake's benchmark files, timings, are left out)."""
    problems = []
    for path in sorted((workdir / "results").rglob("*")):
        rel = path.relative_to(workdir)
        if path.is_dir() or is_temp(path) or rel.parts[1] == "benchmarks":
            continue
        try:
            if path.name.endswith(".resume.pt"):  # the encoder's state after an epoch
                ok = torch.load(path, weights_only=True)["kind"] == "simsiam-resume"
            else:
                ok = (reference / rel).exists() and same_file(path, reference / rel)
        except Exception as err:  # noqa: BLE001 - a torn file may fail in any way
            problems.append(f"{rel}: does not load ({type(err).__name__}: {err})")
            continue
        if not ok:
            problems.append(f"{rel}: not whole (not the clean run's file)")
    return problems


# ---------------------------------------------------------------- crashing a run


def stamps(paths) -> dict[Path, tuple[int, int]]:
    out = {}
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out[p] = (st.st_ino, st.st_mtime_ns)
    return out


def kind_files(workdir: Path, kind: str) -> list[Path]:
    """Outputs of a kind and the temporary files of their writers."""
    found = []
    for pattern in KINDS[kind]:
        folder, name = pattern.rsplit("/", 1)
        found += workdir.glob(pattern)
        found += workdir.glob(f"{folder}/.{name}.*.tmp")
    return found


def changed(before: dict, now: dict) -> list[Path]:
    return [p for p, stamp in now.items() if before.get(p) != stamp]


def unlock(workdir: Path) -> None:
    """What ``snakemake --unlock`` does (without its seconds of start-up): a killed run leaves
    its lock, and the next run refuses to start."""
    locks = workdir / ".snakemake" / "locks"
    if locks.exists():
        shutil.rmtree(locks)


def run_and_kill(workdir: Path, config: Path, extra: list[str], fired, out: Path) -> float:
    """Start Snakemake in its own process group, SIGKILL the group once ``fired()``; return
    the seconds it ran. Fails if the run ends before."""
    cmd = snakemake_cmd(config, "-d", str(workdir), *extra)
    start = time.monotonic()
    with out.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=ENV, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            while not fired():
                if proc.poll() is not None or time.monotonic() - start > TIMEOUT_S:
                    pytest.fail(
                        f"the run ended (rc {proc.returncode}) before the kill:\n"
                        + out.read_text()[-4000:]
                    )
                time.sleep(POLL_S)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            gone_by = time.monotonic() + 10
            while time.monotonic() < gone_by:  # the group's jobs dead too
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(POLL_S)
    return time.monotonic() - start


def crash_round(workdir, config, clean, kind, trigger, plan, n):
    """Kill a run while a job of ``kind`` runs; return the jobs the kill interrupted (planned
    again by the dry run that follows), how many of them had written outputs, the new plan
    and a line for the summary."""
    reference, clean_jobs = clean
    logs = [workdir / log for log, job in clean_jobs.items() if job.rule == kind]
    logs_before, files_before = stamps(logs), stamps(kind_files(workdir, kind))

    def fired() -> bool:
        if trigger == "log":
            return bool(changed(logs_before, stamps(logs)))
        return bool(changed(files_before, stamps(kind_files(workdir, kind))))

    # A kind whose jobs all finished in an earlier round (a kill that came late) is forced.
    extra = [] if any(job.rule == kind for job in plan) else ["--forcerun", kind]
    unlock(workdir)
    seconds = run_and_kill(workdir, config, extra, fired, workdir / f"run{n}.{kind}.out")
    on_disk = sorted({str(p.relative_to(workdir)) for p in kind_files(workdir, kind)})
    started = {str(p.relative_to(workdir)) for p in changed(logs_before, stamps(logs))}

    plan = dry_run(workdir, config)
    problems = unsound_outputs(workdir, reference)
    assert not problems, f"after a kill at {kind}:\n" + "\n".join(problems)
    planned = {log: job for job in plan for log in job.log}
    interrupted = [planned[log] for log in sorted(started) if log in planned]
    for log in started - planned.keys():  # finished before the kill: every output there
        missing = [o for o in clean_jobs[log].output if not (workdir / o).exists()]
        assert not missing, f"{log}: not planned again, yet {missing} are missing"
    written, whole = 0, 0  # interrupted jobs with some, with all of their outputs written
    for job in interrupted:
        assert job.rule == kind, job
        present = [o for o in job.output if (workdir / o).exists()]
        if present:  # Snakemake's incomplete marker: re-run whatever is missing
            assert job.reason.startswith("Forced execution"), job
            written += 1
            whole += len(present) == len(job.output)
        else:
            assert job.reason.startswith("Missing output files"), job
    summary = (
        f"{kind}: try {n} ({trigger}{', forced' if extra else ''}) killed after {seconds:.1f} s,"
        f" {len(started)} started, {len(interrupted)} interrupted"
        f" ({written} with outputs written, {whole} with all), on disk: {on_disk}"
    )
    return interrupted, written, plan, summary


def test_a_killed_job_is_rerun_and_the_results_are_the_clean_runs(config, clean, tmp_path):
    reference, clean_jobs = clean
    workdir = tmp_path / "crashed"
    workdir.mkdir()
    plan = list(clean_jobs.values())  # a new folder: every job to run
    report, refused = [], False
    for kind in KINDS:
        for n, trigger in enumerate(TRIGGERS, start=1):
            interrupted, written, plan, summary = crash_round(
                workdir, config, clean, kind, trigger, plan, n
            )
            report.append(summary)
            print(summary, flush=True)
            if written and not refused:  # once: the same for every kind
                proc = snakemake(workdir, config, "--dry-run", rerun_incomplete=False)
                text = proc.stdout + proc.stderr
                assert proc.returncode != 0 and "seem to be incomplete" in text, text[-3000:]
                refused = True
            if interrupted:
                break
        else:
            pytest.fail(f"no {kind} job was caught running:\n" + "\n".join(report))
    print(f"refused without --rerun-incomplete: {'checked' if refused else 'not met'}")

    run_ok(workdir, config, "--unlock")
    run_ok(workdir, config)
    assert "Nothing to be done" in run_ok(workdir, config, "--dry-run")
    assert not unsound_outputs(workdir, reference)
    expected = {out for job in clean_jobs.values() for out in job.output}
    assert len(expected) >= 4 * N_PATIENTS + 6 + 4 * 3
    assert sorted(out for out in expected if not (workdir / out).exists()) == []
    assert not list((workdir / "results").rglob("*.resume.pt"))
    assert not list((workdir / ".snakemake" / "incomplete").iterdir())
    assert pd.read_csv(workdir / TARGET)["method"].tolist() == [METHOD]
