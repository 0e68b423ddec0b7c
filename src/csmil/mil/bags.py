"""Patients as bags of patches, and the random bags MIL models are trained and tested on.

A patient's instances are all patches of all of its slides; instance ``i`` carries the
co-centred 20x, 10x and 5x features of one patch and that patch's phenotype cluster (k-means on
the patient's 20x features by default, written by :mod:`csmil.mil.phenotypes`; the other clusterings
of the phenotype table, at 10x, 5x or on all scales, are kept in ``phenotypes`` and chosen
with :meth:`PatientBags.with_clustering`).

Bag sampling follows the authors' released code (reference notes §3.2):

* ``bag_mode="cluster"`` (default): draw ``k = max(1, int(N(3, 1)))`` once per bag (``int``
  truncates toward zero), then take ``min(k, |cluster|)`` patches from *each* of the
  ``n_clusters`` clusters, uniformly **with replacement**. An empty cluster contributes nothing;
  in a batch its share is padding with ``mask=False``. A bag therefore holds about 20 patches.
* ``bag_mode="naive"`` (Table 3 ablation): the bag size is drawn exactly as above (the number
  of patches the cluster bag would have had), but the patches are drawn uniformly with
  replacement from all of the patient's patches, ignoring clusters.

Everything is vectorised over bags and deterministic given a :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from csmil import SCALES
from csmil.encoders.featurestore import read_features
from csmil.mil.models import MILBatch
from csmil.mil.phenotypes import CLUSTER_COLUMNS, read_phenotypes

log = logging.getLogger(__name__)

BAG_MODES: tuple[str, ...] = ("cluster", "naive")


class EmptyPatientError(ValueError):
    """A patient without a single patch: it can be neither trained on nor scored."""


@dataclass
class PatientBags:
    """One patient's instances, concatenated over its slides in the order the slides were given.

    ``features[scale]`` is (N, D) float32, ``clusters`` (N,) int64, and ``slide_ids`` (N,) /
    ``patch_index`` (N,) map instance ``i`` back to row ``patch_index[i]`` of slide
    ``slide_ids[i]``'s patch and feature stores. ``slides`` lists every slide with its patch
    count, empty ones included.
    """

    patient_id: str
    label: int
    features: dict[str, np.ndarray]
    clusters: np.ndarray
    slide_ids: np.ndarray
    patch_index: np.ndarray
    slides: dict[str, int] = field(default_factory=dict)
    phenotypes: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # ``clusters`` is the default (20x) clustering when no others are given
        self.phenotypes = {"20x": self.clusters, **self.phenotypes}

    def with_clustering(self, clustering: str) -> PatientBags:
        """The same patient with ``clusters`` taken from another clustering (``"20x"``,
        ``"10x"``, ``"5x"`` or ``"all"``)."""
        if clustering not in self.phenotypes:
            raise ValueError(
                f"patient {self.patient_id!r}: no {clustering!r} clustering in its phenotype "
                f"table (has {sorted(self.phenotypes)}); re-run the cluster step"
            )
        return replace(self, clusters=self.phenotypes[clustering])

    @property
    def n(self) -> int:
        """Number of instances (patches over all slides)."""
        return int(self.clusters.shape[0])

    @property
    def dim(self) -> int:
        """Feature size D (shared by all scales)."""
        return int(next(iter(self.features.values())).shape[1])

    def require_patches(self, role: str = "used") -> None:
        """Raise :class:`EmptyPatientError` (naming the patient and slides) when N == 0."""
        if self.n == 0:
            slides = ", ".join(f"{s} ({n} patches)" for s, n in self.slides.items()) or "none"
            raise EmptyPatientError(
                f"patient {self.patient_id!r} has no patches (slides: {slides}), so it cannot "
                f"be {role}; check the tissue masks of its slides or remove the patient from "
                "the sample sheet"
            )


def _phenotype_clusters(
    table: pd.DataFrame, slide_id: str, n: int, source: str, column: str = "cluster"
) -> np.ndarray:
    """Cluster id per patch of one slide, (n,) int64, checking the table covers each patch once."""
    rows = table[table["slide_id"] == slide_id]
    idx = rows["patch_index"].to_numpy(dtype=np.int64)
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise ValueError(
            f"{source}: slide {slide_id!r} has {n} patches but rows name patch_index "
            f"{idx[bad][:5].tolist()}; re-run clustering for this patient"
        )
    dup = np.bincount(idx, minlength=n)
    if len(idx) != n or (dup != 1).any():
        missing = np.flatnonzero(dup == 0)[:5].tolist()
        repeated = np.flatnonzero(dup > 1)[:5].tolist()
        raise ValueError(
            f"{source}: slide {slide_id!r} needs one row per patch 0..{n - 1}; missing "
            f"{missing}, repeated {repeated}; re-run clustering for this patient"
        )
    clusters = np.empty(n, dtype=np.int64)
    clusters[idx] = rows[column].to_numpy(dtype=np.int64)
    return clusters


def load_patient(
    patient_id: str,
    label: int,
    feature_paths: Sequence[str | os.PathLike],
    phenotype_tsv: str | os.PathLike,
    scales: tuple[str, ...] = SCALES,
) -> PatientBags:
    """Load one patient: its slides' feature stores plus its phenotype table.

    ``phenotype_tsv`` (:func:`csmil.mil.phenotypes.read_phenotypes`) has one row per patch of
    every slide. A patient whose slides have no patches loads as an empty :class:`PatientBags`
    (N = 0); training and testing refuse it with :class:`EmptyPatientError`.
    """
    if int(label) not in (0, 1):
        raise ValueError(f"patient {patient_id!r}: label must be 0 or 1, got {label!r}")
    table = read_phenotypes(phenotype_tsv)
    feats: dict[str, list[np.ndarray]] = {s: [] for s in scales}
    columns = {name: col for name, col in CLUSTER_COLUMNS.items() if col in table.columns}
    clusters: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    slide_col, patch_col = [], []
    slides: dict[str, int] = {}
    dims: dict[str, int] = {}
    for path in feature_paths:
        sf = read_features(path, scales=scales)
        if sf.slide_id in slides:
            raise ValueError(f"patient {patient_id!r}: slide {sf.slide_id!r} is listed twice")
        slides[sf.slide_id] = sf.n
        dims[str(path)] = sf.dim
        for name, col in columns.items():
            clusters[name].append(
                _phenotype_clusters(table, sf.slide_id, sf.n, str(phenotype_tsv), col)
            )
        for s in scales:
            feats[s].append(np.asarray(sf.features[s], dtype=np.float32))
        slide_col.append(np.full(sf.n, sf.slide_id, dtype=object))
        patch_col.append(np.arange(sf.n, dtype=np.int64))
    if not slides:
        raise ValueError(f"patient {patient_id!r}: no feature stores were given")
    if len(set(dims.values())) > 1:
        raise ValueError(f"patient {patient_id!r}: slides differ in feature size: {dims}")
    unknown = sorted(set(table["slide_id"]) - set(slides))
    if unknown:
        raise ValueError(
            f"{phenotype_tsv}: rows for slides {unknown} that are not among the patient's "
            f"feature stores {sorted(slides)}; re-run clustering for patient {patient_id!r}"
        )
    phenotypes = {name: np.concatenate(ids) for name, ids in clusters.items()}
    return PatientBags(
        patient_id=str(patient_id),
        label=int(label),
        features={s: np.concatenate(feats[s], axis=0) for s in scales},
        clusters=phenotypes["20x"],
        phenotypes=phenotypes,
        slide_ids=np.concatenate(slide_col),
        patch_index=np.concatenate(patch_col),
        slides=slides,
    )


def load_patients(
    patients: pd.DataFrame,
    feature_paths: Mapping[str, Sequence[str | os.PathLike]],
    phenotype_paths: Mapping[str, str | os.PathLike],
) -> list[PatientBags]:
    """Load every patient of a table with columns ``patient_id, label`` (e.g. ``splits.tsv``)."""
    out = []
    for pid, label in zip(patients["patient_id"].astype(str), patients["label"], strict=True):
        if pid not in feature_paths or pid not in phenotype_paths:
            raise KeyError(f"patient {pid!r}: no feature stores or phenotype table was given")
        out.append(load_patient(pid, int(label), feature_paths[pid], phenotype_paths[pid]))
    return out


def validation_positions(val_w: np.ndarray, n_val_bags: int) -> np.ndarray:
    """The patient positions of one epoch's validation bags: ``val_w`` repeated ``n_val_bags``
    times, one bag per entry (``n_val_bags=1``: one bag per patient, as the authors' code)."""
    return np.tile(np.asarray(val_w), int(n_val_bags))


def draw_k(rng: np.random.Generator, size: int) -> np.ndarray:
    """Patches per cluster for ``size`` bags: ``max(1, int(N(3, 1)))``, (size,) int64."""
    return np.maximum(1, np.trunc(rng.normal(3.0, 1.0, size=size))).astype(np.int64)


class PatientBagSource:
    """All instances of a set of patients, pooled for vectorised bag sampling and collation.

    Instances are stored patient by patient, sorted by cluster inside each patient, in arrays
    (``torch`` tensors on ``device``) with one extra all-zero row that padding points to.
    ``sample`` returns global instance indices (-1 = padding); ``collate`` turns them into a
    :class:`~csmil.mil.models.MILBatch`;
    ``slide_ids`` / ``patch_index`` map indices back to patches.
    """

    def __init__(
        self,
        patients: Sequence[PatientBags],
        n_clusters: int = 8,
        bag_mode: str = "cluster",
        device: str | torch.device = "cpu",
    ) -> None:
        if bag_mode not in BAG_MODES:
            raise ValueError(f"bag_mode must be one of {BAG_MODES}, got {bag_mode!r}")
        if int(n_clusters) < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters!r}")
        if not patients:
            raise ValueError("PatientBagSource needs at least one patient")
        self.patients = list(patients)
        self.n_clusters = int(n_clusters)
        self.bag_mode = bag_mode
        self.device = torch.device(device)
        self.position = {p.patient_id: i for i, p in enumerate(self.patients)}
        if len(self.position) != len(self.patients):
            raise ValueError("PatientBagSource: a patient_id appears twice")
        scales = tuple(self.patients[0].features)
        dims = {p.patient_id: p.dim for p in self.patients if p.n}
        if len(set(dims.values())) > 1:
            raise ValueError(f"patients differ in feature size: {dims}")
        orders = []
        for p in self.patients:
            bad = (p.clusters < 0) | (p.clusters >= self.n_clusters)
            if bad.any():
                raise ValueError(
                    f"patient {p.patient_id!r}: cluster ids {np.unique(p.clusters[bad]).tolist()}"
                    f" outside [0, {self.n_clusters}); set n_clusters to the k used by clustering"
                )
            orders.append(np.argsort(p.clusters, kind="stable"))
        self.sizes = np.stack(
            [np.bincount(p.clusters, minlength=self.n_clusters) for p in self.patients]
        ).astype(np.int64)  # (P, C)
        n_per = self.sizes.sum(axis=1)
        self.patient_start = np.concatenate([[0], np.cumsum(n_per)[:-1]]).astype(np.int64)  # (P,)
        self.cluster_start = self.patient_start[:, None] + np.concatenate(
            [np.zeros((len(self.patients), 1), np.int64), np.cumsum(self.sizes, axis=1)[:, :-1]],
            axis=1,
        )  # (P, C)
        self.n_total = int(n_per.sum())
        self.labels = np.array([p.label for p in self.patients], dtype=np.int64)
        pairs = list(zip(self.patients, orders, strict=True))

        def ordered(get) -> np.ndarray:
            # empty patients add no rows (and may have any feature size)
            return np.concatenate([get(p)[o] for p, o in pairs if len(o)] or [get(pairs[0][0])[:0]])

        self.slide_ids = ordered(lambda p: p.slide_ids)  # (N_total,)
        self.patch_index = ordered(lambda p: p.patch_index).astype(np.int64)  # (N_total,)
        self.instance_patient = np.repeat(np.arange(len(self.patients)), n_per)  # (N_total,)
        dim = next(iter(dims.values()), 0)
        pad = np.zeros((1, dim), np.float32)  # the row padding points to
        self._features = {
            s: torch.from_numpy(np.concatenate([ordered(lambda p, s=s: p.features[s]), pad])).to(
                self.device
            )
            for s in scales
        }  # scale -> (N_total + 1, D)
        clusters = np.append(ordered(lambda p: p.clusters), 0).astype(np.int64)  # (N_total + 1,)
        self._clusters = torch.from_numpy(clusters).to(self.device)

    def indices(self, patient_ids: Sequence[str]) -> np.ndarray:
        """Positions (P,) of the named patients in this source."""
        missing = [p for p in patient_ids if p not in self.position]
        if missing:
            raise KeyError(f"patients {missing[:5]} are not in this bag source")
        return np.array([self.position[p] for p in patient_ids], dtype=np.int64)

    def sample(self, which: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw one bag per entry of ``which`` (patient positions, (B,)).

        Returns global instance indices (B, Nmax) int64, -1 where a bag is shorter than the
        longest one. Draws ``k`` for all bags first, then all patch choices, so the result is a
        function of the generator state and ``which`` only.
        """
        which = np.asarray(which, dtype=np.int64).reshape(-1)
        for w in np.unique(which):
            if self.sizes[w].sum() == 0:
                self.patients[w].require_patches("sampled into a bag")
        k = draw_k(rng, len(which))  # (B,)
        counts = np.minimum(k[:, None], self.sizes[which])  # (B, C)
        lengths = counts.sum(axis=1)  # (B,)
        if self.bag_mode == "cluster":
            start = np.repeat(self.cluster_start[which].ravel(), counts.ravel())
            size = np.repeat(self.sizes[which].ravel(), counts.ravel())
        else:
            start = np.repeat(self.patient_start[which], lengths)
            size = np.repeat(self.sizes[which].sum(axis=1), lengths)
        gid = start + rng.integers(0, size)  # (T,) uniform with replacement
        bag = np.repeat(np.arange(len(which)), lengths)
        pos = np.arange(len(gid)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        index = np.full((len(which), int(lengths.max(initial=0))), -1, dtype=np.int64)
        index[bag, pos] = gid
        return index

    def collate(self, index: np.ndarray) -> MILBatch:
        """Padded batch for global indices (B, N) from :meth:`sample` (-1 = padding).

        Trailing columns that are padding in every bag are dropped; padded positions get
        all-zero features, cluster 0 and ``mask=False``.
        """
        index = np.asarray(index, dtype=np.int64)
        valid = index >= 0
        width = int(valid.sum(axis=1).max(initial=0))
        index, valid = index[:, :width], valid[:, :width]
        flat = torch.from_numpy(np.where(valid, index, self.n_total).ravel()).to(self.device)
        shape = valid.shape
        return MILBatch(
            features={
                s: f.index_select(0, flat).view(*shape, f.shape[1])  # (B, N, D)
                for s, f in self._features.items()
            },
            clusters=self._clusters.index_select(0, flat).view(shape),  # (B, N)
            mask=torch.from_numpy(valid).to(self.device),  # (B, N)
        )


def sample_bags(
    source: PatientBagSource, which: Sequence[int] | np.ndarray, rng: np.random.Generator
) -> tuple[MILBatch, np.ndarray]:
    """Sample one bag per patient position in ``which`` and collate them.

    Returns the :class:`~csmil.mil.models.MILBatch` (B bags padded to the longest) and the global
    instance indices (B, N) of its positions, -1 for padding; ``source.slide_ids[index]`` and
    ``source.patch_index[index]`` name the sampled patches.
    """
    index = source.sample(which, rng)
    return source.collate(index), index
