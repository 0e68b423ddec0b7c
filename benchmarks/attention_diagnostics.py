"""What a model's patch attention follows on a toy cohort of a finished run.

Two measurements on one dataset's positive-region masks, patch stores, feature stores and a
method's fold ``attention.tsv`` tables:

1. Mean within-slide rank (0 lowest, 1 highest) of the attention by tile kind: ``mask`` (at
   least half of the 20x tile in the ground-truth mask), ``partial`` (some of it), and the
   tiles outside the mask split into ``tissue`` (under 5% of the 20x patch's pixels are
   background-white) and ``edge`` (the rest: tiles at the tissue's border), on positive and on
   negative slides.
2. A linear probe per scale: logistic regression on the run's patch features, ``mask`` tiles
   against tiles outside the mask (``partial`` ones left out), five folds grouped by slide.
   Its AUROC is how well the features themselves tell the positive regions apart; a
   well-localising attention would approach it.

    .venv/bin/python benchmarks/attention_diagnostics.py --results results --dataset micro \\
        --method csmil
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from csmil import SCALES
from csmil.encoders.featurestore import read_features
from csmil.mil.results import load_attention
from csmil.reporting.attention_maps import patch_geometry, tile_mask_fraction
from csmil.slides.patchstore import open_patch_store
from csmil.toy.generator import read_toy_mask

WHITE_LEVEL = 210  # a pixel is background when all three channels exceed this
EDGE_WHITE_FRACTION = 0.05


def tile_table(results: Path, dataset: str) -> pd.DataFrame:
    """Every patch of every slide: ``slide_id, patch_index, positive_slide, mask_fraction,
    kind``."""
    frames = []
    for store in sorted((results / dataset / "patches").glob("*.h5")):
        slide_id = store.stem
        mask, mask_ds = read_toy_mask(results / dataset / "slides" / f"{slide_id}.mask.png")
        geom = patch_geometry(store)
        fraction = tile_mask_fraction(geom, mask, mask_ds)
        with open_patch_store(store) as ps:
            pixels = ps.read("20x")
        white = (pixels.min(axis=-1) > WHITE_LEVEL).mean(axis=(1, 2))
        kind = np.select(
            [fraction >= 0.5, fraction > 0, white < EDGE_WHITE_FRACTION],
            ["mask", "partial", "tissue"],
            "edge",
        )
        frames.append(
            pd.DataFrame(
                {
                    "slide_id": slide_id,
                    "patch_index": np.arange(len(fraction)),
                    "positive_slide": bool(mask.any()),
                    "mask_fraction": fraction,
                    "kind": kind,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def attention_ranks(tiles: pd.DataFrame, attention: pd.DataFrame) -> pd.DataFrame:
    """Mean within-slide rank and count of the instance attention per slide class and kind."""
    df = attention.merge(tiles, on=["slide_id", "patch_index"], how="inner")
    by_slide = df.groupby("slide_id")["instance"]
    n = by_slide.transform("size")
    df["rank"] = (by_slide.rank() - 1) / (n - 1).clip(lower=1)  # 0 lowest .. 1 highest
    out = df.groupby(["positive_slide", "kind"])["rank"].agg(n="size", mean_rank="mean")
    return out.round(3)


def probe_auroc(results: Path, dataset: str, tiles: pd.DataFrame) -> dict[str, float]:
    """Slide-grouped cross-validated AUROC of a linear probe, mask tiles vs outside, per scale."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = tiles["kind"] != "partial"
    by_slide = dict(tuple(tiles[keep].groupby("slide_id")))
    feats: dict[str, list[np.ndarray]] = {s: [] for s in SCALES}
    labels, groups = [], []
    for slide_id, rows in by_slide.items():
        store = read_features(results / dataset / "features" / f"{slide_id}.h5")
        idx = rows["patch_index"].to_numpy()
        for s in SCALES:
            feats[s].append(store.features[s][idx])
        labels.append(rows["kind"].to_numpy() == "mask")
        groups += [slide_id] * len(idx)
    y = np.concatenate(labels)
    out = {}
    for s in SCALES:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
        x = np.concatenate(feats[s])
        p = cross_val_predict(clf, x, y, groups=groups, cv=GroupKFold(5), method="predict_proba")
        out[s] = float(roc_auc_score(y, p[:, 1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--dataset", default="micro")
    ap.add_argument("--method", default="csmil")
    args = ap.parse_args()
    tiles = tile_table(args.results, args.dataset)
    folds = sorted((args.results / args.dataset / "mil" / args.method).glob("fold*/attention.tsv"))
    if not folds:
        raise SystemExit(f"no attention tables of {args.method} under {args.results}")
    print(f"{args.dataset} {args.method}: instance attention, mean within-slide rank by tile kind")
    print(attention_ranks(tiles, load_attention(folds)).to_string())
    print("linear probe on the features, mask tiles vs outside (AUROC):")
    for scale, auroc in probe_auroc(args.results, args.dataset, tiles).items():
        print(f"  {scale}: {auroc:.3f}")


if __name__ == "__main__":
    main()
