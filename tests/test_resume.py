"""SimSiam training resumes after its process is killed: a real SIGKILL part-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_simsiam import make_store

from csmil.encoders.simsiam import load_encoder
from csmil.encoders.training import SimSiamSettings, resume_path, train_simsiam

SETTINGS = dict(epochs=8, batch_size=8, max_patches=16, warmup_epochs=1, schedule_epochs=None)

SCRIPT = textwrap.dedent(
    """
    import sys
    from csmil.encoders.training import SimSiamSettings, train_simsiam
    stores, out = sys.argv[1:-1], sys.argv[-1]
    settings = SimSiamSettings(seed=5, **{settings})
    print(train_simsiam(stores, "20x", out, settings, device="cpu", num_threads=1))
    """
)


def run_training(stores, out):
    return train_simsiam(stores, "20x", out, SimSiamSettings(seed=5, **SETTINGS), device="cpu",
                         num_threads=1)  # fmt: skip


def saved_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return [make_store(d / "a.h5", 24, seed=1), make_store(d / "b.h5", 16, seed=2)]


def test_killed_training_resumes_from_saved_epoch(stores, tmp_path):
    out = tmp_path / "enc" / "20x.pt"
    state = resume_path(out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CSMIL_NO_PROGRESS": "1"}
    script = SCRIPT.replace("{settings}", repr(SETTINGS))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, stores), str(out)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while saved_epoch(state) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, log  # killed, not finished
    killed_at = saved_epoch(state)
    assert 2 <= killed_at < SETTINGS["epochs"] and not out.exists()

    summary = run_training(stores, out)
    assert summary["resumed_from_epoch"] >= killed_at
    assert not state.exists()  # removed once the checkpoint is written
    net, meta = load_encoder(out)
    assert meta["kind"] == "simsiam-encoder" and meta["config"]["epochs"] == SETTINGS["epochs"]
    hist = (out.parent / "20x.history.tsv").read_text().splitlines()
    assert len(hist) == 1 + SETTINGS["epochs"]

    # the same weights as a run that was never interrupted
    whole = run_training(stores, tmp_path / "whole" / "20x.pt")
    assert whole["resumed_from_epoch"] == 0
    assert whole["encoder_id"] == summary["encoder_id"]


def test_resume_state_of_other_settings_is_refused(stores, tmp_path):
    out = tmp_path / "20x.pt"
    quick = {**SETTINGS, "epochs": 2}
    train_simsiam(stores, "20x", out, SimSiamSettings(seed=5, **quick), num_threads=1)
    assert not resume_path(out).exists()
    # leave a state behind: stop the run with a signal during its second epoch
    from csmil.encoders import training

    real = training.save_state

    def save_then_signal(path, run, epoch, *args):
        real(path, run, epoch, *args)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    training.save_state = save_then_signal
    try:
        with pytest.raises(training.TrainingInterrupted, match="re-run the job to resume"):
            train_simsiam(stores, "20x", out, SimSiamSettings(seed=5, **quick), num_threads=1)
    finally:
        training.save_state = real
    assert saved_epoch(resume_path(out)) == 1
    with pytest.raises(ValueError, match="other settings or patch stores.*delete it"):
        train_simsiam(stores, "20x", out, SimSiamSettings(seed=6, **quick), num_threads=1)
    # a store written again at the same path (re-tiled) is another store
    before = os.stat(stores[1])
    os.utime(stores[1], ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    try:
        with pytest.raises(ValueError, match="other settings or patch stores.*delete it"):
            train_simsiam(stores, "20x", out, SimSiamSettings(seed=5, **quick), num_threads=1)
    finally:
        os.utime(stores[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    done = train_simsiam(stores, "20x", out, SimSiamSettings(seed=5, **quick), num_threads=1)
    assert done["resumed_from_epoch"] == 1 and not resume_path(out).exists()
