"""Results do not depend on how many cores a job is given.

On the CPU, parallel kernels split their sums by thread, so the low-order bits of a result
follow the number of threads, and training amplifies them: before the compute threads were
fixed per kind of job (``csmil.runtime.COMPUTE_THREADS``), a run with ``--cores 1`` (which
scales the encoder and embedding jobs down to one thread) and one with ``--cores 2`` gave
different encoders and from there different tables. Each test gives a step different job
threads and asserts byte-identical outputs; the slow test runs the tiny workflow twice.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from csmil import SCALES
from csmil.encoders.training import SimSiamSettings, train_simsiam
from csmil.mil.bags import PatientBags
from csmil.mil.phenotypes import kmeans_labels
from csmil.mil.training import TrainSettings, train_fold
from csmil.runtime import COMPUTE_THREADS, set_compute_threads
from csmil.slides.patchstore import PatchStoreWriter

ROOT = Path(__file__).resolve().parents[1]
DIM = 960  # the tiny run's feature size: matrix products and reductions use several threads


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Each test may change torch's thread count; give the next test the one it had."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cohort(n_patients=12, seed=0):
    """Patients of 30-60 patches in 4 clusters; positive ones have shifted features."""
    rng = np.random.default_rng(seed)
    patients, rows = [], []
    for i in range(n_patients):
        pid, label, n = f"P{i:02d}", i % 2, int(rng.integers(30, 61))
        feats = {s: rng.normal(label * 0.3, 1.0, size=(n, DIM)).astype(np.float32) for s in SCALES}
        clusters = rng.integers(0, 4, size=n).astype(np.int64)
        slides = np.full(n, f"{pid}_s0", dtype=object)
        patients.append(
            PatientBags(pid, label, feats, clusters, slides, np.arange(n), {f"{pid}_s0": n})
        )
        rows.append((pid, label, (i // 2) % 3))
    return patients, pd.DataFrame(rows, columns=["patient_id", "label", "fold"])


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def test_compute_threads_are_fixed_per_kind_whatever_the_job_has():
    for kind, n in COMPUTE_THREADS.items():
        for job_threads in (None, 1, 3):
            torch.set_num_threads(n + 1)
            assert set_compute_threads(kind, job_threads) == n
            assert torch.get_num_threads() == n
    with pytest.raises(ValueError, match=r"kind must be one of \['clustering'"):
        set_compute_threads("tiling")


def test_mil_fold_gives_identical_files_for_one_and_two_job_threads(tmp_path):
    patients, splits = cohort()
    # the default run's bags and standardisation; with them, one and two torch threads gave
    # different predictions and attention before the threads were fixed
    settings = TrainSettings(
        epochs=8, n_test_bags=20, n_clusters=4, bag_mode="naive", standardise=True
    )
    outputs = []
    for job_threads in (1, 2):
        out = tmp_path / f"threads{job_threads}"
        torch.set_num_threads(job_threads)  # what the job's process started with
        train_fold(patients, splits, 0, "csmil", settings=settings, out_dir=out, seed=7,
                   num_threads=job_threads)  # fmt: skip
        assert torch.get_num_threads() == COMPUTE_THREADS["mil"]
        outputs.append(digest(out / "predictions.tsv", out / "attention.tsv"))
    assert outputs[0] == outputs[1]


def write_store(path: Path, n: int, px: int, seed: int) -> Path:
    """A patch store of ``n`` noisy colour patches of ``px`` pixels at every scale."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, size=(n, 1, 1, 3))
    patches = {
        s: np.clip(base + rng.normal(0, 30, size=(n, px, px, 3)), 0, 255).astype(np.uint8)
        for s in SCALES
    }
    coords = np.stack([np.arange(n) * 256, np.zeros(n, np.int64)], 1)
    with PatchStoreWriter(path, patch_px=px, attrs={"slide_id": path.stem}) as w:
        w.append(coords, patches)
    return path


def test_simsiam_weights_are_identical_for_one_and_two_job_threads(tmp_path):
    stores = [write_store(tmp_path / "a.h5", 24, 32, 1), write_store(tmp_path / "b.h5", 24, 32, 2)]
    settings = SimSiamSettings(
        epochs=1, batch_size=16, max_patches=48, warmup_epochs=0, schedule_epochs=None,
        layers=("layer1", "layer2", "layer3", "layer4"), seed=3,
    )  # fmt: skip
    weights = []
    for job_threads in (1, 2):
        out = tmp_path / f"enc{job_threads}.pt"
        train_simsiam(stores, "20x", out, settings, device="cpu", num_threads=job_threads)
        assert torch.get_num_threads() == COMPUTE_THREADS["encoder"]
        state = torch.load(out, weights_only=True)["state_dict"]
        weights.append({k: v.numpy().tobytes() for k, v in state.items()})
    assert weights[0].keys() == weights[1].keys()
    differ = [k for k in weights[0] if weights[0][k] != weights[1][k]]
    assert not differ, f"weights differ in {differ[:5]}"


def test_kmeans_runs_on_the_clustering_threads_whatever_the_job_allows(monkeypatch):
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    fit_predict = KMeans.fit_predict

    def spy(self, x, *args, **kwargs):
        seen.append({p["user_api"]: p["num_threads"] for p in threadpool_info()})
        return fit_predict(self, x, *args, **kwargs)

    monkeypatch.setattr(KMeans, "fit_predict", spy)
    x = np.random.default_rng(0).normal(size=(400, 8))
    with threadpool_limits(2):  # the job's OMP_NUM_THREADS, say
        labels = kmeans_labels(x, 4, seed=0)
    assert len(labels) == 400 and set(labels) == {0, 1, 2, 3}
    assert seen and set(seen[0].values()) == {COMPUTE_THREADS["clustering"]}


@pytest.mark.slow
def test_workflow_tables_are_identical_with_one_and_two_cores(tmp_path):
    """The tiny workflow (two methods) run with --cores 1 and with --cores 2: every table but
    Table 6 (timings), every fold's predictions and attention and the evaluation files are
    byte-identical."""
    overlay = tmp_path / "two_methods.yaml"
    overlay.write_text("mil:\n  methods: [csmil, deepattnmisl_20x]\n")
    env = {**os.environ, "CSMIL_NO_PROGRESS": "1"}
    runs = {}
    for cores in (1, 2):
        workdir = tmp_path / f"cores{cores}"
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d",
               str(workdir), "--configfile", str(ROOT / "config.yaml"),
               str(ROOT / "tests" / "config" / "tiny.yaml"), str(overlay),
               "--cores", str(cores), "--scheduler", "greedy"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=workdir.parent, env=env, capture_output=True, text=True,
                              timeout=2400)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        results = workdir / "results"
        files = [*results.glob("tables/*"), *results.glob("*/mil/*/fold*/predictions.tsv"),
                 *results.glob("*/mil/*/fold*/attention.tsv"), *results.glob("*/mil/*/*.tsv"),
                 *results.glob("*/compare.tsv")]  # fmt: skip
        # Table 6 reports measured seconds and memory: the one table that may differ
        runs[cores] = {
            str(p.relative_to(workdir)): digest(p)[0] for p in files if "table6" not in p.name
        }
    assert {"results/tables/table5.csv", "results/tables/table1.csv"} <= runs[1].keys()
    assert runs[1].keys() == runs[2].keys()
    differ = sorted(k for k in runs[1] if runs[1][k] != runs[2][k])
    assert not differ, f"differ between --cores 1 and --cores 2: {differ}"
