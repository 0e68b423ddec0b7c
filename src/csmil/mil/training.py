"""Train one MIL model on one cross-validation fold, select it, test it, export its attention.

Folds (``splits.tsv``): for fold ``f`` the **test** patients are those of fold ``f``, the
**validation** patients those of fold ``(f + 1) % K`` and the **training** patients all others
(so K >= 3); see :func:`csmil.mil.splits.fold_partition`.

Training follows the authors' released code (reference notes §3.2, defaults of
:class:`TrainSettings`):

* Adam (L2 weight decay, not AdamW), lr 5e-4, weight decay 1e-4, 100 epochs, no scheduler.
* Each epoch, one fresh bag per training patient (see :mod:`csmil.mil.bags`), patients in a
  shuffled order. The losses of ``accumulate`` = 4 consecutive bags are **summed**, then one
  optimiser step; the last, partial group of an epoch is stepped too.
* Loss: binary negative log-likelihood of the bag label under the sigmoid probability, clamped
  to ``[1e-5, 1 - 1e-5]``. A model's ``aux_probs`` add their NLL, averaged over their K columns.
* The ``accumulate`` bags of one step are run as one padded batch (B = 4) rather than four
  forward passes: models treat bags independently and padding is masked, so the summed loss and
  its gradient are the same (dropout masks are drawn per bag either way); it is much faster.
* After every epoch, the validation loss is the mean NLL over one random bag per validation
  patient, in eval mode, from a generator of its own that runs on across epochs (as the
  authors' validation set holds one RandomState). The weights with the lowest validation loss
  are kept (``<=``: a later tie wins). A fold without validation patients (a tiny cohort)
  selects on the epoch's training loss instead, with a warning.

Testing (§3.3, :mod:`csmil.mil.inference`): ``n_test_bags`` random bags per test patient; the
patient's probability is the mean over bags (median and max are written too), and every
attention of each bag is averaged per sampled patch over the bags the patch appeared in. The
tables written are those of :mod:`csmil.mil.results`.

Feature standardisation (``standardise=True``; not in the released code): every input feature
is shifted and scaled by the mean and standard deviation over all patches of the fold's
training patients, per scale and dimension. The statistics are stored in the model (so
prediction applies them too). Self-supervised features from a short CPU pretraining have a
large shared offset and small differences between patches; standardising them lets the
first linear layer see those differences at the learning rate the released code uses.

A patient without patches cannot be trained on or scored: :class:`csmil.mil.bags.EmptyPatientError`
names it and its slides before training starts.

:func:`train_fold` runs the steps in order: :func:`fold_patients` (who is in which role),
:func:`build_model`, :func:`fit` (the training loop and model selection) and
:func:`score_test_patients` (the test tables), then writes the outputs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from csmil import SCALES
from csmil.mil.bags import BAG_MODES, PatientBags, PatientBagSource, validation_positions
from csmil.mil.foldbatch import FoldRun, can_batch, fit_folds, global_generator_copy
from csmil.mil.inference import attention_table, predict_bags
from csmil.mil.loss import bag_nll, model_loss
from csmil.mil.methods import resolve
from csmil.mil.models import (
    MILModel,
    count_parameters,
    create_mil_model,
    save_mil_checkpoint,
)
from csmil.mil.results import (
    HISTORY_COLUMNS,
    MEMORY_COLUMNS,
    empty_attention,
    predictions_table,
    write_attention,
    write_history,
    write_predictions,
)
from csmil.mil.splits import fold_partition, read_splits
from csmil.runtime import (
    TrainingMemory,
    progress,
    seed_everything,
    select_device,
    set_compute_threads,
)

log = logging.getLogger(__name__)

OUTPUT_NAMES = {
    "model": "model.pt",
    "history": "history.tsv",
    "predictions": "predictions.tsv",
    "attention": "attention.tsv",
}


@dataclass(frozen=True)
class TrainSettings:
    """Settings of :func:`train_fold`; defaults are the authors' released code (§3.2, §3.3).

    Attributes:
        epochs: training epochs (>= 1); the weights of the selected epoch are kept.
        lr: Adam learning rate.
        weight_decay: Adam L2 weight decay.
        accumulate: bags whose losses are summed per optimiser step (>= 1).
        n_test_bags: random bags scored per test patient (>= 1).
        n_clusters: phenotype clusters per patient (the clustering step's k).
        bag_mode: how bags are drawn, one of :data:`csmil.mil.bags.BAG_MODES`.
        standardise: standardise input features by the training patients' statistics.
        eval_batch_bags: bags per forward pass in validation and testing (>= 1).
        n_val_bags: random bags per validation patient each epoch (>= 1); the validation loss
            is the mean NLL over all of them. 1 is the authors' code.
    """

    epochs: int = 100
    lr: float = 5e-4
    weight_decay: float = 1e-4
    accumulate: int = 4
    n_test_bags: int = 100
    n_clusters: int = 8
    bag_mode: str = "cluster"
    standardise: bool = False
    eval_batch_bags: int = 50
    n_val_bags: int = 1

    def __post_init__(self) -> None:
        if self.accumulate < 1 or self.epochs < 1 or self.n_test_bags < 1:
            raise ValueError(
                f"accumulate, epochs and n_test_bags must be >= 1; got {self.accumulate}, "
                f"{self.epochs}, {self.n_test_bags}"
            )
        if self.eval_batch_bags < 1:
            raise ValueError(f"eval_batch_bags must be >= 1, got {self.eval_batch_bags}")
        if self.n_val_bags < 1:
            raise ValueError(f"n_val_bags must be >= 1, got {self.n_val_bags}")
        if self.bag_mode not in BAG_MODES:
            raise ValueError(f"bag_mode must be one of {list(BAG_MODES)}, got {self.bag_mode!r}")


def _epoch_val_loss(model, source, which, rng, batch_bags) -> float:
    """Mean NLL over one bag per entry of ``which``, eval mode, no gradient."""
    model.eval()
    index = source.sample(which, rng)
    labels = torch.as_tensor(source.labels[which], dtype=torch.float32, device=source.device)
    losses = []
    with torch.no_grad():
        for g in range(0, len(which), batch_bags):
            out = model(source.collate(index[g : g + batch_bags]))
            losses.append(bag_nll(out.prob, labels[g : g + batch_bags]))
    model.train()
    return float(torch.cat(losses).mean())


def _output_paths(out_dir, paths: Mapping[str, str | os.PathLike] | None) -> dict[str, Path]:
    paths = dict(paths or {})
    unknown = sorted(set(paths) - set(OUTPUT_NAMES))
    if unknown:
        raise ValueError(f"unknown output names {unknown}; choose from {sorted(OUTPUT_NAMES)}")
    out = {}
    for key, name in OUTPUT_NAMES.items():
        if key in paths:
            out[key] = Path(paths[key])
        elif out_dir is not None:
            out[key] = Path(out_dir) / name
        else:
            raise ValueError(f"no path for the {key} output: give out_dir or paths[{key!r}]")
    return out


def _select_patients(
    patients: Sequence[PatientBags], splits: pd.DataFrame, roles: dict[str, list[str]]
) -> list[PatientBags]:
    """The fold's patients in role order, checked against the splits' labels and for patches."""
    by_id = {p.patient_id: p for p in patients}
    label = dict(zip(splits["patient_id"].astype(str), splits["label"].astype(int), strict=True))
    chosen = []
    for role, ids in roles.items():
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"{role} patients {missing[:5]} of the splits table were not loaded")
        for i in ids:
            p = by_id[i]
            if p.label != label[i]:
                raise ValueError(f"patient {i!r}: label {p.label} but {label[i]} in the splits")
            p.require_patches("trained on" if role != "test" else "scored")
            chosen.append(p)
    return chosen


def _resolve(
    method: str, options: Mapping[str, Any] | None, settings: TrainSettings
) -> tuple[str, dict[str, Any], str, TrainSettings]:
    """Registry model, model options (as configured), phenotype clustering and settings of
    ``method`` (:func:`csmil.mil.methods.resolve`): the options ``bag_mode`` (overriding
    ``settings``) and ``clustering`` are training options."""
    spec = resolve(method, options, settings.bag_mode)
    if spec.bag_mode != settings.bag_mode:
        settings = replace(settings, bag_mode=spec.bag_mode)
    return spec.model, dict(spec.given), spec.clustering, settings


def fold_patients(
    patients: Sequence[PatientBags],
    splits: pd.DataFrame,
    fold: int,
    n_folds: int | None,
    clustering: str,
) -> tuple[dict[str, list[str]], list[PatientBags]]:
    """Step 1: the fold's patient ids per role (``training``, ``validation``, ``test``, each in
    the splits' order) and the patients themselves in that order, with ``clusters`` from
    ``clustering``; checked against the splits' labels and for patches."""
    train_ids, val_ids, test_ids = fold_partition(splits, fold, n_folds)
    if not train_ids:
        raise ValueError(f"fold {fold} has no training patients")
    roles = {"training": train_ids, "validation": val_ids, "test": test_ids}
    chosen = [p.with_clustering(clustering) for p in _select_patients(patients, splits, roles)]
    return roles, chosen


def build_model(
    registry_name: str,
    model_options: Mapping[str, Any],
    in_dim: int,
    standardise_on: Sequence[PatientBags] | None,
    device: torch.device | str,
) -> MILModel:
    """Step 2: a fresh model of feature size ``in_dim`` on ``device``; with ``standardise_on``,
    its input standardisation set to those patients' :func:`feature_statistics`. Its weights
    come from torch's global generator (seed it first)."""
    model = create_mil_model(registry_name, in_dim, **model_options)
    if standardise_on is not None:
        mean, std = feature_statistics(standardise_on)
        model.set_feature_standardisation(torch.from_numpy(mean), torch.from_numpy(std))
    return model.to(device)


def fit(
    model: MILModel,
    source: PatientBagSource,
    train_w: np.ndarray,
    val_w: np.ndarray,
    settings: TrainSettings,
    train_rng: np.random.Generator,
    val_rng: np.random.Generator,
    desc: str = "training",
) -> pd.DataFrame:
    """Step 3: the training loop over the patient positions ``train_w`` (selecting on ``val_w``,
    or on the training loss when it is empty). Leaves ``model`` holding the selected weights;
    returns the history (:data:`csmil.mil.results.HISTORY_COLUMNS`, then the training memory
    so far at each epoch's end in the device's :data:`csmil.mil.results.MEMORY_COLUMNS`
    column: :class:`csmil.runtime.TrainingMemory` started here, before the optimiser)."""
    memory = TrainingMemory(source.device).start()
    opt = torch.optim.Adam(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay
    )
    epochs, accumulate = settings.epochs, settings.accumulate
    labels = torch.as_tensor(source.labels, dtype=torch.float32, device=source.device)
    history, best_score, best_epoch, best_state = [], np.inf, 0, None
    model.train()
    for epoch in progress(range(1, epochs + 1), desc=desc, total=epochs):
        te = time.perf_counter()
        order = train_w[train_rng.permutation(len(train_w))]  # one bag per patient, shuffled
        index = source.sample(order, train_rng)
        total = 0.0
        for g in range(0, len(order), accumulate):  # `accumulate` bags summed per step
            out = model(source.collate(index[g : g + accumulate]))
            loss = model_loss(out, labels[order[g : g + accumulate]]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        train_loss = total / len(order)
        val_loss = (
            _epoch_val_loss(
                model,
                source,
                validation_positions(val_w, settings.n_val_bags),
                val_rng,
                settings.eval_batch_bags,
            )
            if len(val_w)
            else np.nan
        )
        score = val_loss if len(val_w) else train_loss
        if score <= best_score:  # a later tie wins, as in the authors' code
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append((epoch, train_loss, val_loss, time.perf_counter() - te, memory.peak_mb()))
        log.info(
            "%s epoch %d/%d: train loss %.4f, validation loss %.4f%s",
            desc,
            epoch,
            epochs,
            train_loss,
            val_loss,
            " (best)" if best_epoch == epoch else "",
        )
    if best_state is None:
        raise FloatingPointError(f"{desc}: the loss was NaN in every epoch; lower the lr")
    model.load_state_dict(best_state)
    memory_column = MEMORY_COLUMNS[memory.kind]
    hist = pd.DataFrame(history, columns=[*HISTORY_COLUMNS[:4], memory_column])
    hist.insert(4, "best", hist["epoch"] == best_epoch)
    return hist


def score_test_patients(
    model: MILModel,
    source: PatientBagSource,
    test_w: np.ndarray,
    fold: int,
    settings: TrainSettings,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Step 4: the predictions and attention tables (:mod:`csmil.mil.results`) of the test
    patient positions ``test_w`` (empty tables when there are none)."""
    n_test_bags = settings.n_test_bags
    if len(test_w):
        probs, index, att = predict_bags(
            model, source, test_w, n_test_bags, rng, settings.eval_batch_bags
        )
        attention = attention_table(source, index, att)
    else:
        log.warning("fold %d has no test patients: writing empty predictions", fold)
        probs = np.zeros((0, n_test_bags))
        attention = empty_attention()
    preds = predictions_table(
        [source.patients[w].patient_id for w in test_w],
        source.labels[test_w],
        fold,
        probs,
        [source.patients[w].n for w in test_w],
    )
    return preds, attention


def feature_statistics(patients: Sequence[PatientBags]) -> tuple[np.ndarray, np.ndarray]:
    """Per-scale mean and standard deviation, ``(S, D)`` each in ``csmil.SCALES`` order, over
    every patch of ``patients`` (accumulated per patient in float64; no cohort-sized copy).
    Dimensions that do not vary get a standard deviation of 1 (they are only shifted)."""
    dim = patients[0].dim
    total = np.zeros((len(SCALES), dim))
    square = np.zeros((len(SCALES), dim))
    n = 0
    for p in patients:
        for i, s in enumerate(SCALES):
            x = p.features[s].astype(np.float64, copy=False)
            total[i] += x.sum(axis=0)
            square[i] += np.einsum("nd,nd->d", x, x)
        n += p.n
    if n == 0:
        raise ValueError("feature statistics need at least one patch")
    mean = total / n
    std = np.sqrt(np.maximum(square / n - mean**2, 0.0))
    std[std < 1e-6 * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class _Fold:
    """One fold being trained: its roles, positions in the bag source, generators and model."""

    fold: int
    seed: int
    roles: dict[str, list[str]]
    train_w: np.ndarray
    val_w: np.ndarray
    test_w: np.ndarray
    train_rng: np.random.Generator
    val_rng: np.random.Generator
    test_rng: np.random.Generator
    model: MILModel
    torch_rng: torch.Generator
    cpu_rng: torch.Generator


def _start_fold(
    source: PatientBagSource,
    roles: dict[str, list[str]],
    fold: int,
    seed: int,
    spec: tuple[str, dict[str, Any]],
    settings: TrainSettings,
) -> _Fold:
    """Positions, generators and a fresh model of one fold, seeded by ``seed`` exactly as
    :func:`train_fold` seeds it (weights from torch's global generator after
    :func:`seed_everything`; three numpy generators of its own)."""
    train_w, val_w, test_w = (source.indices(ids) for ids in roles.values())
    seed_everything(seed)
    train_rng, val_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    stats_on = [source.patients[w] for w in train_w] if settings.standardise else None
    model = build_model(*spec, source.patients[0].dim, stats_on, source.device)
    torch_rng = global_generator_copy(source.device)
    return _Fold(
        fold,
        seed,
        roles,
        train_w,
        val_w,
        test_w,
        train_rng,
        val_rng,
        test_rng,
        model,
        torch_rng,
        torch_rng if source.device.type == "cpu" else global_generator_copy(torch.device("cpu")),
    )


def _cohort_source(
    patients: Sequence[PatientBags],
    splits: pd.DataFrame,
    clustering: str,
    settings: TrainSettings,
    device: torch.device,
) -> PatientBagSource:
    """One bag source of every patient of the splits, in their order: a fold's patients are
    positions in it (bags drawn from it equal those of a source of the fold's patients only,
    as sampling depends on each patient's own clusters and the generator)."""
    ids = splits["patient_id"].astype(str).tolist()
    chosen = [
        p.with_clustering(clustering) for p in _select_patients(patients, splits, {"cohort": ids})
    ]
    return PatientBagSource(
        chosen, n_clusters=settings.n_clusters, bag_mode=settings.bag_mode, device=device
    )


def train_folds(
    patients: Sequence[PatientBags],
    splits: pd.DataFrame | str | os.PathLike,
    folds: Sequence[int],
    method: str,
    options: Mapping[str, Any] | None = None,
    *,
    settings: TrainSettings | None = None,
    out_dirs: Sequence[str | os.PathLike] | None = None,
    paths: Sequence[Mapping[str, str | os.PathLike]] | None = None,
    n_folds: int | None = None,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    stacked: bool = True,
) -> list[dict[str, Any]]:
    """Train ``method`` on each fold of ``folds`` and write each fold's outputs (to
    ``out_dirs[i]``, or per output name in ``paths[i]``), exactly as :func:`train_fold` would
    for that fold with seed ``seeds[i]`` (default: 0 for every fold), in one process.

    With ``stacked`` (the default) and a model that allows it
    (:func:`csmil.mil.foldbatch.can_batch`), the folds train together as one stacked model
    (:func:`csmil.mil.foldbatch.fit_folds`: the same numbers up to float rounding, K times
    fewer Python steps); otherwise one after the other. Returns each fold's summary.
    """
    t0 = time.perf_counter()
    settings = settings or TrainSettings()
    folds = [int(f) for f in folds]
    seeds = [0] * len(folds) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(folds):
        raise ValueError(f"{len(folds)} folds but {len(seeds)} seeds")
    given = paths if paths is not None else [None] * len(folds)
    dirs = out_dirs if out_dirs is not None else [None] * len(folds)
    if len(given) != len(folds) or len(dirs) != len(folds):
        raise ValueError(f"{len(folds)} folds need as many output folders or path sets")
    outs = [_output_paths(d, p) for d, p in zip(dirs, given, strict=True)]
    if isinstance(splits, str | os.PathLike):
        splits = read_splits(splits)
    registry_name, model_options, clustering, settings = _resolve(method, options, settings)
    roles = [fold_patients(patients, splits, f, n_folds, clustering)[0] for f in folds]
    set_compute_threads("mil", num_threads)
    dev = select_device(device)
    source = _cohort_source(patients, splits, clustering, settings, dev)
    spec = (registry_name, model_options)
    n_folds_used = int(n_folds if n_folds is not None else splits["fold"].max() + 1)
    probe = create_mil_model(registry_name, source.patients[0].dim, **model_options)
    together = stacked and len(folds) > 1 and can_batch(probe)
    log.info(
        f"{method} ({registry_name} {model_options}, {count_parameters(probe)} parameters): "
        f"folds {folds} {'as one stacked model' if together else 'one after the other'}, "
        f"{settings.bag_mode} bags from the {clustering} clustering"
    )
    summaries = []
    if together:
        jobs = [
            _start_fold(source, r, f, s, spec, settings)
            for r, f, s in zip(roles, folds, seeds, strict=True)
        ]
        for job in jobs:
            _log_fold(method, job)
        tf = time.perf_counter()
        runs = [
            FoldRun(j.model, j.train_w, j.val_w, j.train_rng, j.val_rng, j.torch_rng, j.cpu_rng)
            for j in jobs
        ]
        hists = fit_folds(runs, source, settings, desc=f"{method} folds {folds[0]}-{folds[-1]}")
        share = (time.perf_counter() - tf) / len(jobs)
        for job, hist, out in zip(jobs, hists, outs, strict=True):
            summaries.append(
                _finish_fold(
                    job, hist, out, source, method, spec, clustering, settings, n_folds_used, share
                )
            )
    else:
        for r, f, s, out in zip(roles, folds, seeds, outs, strict=True):
            job = _start_fold(source, r, f, s, spec, settings)
            _log_fold(method, job)
            tf = time.perf_counter()
            hist = fit(
                job.model,
                source,
                job.train_w,
                job.val_w,
                settings,
                job.train_rng,
                job.val_rng,
                f"{method} fold {f}",
            )
            summaries.append(
                _finish_fold(
                    job,
                    hist,
                    out,
                    source,
                    method,
                    spec,
                    clustering,
                    settings,
                    n_folds_used,
                    time.perf_counter() - tf,
                )
            )
    log.info(f"{method}: {len(folds)} fold(s) done in {time.perf_counter() - t0:.1f} s")
    return summaries


def _log_fold(method: str, job: _Fold) -> None:
    counts = {"n_train": len(job.train_w), "n_val": len(job.val_w), "n_test": len(job.test_w)}
    log.info(f"{method} fold {job.fold}: {counts}")
    if not len(job.val_w):
        log.warning("fold %d has no validation patients: selecting on the training loss", job.fold)


def _finish_fold(
    job: _Fold,
    hist: pd.DataFrame,
    out: dict[str, Path],
    source: PatientBagSource,
    method: str,
    spec: tuple[str, dict[str, Any]],
    clustering: str,
    settings: TrainSettings,
    n_folds: int,
    seconds_train: float,
) -> dict[str, Any]:
    """Score the fold's test patients with its selected model and write its four outputs."""
    t0 = time.perf_counter()
    registry_name, model_options = spec
    best = hist.loc[hist["best"]].iloc[0]
    selected_on = "val_loss" if len(job.val_w) else "train_loss"
    preds, attention = score_test_patients(
        job.model, source, job.test_w, job.fold, settings, job.test_rng
    )
    summary = {
        "method": method,
        "model": registry_name,
        "fold": job.fold,
        "n_train": len(job.train_w),
        "n_val": len(job.val_w),
        "n_test": len(job.test_w),
        "n_params": count_parameters(job.model),
        "best_epoch": int(best["epoch"]),
        "best_loss": float(best[selected_on]),
        "selected_on": selected_on,
    }
    config = {
        **summary,
        "options": model_options,
        "epochs": int(settings.epochs),
        "lr": float(settings.lr),
        "weight_decay": float(settings.weight_decay),
        "accumulate": int(settings.accumulate),
        "n_test_bags": int(settings.n_test_bags),
        "n_val_bags": int(settings.n_val_bags),
        "n_clusters": int(settings.n_clusters),
        "clustering": clustering,
        "bag_mode": settings.bag_mode,
        "standardise": bool(settings.standardise),
        "seed": job.seed,
        "n_folds": n_folds,
        "train_patients": job.roles["training"],
        "val_patients": job.roles["validation"],
        "test_patients": job.roles["test"],
    }
    save_mil_checkpoint(out["model"], job.model, config=config)
    write_history(hist, out["history"])
    write_predictions(preds, out["predictions"])
    write_attention(attention, out["attention"])
    summary.update(seconds_train=seconds_train, seconds=seconds_train + time.perf_counter() - t0)
    log.info(
        f"{method} fold {job.fold} done (training {seconds_train:.1f} s); best epoch "
        f"{summary['best_epoch']}, {selected_on} {summary['best_loss']:.4f}"
    )
    return summary


def train_fold(
    patients: Sequence[PatientBags],
    splits: pd.DataFrame | str | os.PathLike,
    fold: int,
    method: str,
    options: Mapping[str, Any] | None = None,
    *,
    settings: TrainSettings | None = None,
    out_dir: str | os.PathLike | None = None,
    paths: Mapping[str, str | os.PathLike] | None = None,
    n_folds: int | None = None,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Train ``method`` on fold ``fold`` and write model.pt, history.tsv, predictions.tsv and
    attention.tsv (to ``out_dir``, or per output name in ``paths``: model, history, predictions,
    attention). See the module docstring for the procedure.

    ``splits`` is the splits table or its path; ``n_folds`` K (default: from the splits).
    ``method`` and ``options`` go through :func:`csmil.mil.methods.resolve`; the options
    ``bag_mode`` and ``clustering`` are training options (``bag_mode`` overrides
    ``settings.bag_mode``) and are not passed to the model. ``clustering`` picks the phenotype
    clusters bags are drawn from (``"20x"``, ``"10x"``, ``"5x"``, ``"all"``); by default
    :func:`csmil.mil.methods.default_clustering`. ``settings`` default to
    :class:`TrainSettings`'s. ``seed`` seeds the weights and three generators of its own
    (training bags, validation bags, test bags). ``num_threads`` is the job's cores: the model
    computes on :data:`csmil.runtime.COMPUTE_THREADS` ``["mil"]`` threads whatever it is, so
    that a fold gives the same numbers however many jobs share the machine.
    Feature size D comes from the patients. Returns a summary (epochs, best epoch and losses,
    patient counts, parameter count, seconds). :func:`train_folds` trains several folds.
    """
    return train_folds(
        patients,
        splits,
        [fold],
        method,
        options,
        settings=settings,
        out_dirs=[out_dir] if out_dir is not None else None,
        paths=[paths] if paths is not None else None,
        n_folds=n_folds,
        seeds=[seed],
        device=device,
        num_threads=num_threads,
        stacked=False,
    )[0]
