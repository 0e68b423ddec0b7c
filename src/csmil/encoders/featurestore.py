"""The feature store: one HDF5 file per slide with a feature vector per patch and scale.

Layout (format version 1)::

    /features/20x   (N, D) float32   row i is patch i of the slide's patch store
    /features/10x   (N, D) float32
    /features/5x    (N, D) float32
    /coords         (N, 2) int64     copied from the patch store
    attrs: format, format_version, slide_id, encoders (JSON: scale -> encoder id),
           feature_dim, n_patches, csmil_version

This module is the only one that opens feature stores with h5py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from csmil import __version__
from csmil.io import atomic_path

FORMAT = "csmil-features"
FORMAT_VERSION = 1


@dataclass
class SlideFeatures:
    """Features of one slide: ``features[scale]`` (N, D) float32 and ``coords`` (N, 2)."""

    slide_id: str
    features: dict[str, np.ndarray]
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.coords.shape[0])

    @property
    def dim(self) -> int:
        return int(next(iter(self.features.values())).shape[1])


def write_features(
    path: str | os.PathLike,
    slide_id: str,
    features: Mapping[str, np.ndarray],
    coords: np.ndarray,
    encoders: Mapping[str, str],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a feature store atomically; every scale must have one row per coordinate."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    dims = {s: np.asarray(f).shape for s, f in features.items()}
    for s, shape in dims.items():
        if len(shape) != 2 or shape[0] != len(coords):
            raise ValueError(f"features[{s!r}] must be ({len(coords)}, D), got {shape}")
    if len({shape[1] for shape in dims.values()}) > 1:
        raise ValueError(f"all scales must share one feature size, got {dims}")
    dim = next(iter(dims.values()))[1] if dims else 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for s, f in features.items():
            h5.create_dataset(f"features/{s}", data=np.asarray(f, dtype=np.float32))
        h5.create_dataset("coords", data=coords)
        meta = {
            **dict(attrs or {}),
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "slide_id": slide_id,
            "scale_names": json.dumps(list(features)),
            "encoders": json.dumps(dict(encoders)),
            "feature_dim": int(dim),
            "n_patches": len(coords),
            "csmil_version": __version__,
        }
        for k, v in meta.items():
            h5.attrs[k] = json.dumps(v) if isinstance(v, dict | list) else v


def read_features(path: str | os.PathLike, scales: tuple[str, ...] | None = None) -> SlideFeatures:
    """Load a slide's features (all scales unless ``scales`` is given) into memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature store {path} does not exist; run the embed step first")
    # No POSIX lock: read-only, and locks fail or hang on some cluster filesystems.
    with h5py.File(path, "r", locking=False) as h5:
        if h5.attrs.get("format") != FORMAT or h5.attrs.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a csmil feature store of version {FORMAT_VERSION}")
        names = tuple(json.loads(h5.attrs["scale_names"]))
        wanted = names if scales is None else tuple(scales)
        missing = [s for s in wanted if s not in names]
        if missing:
            raise KeyError(f"{path}: no features for scales {missing}; it has {names}")
        feats = {s: h5[f"features/{s}"][:] for s in wanted}
        coords = h5["coords"][:]
        attrs = {}
        for k, v in h5.attrs.items():
            if isinstance(v, str) and v[:1] in "[{":
                v = json.loads(v)
            attrs[k] = v.item() if isinstance(v, np.generic) else v
    return SlideFeatures(str(attrs["slide_id"]), feats, coords, attrs)
