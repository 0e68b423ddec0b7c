"""Train one MIL model on one cross-validation fold, select it, test it, export its attention.

Folds (``splits.tsv``, columns ``patient_id, label, fold``, folds ``0 .. K-1``): for fold ``f``
the **test** patients are those of fold ``f``, the **validation** patients those of fold
``(f + 1) % K`` and the **training** patients all others (so K >= 3).

Training follows the authors' released code (reference notes §3.2, defaults here):

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

Testing (§3.3): ``n_test_bags`` random bags per test patient; the patient's probability is the
mean over bags (median and max are written too). Attention (§5): every attention tensor of each
bag is averaged, per sampled patch, over the bags the patch appeared in (a patch drawn twice in
one bag counts once for that bag).

Feature standardisation (``standardise=True``; not in the released code): every input feature
is shifted and scaled by the mean and standard deviation over all patches of the fold's
training patients, per scale and dimension. The statistics are stored in the model (so
prediction applies them too). Self-supervised features from a short CPU pretraining have a
large shared offset and small differences between patches; standardising them lets the
first linear layer see those differences at the learning rate the released code uses.

A patient without patches cannot be trained on or scored: :class:`csmil.mil.bags.EmptyPatientError`
names it and its slides before training starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from csmil import SCALES
from csmil.io import read_tsv, write_tsv
from csmil.mil.bags import PatientBags, PatientBagSource
from csmil.mil.models import (
    MILOutput,
    count_parameters,
    create_mil_model,
    resolve_method,
    save_mil_checkpoint,
)
from csmil.runtime import progress, seed_everything, select_device, set_threads

log = logging.getLogger(__name__)

EPS = 1e-5
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "seconds", "best")
PREDICTION_COLUMNS = ("patient_id", "label", "fold", "prob", "prob_median", "prob_max", "n_patches")
ATTENTION_COLUMNS = ("patient_id", "slide_id", "patch_index", "n_bags", "instance") + tuple(
    f"scale_{s}" for s in SCALES
)
OUTPUT_NAMES = {
    "model": "model.pt",
    "history": "history.tsv",
    "predictions": "predictions.tsv",
    "attention": "attention.tsv",
}


def fold_partition(
    splits: pd.DataFrame, fold: int, n_folds: int | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Patient ids (train, validation, test) of ``fold``: test = fold ``fold``, validation =
    fold ``(fold + 1) % K``, train = the rest. ``K`` defaults to ``max(fold) + 1``."""
    missing = [c for c in ("patient_id", "label", "fold") if c not in splits.columns]
    if missing:
        raise ValueError(f"splits table lacks columns {missing}; expected patient_id, label, fold")
    ids = splits["patient_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"splits table lists patients twice: {ids[ids.duplicated()].tolist()[:5]}")
    folds = splits["fold"].astype(int)
    k = int(folds.max()) + 1 if n_folds is None else int(n_folds)
    if k < 3:
        raise ValueError(f"training needs K >= 3 folds (test, validation, train); got K = {k}")
    if not 0 <= fold < k or folds.min() < 0 or folds.max() >= k:
        raise ValueError(f"fold must be in [0, {k}) and so must the splits' folds; got {fold}")
    test, val = folds == fold, folds == (fold + 1) % k
    return ids[~test & ~val].tolist(), ids[val].tolist(), ids[test].tolist()


def bag_nll(prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Binary NLL (B,) of labels (B,) under probabilities (B,) clamped to [1e-5, 1 - 1e-5]."""
    p = prob.clamp(EPS, 1 - EPS)
    return -(label * torch.log(p) + (1 - label) * torch.log(1 - p))


def model_loss(out: MILOutput, label: torch.Tensor) -> torch.Tensor:
    """Per-bag training loss (B,): NLL of ``prob`` plus the mean NLL of every ``aux_probs``."""
    loss = bag_nll(out.prob, label)
    for aux in out.aux_probs.values():
        lab = label.reshape(-1, *([1] * (aux.dim() - 1))).expand_as(aux)
        loss = loss + bag_nll(aux, lab).reshape(len(label), -1).mean(dim=1)
    return loss


def _epoch_val_loss(model, source, which, rng, batch_bags) -> float:
    """Mean NLL over one bag per patient in ``which``, eval mode, no gradient."""
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


def predict_bags(
    model: torch.nn.Module,
    source: PatientBagSource,
    which: Sequence[int] | np.ndarray,
    n_bags: int,
    rng: np.random.Generator,
    batch_bags: int = 50,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Score ``n_bags`` random bags of each patient position in ``which`` (P,), eval mode.

    Returns probabilities (P, n_bags), the sampled global instance indices (P * n_bags, N; -1 =
    padding) and each attention tensor the model returns, padded to the same (P * n_bags, N, ...).
    """
    model.eval()
    which = np.repeat(np.asarray(which, dtype=np.int64), n_bags)
    index = source.sample(which, rng)
    probs, att, skipped = [], {}, set()
    with torch.no_grad():
        for g in range(0, len(which), batch_bags):
            chunk = index[g : g + batch_bags]
            batch = source.collate(chunk)
            out = model(batch)
            probs.append(out.prob.float().cpu().numpy())
            for name, a in out.attention.items():
                if tuple(a.shape[:2]) != tuple(batch.mask.shape):
                    skipped.add(name)  # not one value per instance: not exported
                    continue
                full = np.zeros((len(chunk), index.shape[1], *a.shape[2:]), np.float32)
                full[:, : a.shape[1]] = a.float().cpu().numpy()
                att.setdefault(name, []).append(full)
    if skipped:
        log.debug("attention %s is not per instance and is not exported", sorted(skipped))
    att = {k: np.concatenate(v) for k, v in att.items() if k not in skipped}
    return np.concatenate(probs).reshape(-1, n_bags), index, att


def attention_table(
    source: PatientBagSource, index: np.ndarray, attention: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """Per sampled patch, each attention averaged over the bags it appeared in.

    ``index`` (B, N) are global instance indices (-1 = padding); ``attention["instance"]`` is
    (B, N) and ``attention["scale"]`` (B, N, S) in ``SCALES`` order when present. Columns:
    ``patient_id, slide_id, patch_index, n_bags, instance, scale_20x, scale_10x, scale_5x``
    (NaN where the model has no such attention), sorted by patient, slide and patch.
    """
    bag, pos = np.nonzero(index >= 0)
    gid = index[bag, pos]
    _, first = np.unique(bag * (source.n_total + 1) + gid, return_index=True)  # once per bag
    bag, pos, gid = bag[first], pos[first], gid[first]
    patches, inverse, n_bags = np.unique(gid, return_inverse=True, return_counts=True)

    def mean_of(values: np.ndarray) -> np.ndarray:
        return np.bincount(inverse, weights=values, minlength=len(patches)) / n_bags

    nan = np.full(len(patches), np.nan)
    columns = {"instance": nan}
    if "instance" in attention:
        columns["instance"] = mean_of(attention["instance"][bag, pos])
    scale = attention.get("scale")
    for j, s in enumerate(SCALES):
        ok = scale is not None and scale.ndim == 3 and scale.shape[2] == len(SCALES)
        columns[f"scale_{s}"] = mean_of(scale[bag, pos, j]) if ok else nan
    df = pd.DataFrame(
        {
            "patient_id": [source.patients[p].patient_id for p in source.instance_patient[patches]],
            "slide_id": source.slide_ids[patches],
            "patch_index": source.patch_index[patches],
            "n_bags": n_bags,
            **columns,
        }
    )
    return df.sort_values(["patient_id", "slide_id", "patch_index"], ignore_index=True)


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


def _fit(
    model,
    opt,
    source,
    train_w,
    val_w,
    epochs,
    accumulate,
    train_rng,
    val_rng,
    eval_batch_bags,
    desc,
) -> pd.DataFrame:
    """The training loop; leaves ``model`` holding the selected weights, returns the history."""
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
            _epoch_val_loss(model, source, val_w, val_rng, eval_batch_bags)
            if len(val_w)
            else np.nan
        )
        score = val_loss if len(val_w) else train_loss
        if score <= best_score:  # a later tie wins, as in the authors' code
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append((epoch, train_loss, val_loss, time.perf_counter() - te))
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
    hist = pd.DataFrame(history, columns=list(HISTORY_COLUMNS[:4]))
    hist["best"] = hist["epoch"] == best_epoch
    return hist


def _test_tables(model, source, test_w, fold, n_test_bags, rng, eval_batch_bags):
    """predictions.tsv and attention.tsv tables of the test patients (empty when none)."""
    if len(test_w):
        probs, index, att = predict_bags(model, source, test_w, n_test_bags, rng, eval_batch_bags)
        attention = attention_table(source, index, att)
    else:
        log.warning("fold %d has no test patients: writing empty predictions", fold)
        probs = np.zeros((0, n_test_bags))
        attention = pd.DataFrame(columns=list(ATTENTION_COLUMNS))
    preds = pd.DataFrame(
        {
            "patient_id": [source.patients[w].patient_id for w in test_w],
            "label": source.labels[test_w],
            "fold": int(fold),
            "prob": probs.mean(axis=1),
            "prob_median": np.median(probs, axis=1),
            "prob_max": probs.max(axis=1, initial=0.0),
            "n_patches": [source.patients[w].n for w in test_w],
        },
        columns=list(PREDICTION_COLUMNS),
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


def default_clustering(registry_name: str, model_options: Mapping[str, Any]) -> str:
    """Phenotype clustering a model's bags use unless told otherwise: a single-scale model
    clusters at its own scale, the scales-as-instances model on all scales together, every
    other model (CS-MIL included, as the authors' code) on 20x features."""
    if "scale" in model_options:
        return str(model_options["scale"])
    if registry_name == "deepattnmisl_multi":
        return "all"
    return "20x"


def train_fold(
    patients: Sequence[PatientBags],
    splits: pd.DataFrame | str | os.PathLike,
    fold: int,
    method: str,
    options: Mapping[str, Any] | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    paths: Mapping[str, str | os.PathLike] | None = None,
    n_folds: int | None = None,
    epochs: int = 100,
    lr: float = 5e-4,
    weight_decay: float = 1e-4,
    accumulate: int = 4,
    n_test_bags: int = 100,
    n_clusters: int = 8,
    bag_mode: str = "cluster",
    standardise: bool = False,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
    eval_batch_bags: int = 50,
) -> dict[str, Any]:
    """Train ``method`` on fold ``fold`` and write model.pt, history.tsv, predictions.tsv and
    attention.tsv (to ``out_dir``, or per output name in ``paths``: model, history, predictions,
    attention). See the module docstring for the procedure.

    ``method`` and ``options`` go through :func:`csmil.mil.models.resolve_method`; the options
    ``bag_mode`` and ``clustering`` are training options (overriding the arguments) and are not
    passed to the model. ``clustering`` picks the phenotype clusters bags are drawn from
    (``"20x"``, ``"10x"``, ``"5x"``, ``"all"``); by default :func:`default_clustering`.
    With ``standardise``, the model standardises its input features by the training
    patients' statistics (:func:`feature_statistics`, stored in the model).
    Feature size D comes from the patients. Returns a summary (epochs, best epoch and losses,
    patient counts, parameter count, seconds).
    """
    t0 = time.perf_counter()
    if isinstance(splits, str | os.PathLike):
        splits = read_tsv(splits, dtype={"patient_id": str})
    if accumulate < 1 or epochs < 1 or n_test_bags < 1:
        raise ValueError(
            f"accumulate, epochs and n_test_bags must be >= 1; got {accumulate}, {epochs}, "
            f"{n_test_bags}"
        )
    options = dict(options or {})
    bag_mode = options.pop("bag_mode", bag_mode)
    clustering = options.pop("clustering", None)
    registry_name, model_options = resolve_method(method, options)
    clustering = clustering or default_clustering(registry_name, model_options)
    out = _output_paths(out_dir, paths)
    train_ids, val_ids, test_ids = fold_partition(splits, fold, n_folds)
    if not train_ids:
        raise ValueError(f"fold {fold} has no training patients")
    roles = {"training": train_ids, "validation": val_ids, "test": test_ids}
    chosen = [p.with_clustering(clustering) for p in _select_patients(patients, splits, roles)]
    set_threads(num_threads)
    dev = select_device(device)
    source = PatientBagSource(chosen, n_clusters=n_clusters, bag_mode=bag_mode, device=dev)
    train_w, val_w, test_w = (source.indices(ids) for ids in roles.values())
    seed_everything(seed)
    train_rng, val_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    model = create_mil_model(registry_name, chosen[0].dim, **model_options)
    if standardise:
        mean, std = feature_statistics([source.patients[w] for w in train_w])
        model.set_feature_standardisation(torch.from_numpy(mean), torch.from_numpy(std))
    model = model.to(dev)
    counts = {"n_train": len(train_w), "n_val": len(val_w), "n_test": len(test_w)}
    n_params = count_parameters(model)
    log.info(
        f"{method} ({registry_name} {model_options}, {n_params} parameters), fold {fold}: "
        f"{counts}, {bag_mode} bags from the {clustering} clustering"
    )
    if not len(val_w):
        log.warning("fold %d has no validation patients: selecting on the training loss", fold)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    desc = f"{method} fold {fold}"
    hist = _fit(
        model,
        opt,
        source,
        train_w,
        val_w,
        epochs,
        accumulate,
        train_rng,
        val_rng,
        eval_batch_bags,
        desc,
    )
    best = hist.loc[hist["best"]].iloc[0]
    selected_on = "val_loss" if len(val_w) else "train_loss"
    t_train = time.perf_counter() - t0
    preds, attention = _test_tables(
        model, source, test_w, fold, n_test_bags, test_rng, eval_batch_bags
    )
    summary = {
        "method": method,
        "model": registry_name,
        "fold": int(fold),
        **counts,
        "n_params": n_params,
        "best_epoch": int(best["epoch"]),
        "best_loss": float(best[selected_on]),
        "selected_on": selected_on,
    }
    config = {
        **summary,
        "options": model_options,
        "epochs": int(epochs),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "accumulate": int(accumulate),
        "n_test_bags": int(n_test_bags),
        "n_clusters": int(n_clusters),
        "clustering": clustering,
        "bag_mode": bag_mode,
        "standardise": bool(standardise),
        "seed": int(seed),
        "n_folds": int(n_folds if n_folds is not None else splits["fold"].max() + 1),
        "train_patients": train_ids,
        "val_patients": val_ids,
        "test_patients": test_ids,
    }
    save_mil_checkpoint(out["model"], model, config=config)
    write_tsv(hist, out["history"])
    write_tsv(preds, out["predictions"])
    write_tsv(attention, out["attention"])
    summary.update(seconds_train=t_train, seconds=time.perf_counter() - t0)
    log.info(
        f"{desc} done in {summary['seconds']:.1f} s (training {t_train:.1f} s); best "
        f"epoch {summary['best_epoch']}, {selected_on} {summary['best_loss']:.4f}"
    )
    return summary
