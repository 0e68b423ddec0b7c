"""The tables one fold's training writes: ``history.tsv``, ``predictions.tsv``, ``attention.tsv``.

This module names their columns and reads and writes them; training writes them and
evaluation, reporting and prediction read them only through here.

* ``history.tsv`` (:data:`HISTORY_COLUMNS`): one row per epoch; ``train_loss`` and
  ``val_loss`` are mean bag NLLs (``val_loss`` NaN without validation patients), ``seconds`` the
  epoch's wall time, ``best`` marks the selected epoch; then one of :data:`MEMORY_COLUMNS`, the
  training memory so far (CUDA max allocated, or on the CPU the peak resident set above the
  level before training), which differs from run to run like ``seconds``. For folds trained
  together as one stacked model (:mod:`csmil.mil.foldbatch`) both are the fold's share: the
  stacked epoch's time and memory divided by the number of folds.
* ``predictions.tsv`` (:data:`PREDICTION_COLUMNS`): one row per test patient; ``prob`` is the
  mean probability over the test bags (``prob_median``, ``prob_max`` their median and maximum),
  ``n_patches`` the patient's patch count.
* ``attention.tsv`` (:data:`ATTENTION_COLUMNS`): one row per sampled test patch (keyed by
  :data:`ATTENTION_KEYS` within a patient), each attention averaged over the ``n_bags`` bags the
  patch was in; NaN where the model has no such attention.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from csmil import SCALES
from csmil.io import read_tsv, write_tsv

HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "seconds", "best")
#: The training-memory column a history has after :data:`HISTORY_COLUMNS`, by device
#: (:class:`csmil.runtime.TrainingMemory`): the peak so far at each epoch's end, MB.
MEMORY_COLUMNS: dict[str, str] = {
    "cuda": "cuda_max_allocated_mb",
    "cpu": "cpu_rss_above_start_mb",
}
PREDICTION_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "label",
    "fold",
    "prob",
    "prob_median",
    "prob_max",
    "n_patches",
)
#: Prediction columns every reader needs (pooling, comparison, labels of attention rows).
PREDICTION_REQUIRED: tuple[str, ...] = PREDICTION_COLUMNS[:4]
#: What identifies a patch within a slide.
ATTENTION_KEYS: tuple[str, ...] = ("slide_id", "patch_index")
#: Scale -> column of that scale's cross-scale attention weight.
SCALE_ATTENTION: dict[str, str] = {s: f"scale_{s}" for s in SCALES}
#: The attention values: the instance attention, then one weight per scale in ``SCALES`` order.
ATTENTION_VALUES: tuple[str, ...] = ("instance", *SCALE_ATTENTION.values())
ATTENTION_COLUMNS: tuple[str, ...] = ("patient_id", *ATTENTION_KEYS, "n_bags", *ATTENTION_VALUES)
#: Attention columns every reader needs.
ATTENTION_REQUIRED: tuple[str, ...] = ("patient_id", *ATTENTION_KEYS, "instance")


def _require(df: pd.DataFrame, columns: Sequence[str], path, what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; is it {what}?")
    return df


def write_history(history: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a training history (:data:`HISTORY_COLUMNS`) atomically."""
    write_tsv(history, path)


def read_history(path: str | os.PathLike) -> pd.DataFrame:
    """A training history; at least ``epoch`` and ``seconds`` (extra columns, such as a GPU
    memory record, are kept)."""
    return _require(read_tsv(path), ("epoch", "seconds"), path, "a history.tsv")


def predictions_table(
    patient_ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    fold: int,
    probs: np.ndarray,
    n_patches: Sequence[int],
) -> pd.DataFrame:
    """A fold's predictions (:data:`PREDICTION_COLUMNS`) from each test patient's bag
    probabilities ``probs`` (P, n_bags): their mean, median and maximum (0 without bags)."""
    return pd.DataFrame(
        {
            "patient_id": list(patient_ids),
            "label": labels,
            "fold": int(fold),
            "prob": probs.mean(axis=1),
            "prob_median": np.median(probs, axis=1),
            "prob_max": probs.max(axis=1, initial=0.0),
            "n_patches": list(n_patches),
        },
        columns=list(PREDICTION_COLUMNS),
    )


def write_predictions(predictions: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a fold's test predictions (:data:`PREDICTION_COLUMNS`) atomically."""
    write_tsv(predictions, path)


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """A fold's test predictions, ``patient_id`` as str; at least :data:`PREDICTION_REQUIRED`."""
    df = read_tsv(path, dtype={"patient_id": str})
    return _require(df, PREDICTION_REQUIRED, path, "a predictions.tsv")


def empty_attention() -> pd.DataFrame:
    """An attention table without rows (a fold without test patients)."""
    return pd.DataFrame(columns=list(ATTENTION_COLUMNS))


def write_attention(attention: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write an attention table (:data:`ATTENTION_COLUMNS`) atomically."""
    write_tsv(attention, path)


def read_attention(path: str | os.PathLike) -> pd.DataFrame:
    """One attention table, ids as str; at least :data:`ATTENTION_REQUIRED`."""
    df = read_tsv(path, dtype={"patient_id": str, "slide_id": str})
    return _require(df, ATTENTION_REQUIRED, path, "an attention.tsv")


def load_attention(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate fold ``attention.tsv`` tables; a patch may appear in one fold only."""
    frames = [read_attention(path) for path in paths]
    if not frames:
        raise ValueError("no attention tables were given")
    att = pd.concat(frames, ignore_index=True)
    dup = att.duplicated(list(ATTENTION_KEYS), keep=False)
    if dup.any():
        first = att[dup].iloc[0]
        raise ValueError(
            f"patch {first['patch_index']} of slide {first['slide_id']!r} is in more than one "
            f"attention table ({list(map(str, paths))}); give the folds of one method only"
        )
    return att
