"""Planning cost of large cohorts: ``snakemake -n`` on a sample sheet of N slides.

For each N, a cohort of N slides (two slides per patient, a tenth of them pinned for encoder
pretraining) is written as a sample sheet of real paths to empty files (planning reads no
pixels), with a configuration that holds only that cohort (``config.yaml`` otherwise). A dry
run of the whole workflow is timed in a fresh process, with its peak resident memory
(``wait4``) and the number of jobs it planned. The table ends with the growth exponent between
two sizes, log(t2/t1) / log(N2/N1): 1 is linear, 2 quadratic.

    .venv/bin/python benchmarks/bench_dryrun.py --slides 1000 5000 10000

``--snakefile`` times another checkout's workflow (with ``PYTHONPATH=<checkout>/src`` for its
library), e.g. to compare against an earlier commit. ``--profile profiles/slurm`` plans as a
cluster run does, with the SLURM profile's job bundles (rule groups): Snakemake checks each
grouped job against everything upstream of it, which costs more than the plain dry run.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_cohort(workdir: Path, n_slides: int, slides_per_patient: int = 2) -> Path:
    """A sample sheet of ``n_slides`` empty slide files under ``workdir``; its path."""
    slides = workdir / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    lines = ["slide_id\tpatient_id\tpath\tlabel\tpretrain"]
    for i in range(n_slides):
        patient = i // slides_per_patient
        path = slides / f"s{i:06d}.svs"
        path.touch()
        pretrain = "true" if patient % 10 == 0 else "false"
        lines.append(f"s{i:06d}\tp{patient:06d}\t{path}\t{patient % 2}\t{pretrain}")
    sheet = workdir / "samples.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def write_config(workdir: Path, sheet: Path, base: Path) -> Path:
    """``base`` (config.yaml) with one dataset, the cohort of ``sheet``. The workflow's own
    ``configfile:`` is not in ``workdir``, so this file is the whole configuration."""
    config = yaml.safe_load(base.read_text())
    config["datasets"] = {"cohort": {"samples": str(sheet)}}
    path = workdir / "config.bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(snakefile: Path, workdir: Path, config: Path, profile: Path | None = None) -> dict:
    """One ``snakemake -n`` in a fresh process (with ``profile`` if given): seconds, peak RSS
    (MiB), jobs planned."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir)]
    cmd += ["--profile", str(profile)] if profile else ["--cores", "1"]
    cmd += ["--configfile", str(config), "-n"]
    log = workdir / "dryrun.log"
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{text[-3000:]}")
    totals = [line.split() for line in text.splitlines() if line.startswith("total")]
    return {
        "seconds": seconds,
        "peak_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "jobs": int(totals[-1][1]) if totals else -1,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--snakefile", type=Path, default=ROOT / "Snakefile")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--profile", type=Path, default=None, help="e.g. profiles/slurm")
    args = ap.parse_args(argv)

    base = args.snakefile.resolve().parent / "config.yaml"
    with tempfile.TemporaryDirectory(prefix="csmil-dryrun-", dir=args.workdir) as tmp:
        rows = []
        for n in sorted(args.slides):
            workdir = Path(tmp) / f"n{n}"
            workdir.mkdir()
            config = write_config(workdir, write_cohort(workdir, n), base)
            profile = args.profile.resolve() if args.profile else None
            timing = dry_run(args.snakefile.resolve(), workdir, config, profile)
            rows.append({"slides": n, **timing})

    profile = f", profile {args.profile}" if args.profile else ""
    print(f"snakemake -n, {args.snakefile}{profile}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'slides':>8} {'jobs':>8} {'seconds':>8} {'peak MiB':>9} {'ms/slide':>9} {'growth':>7}")
    for prev, row in zip([None, *rows], rows, strict=False):
        growth = ""
        if prev is not None and row["slides"] != prev["slides"]:
            ratio = math.log(row["seconds"] / prev["seconds"])
            growth = f"{ratio / math.log(row['slides'] / prev['slides']):.2f}"
        print(
            f"{row['slides']:>8} {row['jobs']:>8} {row['seconds']:>8.1f} {row['peak_mib']:>9.0f}"
            f" {1000 * row['seconds'] / row['slides']:>9.2f} {growth:>7}"
        )


if __name__ == "__main__":
    main()
