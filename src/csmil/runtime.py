"""Runtime plumbing: logging set-up, progress bars, device choice, seeding, version record."""

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


def set_threads(n: int | None) -> None:
    """Limit torch's intra-op threads to the job's ``threads`` (no oversubscription)."""
    import torch

    if n and n > 0:
        torch.set_num_threads(int(n))


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
