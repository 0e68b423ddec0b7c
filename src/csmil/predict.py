"""Apply a trained run to new slides: tile, embed, cluster, score with every fold model.

No retraining. Each new slide is handled as its own patient, through the same steps as the training
cohort (:func:`csmil.slides.tiling.tile_slide` with the encoders' ``patch_px``,
:func:`csmil.encoders.embedding.embed_slide` with the run's encoders,
:func:`csmil.mil.phenotypes.cluster_patient` with the models' ``n_clusters``), then scored by every
fold model on ``n_bags`` random bags of the bag mode the models were trained with (the authors' test
procedure, reference notes §3.3): a model's probability is its mean over bags and the slide's is the
mean over models (the fold ensemble of the authors' released inference). Each patch's attention is
averaged over all bags of all models it was drawn into, and the maps are drawn as for the training
cohort.

Outputs under ``out_dir``: ``predictions.tsv`` (one row per slide: ``slide_id, slide_path,
n_patches, n_models, prob, prob_sd, predicted_label, prob_fold0 ...``), ``attention/{slide}.tsv``,
``maps/{slide}.png`` and the intermediate ``work/{patches,features,phenotypes}/``.
A slide without tissue gets ``prob`` NaN and a warning, not an error.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from csmil import SCALES
from csmil.io import write_tsv
from csmil.runtime import select_device, set_compute_threads

log = logging.getLogger(__name__)

PREDICT_COLUMNS = ("slide_id", "slide_path", "n_patches", "n_models", "prob", "prob_sd",
                   "predicted_label")  # fmt: skip


def _load_models(model_paths: Sequence[str | os.PathLike], device) -> tuple[list, dict[str, Any]]:
    """Fold models in eval mode and the training settings they share (n_clusters, bag_mode)."""
    from csmil.mil.models import load_mil_checkpoint

    if not model_paths:
        raise ValueError("no model checkpoints were given; pass the fold model.pt files")
    models, settings = [], {}
    for path in model_paths:
        model, meta = load_mil_checkpoint(path, device)
        cfg = meta.get("config", {})
        this = {k: cfg.get(k) for k in ("n_clusters", "bag_mode")} | {"in_dim": meta["in_dim"]}
        if settings and this != settings:
            raise ValueError(
                f"{path} was trained with {this} but {model_paths[0]} with {settings}; give the "
                "fold models of one method of one run"
            )
        settings = this
        models.append(model)
    if settings["n_clusters"] is None:
        raise ValueError(f"{model_paths[0]} does not record n_clusters; re-train the method")
    return models, settings


def score_patient(
    models: Sequence[torch.nn.Module],
    patient,
    n_clusters: int,
    bag_mode: str,
    n_bags: int,
    seed: int,
    device,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Score one :class:`csmil.mil.bags.PatientBags` with every model on ``n_bags`` bags.

    Returns the per-model mean probabilities (M,) and the attention table
    (:data:`csmil.mil.results.ATTENTION_COLUMNS`) averaged over every bag of every model,
    weighted by the bags a patch was in.
    """
    from csmil.mil.bags import PatientBagSource
    from csmil.mil.inference import attention_table, predict_bags
    from csmil.mil.results import ATTENTION_KEYS, ATTENTION_VALUES

    source = PatientBagSource([patient], n_clusters=n_clusters, bag_mode=bag_mode, device=device)
    probs, tables = [], []
    for k, model in enumerate(models):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), k]))
        p, index, att = predict_bags(model, source, [0], n_bags, rng)
        probs.append(float(p.mean()))
        tables.append(attention_table(source, index, att))
    both = pd.concat(tables, ignore_index=True)
    values = [c for c in ATTENTION_VALUES if c in both.columns]
    keys = ["patient_id", *ATTENTION_KEYS]
    weighted = both[values].mul(both["n_bags"], axis=0).assign(n_bags=both["n_bags"])
    summed = weighted.groupby([both[k] for k in keys]).sum(min_count=1)
    summed[values] = summed[values].div(summed["n_bags"], axis=0)
    return np.asarray(probs), summed.reset_index()[[*keys, "n_bags", *values]]


