"""Every benchmark script starts: its imports resolve against the library and --help works
(the benchmarks run by hand, so nothing else notices when a library name they use moves).
Without a GPU the CUDA checks start and stop at once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_starts(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "argparse" in script.read_text():
        assert "usage" in proc.stdout.lower()
    else:  # cuda_checks.py takes no arguments and stops at once without a GPU
        assert "no CUDA device" in proc.stdout
