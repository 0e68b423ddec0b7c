import sys

import numpy as np
import pytest
import torch

from csmil.runtime import TrainingMemory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


@linux
def test_training_memory_counts_what_comes_after_start_only():
    before = np.ones(96 * 2**20 // 8)  # 96 MB touched and freed before training starts
    del before
    memory = TrainingMemory(torch.device("cpu")).start()
    assert memory.kind == "cpu"
    assert memory.peak_mb() < 32  # the earlier peak is not counted
    during = np.ones(64 * 2**20 // 8)  # 64 MB during training
    peak = memory.peak_mb()
    del during
    assert 60 <= peak < 96
    assert memory.peak_mb() == pytest.approx(peak, abs=1)  # a peak stays after the free


def test_training_memory_on_cuda_names_its_kind():
    assert TrainingMemory(torch.device("cuda")).kind == "cuda"
    assert TrainingMemory("cpu").kind == "cpu"