def predict_slides(
    slide_paths: Sequence[str | os.PathLike],
    model_paths: Sequence[str | os.PathLike],
    encoder_paths: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    n_bags: int = 100,
    tissue_threshold: float = 0.25,
    mask_mpp: float = 8.0,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
    batch_size: int = 128,
    maps: bool = True,
) -> pd.DataFrame:
    """Predict every slide of ``slide_paths`` with the fold models ``model_paths`` and the
    run's per-scale ``encoder_paths``; write the outputs listed in the module docstring.
    Returns the predictions table."""
    from csmil.encoders.embedding import embed_slide
    from csmil.encoders.simsiam import load_encoder
    from csmil.mil.bags import load_patient
    from csmil.mil.phenotypes import cluster_patient
    from csmil.mil.results import write_attention
    from csmil.reporting.attention_maps import render_slide
    from csmil.slides.tiling import tile_slide

    if n_bags < 1:
        raise ValueError(f"n_bags must be >= 1; received {n_bags}")
    missing = [s for s in SCALES if s not in encoder_paths]
    if missing:
        raise KeyError(f"no encoder for scales {missing}; give one encoder per scale {SCALES}")
    ids = [Path(p).stem for p in slide_paths]
    if len(set(ids)) != len(ids):
        raise ValueError(f"slide names must be unique; received {ids}")
    dev = select_device(device)
    models, settings = _load_models(model_paths, dev)
    patch_px = int(load_encoder(encoder_paths["20x"])[1]["patch_px"])
    out = Path(out_dir)
    rows = []
    for i, (slide, sid) in enumerate(zip(slide_paths, ids, strict=True)):
        patches = out / "work" / "patches" / f"{sid}.h5"
        features = out / "work" / "features" / f"{sid}.h5"
        phenotypes = out / "work" / "phenotypes" / f"{sid}.tsv"
        tile_slide(slide, patches, patch_px=patch_px, tissue_threshold=tissue_threshold,
                   mask_mpp=mask_mpp, slide_id=sid)  # fmt: skip
        embed_slide(patches, encoder_paths, features, batch_size=batch_size, device=device,
                    slide_id=sid, num_threads=num_threads)  # fmt: skip
        cluster_patient([features], phenotypes, n_clusters=settings["n_clusters"], seed=seed)
        patient = load_patient(sid, 0, [features], phenotypes)  # label unused when scoring
        row: dict[str, Any] = {"slide_id": sid, "slide_path": str(slide), "n_patches": patient.n,
                               "n_models": len(models)}  # fmt: skip
        if patient.n == 0:
            log.warning("%s: no tissue patches; no prediction", sid)
            rows.append(row | {"prob": np.nan, "prob_sd": np.nan, "predicted_label": -1})
            continue
        if patient.dim != settings["in_dim"]:
            raise ValueError(
                f"{sid}: the encoders give {patient.dim}-d features but the models take "
                f"{settings['in_dim']}-d; use the encoders of the run that trained the models"
            )
        set_compute_threads("mil", num_threads)  # as in training: the same numbers
        probs, attention = score_patient(
            models, patient, settings["n_clusters"], settings["bag_mode"] or "cluster",
            n_bags, seed + i, dev,
        )  # fmt: skip
        prob = float(probs.mean())
        row |= {"prob": prob, "prob_sd": float(probs.std()), "predicted_label": int(prob > 0.5)}
        row |= {f"prob_fold{k}": float(p) for k, p in enumerate(probs)}
        rows.append(row)
        write_attention(attention, out / "attention" / f"{sid}.tsv")
        if maps:
            render_slide(slide, attention, patches, out / "maps" / f"{sid}.png",
                         title=f"{sid}  (p = {prob:.3f}, {len(models)} models)")  # fmt: skip
        log.info("%s: p = %.4f (sd over %d models %.4f), %d patches", sid, prob, len(models),
                 row["prob_sd"], patient.n)  # fmt: skip
    cols = list(PREDICT_COLUMNS) + [f"prob_fold{k}" for k in range(len(models))]
    df = pd.DataFrame(rows).reindex(columns=cols)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "attention").mkdir(parents=True, exist_ok=True)
    write_tsv(df, out / "predictions.tsv")
    return df


# --------------------------------------------------------------------------- command line


def _encoders(a: argparse.Namespace) -> dict[str, str]:
    out = {s: str(Path(a.encoder_dir) / f"{s}.pt") for s in SCALES} if a.encoder_dir else {}
    for item in a.encoder:
        scale, sep, path = item.partition("=")
        if not sep or scale not in SCALES:
            raise ValueError(f"--encoder takes SCALE=PATH with SCALE in {SCALES}; got {item!r}")
        out[scale] = path
    return out


def _models(a: argparse.Namespace) -> list[str]:
    paths = list(a.model)
    if a.model_dir:
        found = sorted(Path(a.model_dir).glob("fold*/model.pt"), key=lambda p: p.parent.name)
        if not found:
            raise FileNotFoundError(f"no fold*/model.pt under {a.model_dir}")
        paths += [str(p) for p in found]
    return paths


def cmd_predict(a: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`predict_slides` from parsed arguments; return a summary."""
    df = predict_slides(
        a.slides, _models(a), _encoders(a), a.out_dir, n_bags=a.n_bags,
        tissue_threshold=a.tissue_threshold, mask_mpp=a.mask_mpp, seed=a.seed, device=a.device,
        num_threads=a.threads, maps=not a.no_maps,
    )  # fmt: skip
    return {"out_dir": a.out_dir, "predictions": df[["slide_id", "prob"]].to_dict("records")}


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``csmil predict`` to an ``argparse`` sub-parser collection."""
    s = subparsers.add_parser(
        "predict", help="score new slides with a trained run (every fold model), draw maps"
    )
    s.add_argument("out_dir", help="folder for predictions.tsv, attention/, maps/, work/")
    s.add_argument("slides", nargs="+", help="whole-slide images to score")
    s.add_argument("--model-dir", help="a method's folder holding fold*/model.pt")
    s.add_argument("--model", action="append", default=[], help="a fold model.pt (repeatable)")
    s.add_argument("--encoder-dir", help="folder with the run's encoders 20x.pt, 10x.pt, 5x.pt")
    s.add_argument("--encoder", action="append", default=[], metavar="SCALE=PATH")
    s.add_argument("--n-bags", type=int, default=100, help="bags per slide and model (100)")
    s.add_argument("--tissue-threshold", type=float, default=0.25)
    s.add_argument("--mask-mpp", type=float, default=8.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--no-maps", action="store_true", help="skip the attention maps")
    s.set_defaults(func=cmd_predict)
    return s
