"""Runtime plumbing: logging set-up, progress bars, device choice, seeding, compute threads,
training memory, version record."""

from __future__ import annotations

import logging
import os
import platform
import random
import sys
from collections.abc import Iterable
from typing import TypeVar

import numpy as np

T = TypeVar("T")
log = logging.getLogger("csmil")


def setup_logging(logfile: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``logfile`` (Snakemake's ``log:`` file)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm progress bar that animates on a terminal and logs sparse lines otherwise.

    In a job whose stderr is a log file, carriage-return updates would fill the file, so there
    the bar only prints about every 10% (``mininterval`` of 30 s). ``CSMIL_NO_PROGRESS=1``
    turns bars off.
    """
    if os.environ.get("CSMIL_NO_PROGRESS") == "1":
        return iterable  # no bar at all (and no tqdm import)
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=sys.stderr,
        dynamic_ncols=interactive,
        mininterval=0.2 if interactive else 30.0,
        ascii=not interactive,
        disable=os.environ.get("CSMIL_NO_PROGRESS") == "1",
    )


def select_device(prefer: str = "auto"):
    """Return a torch device: CUDA when available (inside a job, the one granted by
    ``CUDA_VISIBLE_DEVICES``), else CPU. ``prefer`` may force ``"cpu"`` or ``"cuda"``.
    """
    import torch

    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {prefer!r}")
    if prefer == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if prefer == "cuda":
        raise RuntimeError(
            "device='cuda' was requested but no CUDA device is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return torch.device("cpu")


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch; return a NumPy generator for local use."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


#: torch intra-op threads per kind of computation. On the CPU, parallel kernels (convolution
#: and matrix-product gradients, reductions, k-means updates) split their sums by thread, so
#: the low-order bits of a result follow the number of threads, and training amplifies them.
#: The number is therefore fixed per kind here, not taken from the job's cores: a job given
#: fewer cores (``--cores 1``, a smaller SLURM allocation) computes the same numbers, more
#: slowly; cores beyond it go to reading and decoding patches. Changing a value changes the
#: workflow's numbers (not its conclusions). Embedding computes on one thread: its jobs are
#: short and run side by side, and two jobs of two threads each oversubscribe a 2-core machine
#: (three toy slides took 5.1 s on two threads and 2.9 s on one while another job ran; the
#: features differ in the last bits: 18 of the default run's 384 feature arrays, by at most
#: 4e-7). On a GPU the threads only matter for decoding, which takes the job's cores.
COMPUTE_THREADS: dict[str, int] = {"encoder": 2, "embedding": 1, "mil": 1, "clustering": 1}


def set_compute_threads(kind: str, job_threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``COMPUTE_THREADS[kind]`` and return that number.

    ``job_threads`` (the cores the job was given) does not change it; when it is smaller, the
    extra threads share the job's cores (logged).
    """
    import torch

    if kind not in COMPUTE_THREADS:
        raise ValueError(f"kind must be one of {sorted(COMPUTE_THREADS)}, got {kind!r}")
    n = COMPUTE_THREADS[kind]
    torch.set_num_threads(n)
    if job_threads and 0 < int(job_threads) < n:
        log.info(
            "%s: %d compute threads on %d core(s); results do not depend on the cores",
            kind, n, int(job_threads),
        )  # fmt: skip
    return n


_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``), MB; NaN where there is none."""
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class TrainingMemory:
    """The memory a stretch of training takes, measured from :meth:`start` on.

    On CUDA: ``torch.cuda.max_memory_allocated`` since its peak was reset at :meth:`start`
    (the model, its gradients and optimiser state, activations; what the paper reports). On
    the CPU: the peak resident set above the process's level at :meth:`start`, which excludes
    the interpreter, torch and the loaded features. Linux resets the peak (``VmHWM``) when "5"
    is written to /proc/self/clear_refs; where that is not possible the CPU figure is NaN and
    readers fall back to the job's whole peak RSS. :attr:`kind` is ``"cuda"`` or ``"cpu"``.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.kind = "cuda" if getattr(device, "type", str(device)) == "cuda" else "cpu"
        self._base = float("nan")

    def start(self) -> TrainingMemory:
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open(_CLEAR_REFS, "w") as fh:
                fh.write("5")
        except OSError:
            return self  # the peak cannot be reset: NaN, as before start
        self._base = status_mb("VmRSS")
        return self

    def peak_mb(self) -> float:
        """Peak since :meth:`start`, MB (NaN where it cannot be measured)."""
        if self.kind == "cuda":
            import torch

            return torch.cuda.max_memory_allocated(self.device) / 2**20
        grown = status_mb("VmHWM") - self._base
        return max(grown, 0.0) if np.isfinite(grown) else float("nan")


def versions() -> dict[str, str]:
    """Versions of the packages that decide results, stored in every checkpoint."""
    import h5py
    import sklearn
    import torch

    from csmil import __version__

    return {
        "csmil": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": str(torch.__version__),
        "scikit-learn": sklearn.__version__,
        "h5py": h5py.__version__,
    }
