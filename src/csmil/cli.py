"""The ``csmil`` command line: every workflow step, runnable by hand.

Examples::

    csmil toy-slide out.svs out.mask.png --cohort micro --label 1 --seed 3
    csmil tile slide.svs patches.h5 --patch-px 64
    csmil train-encoder encoder.pt patches/*.h5 --scale 20x --epochs 5
    csmil embed patches.h5 features.h5 --encoder 20x=e20.pt --encoder 10x=e10.pt ...
    csmil cluster phenotypes.tsv features/a.h5 features/b.h5
    csmil validate config.yaml --samples samples.tsv
    csmil qc samples.tsv results/lab/patches --out slide_qc.tsv
    csmil models
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from csmil import SCALES, __version__
from csmil.runtime import setup_logging

log = logging.getLogger("csmil")


def _encoder_map(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        scale, sep, path = item.partition("=")
        if not sep or scale not in SCALES:
            raise SystemExit(f"--encoder takes SCALE=PATH with SCALE in {SCALES}, got {item!r}")
        out[scale] = path
    missing = [s for s in SCALES if s not in out]
    if missing:
        raise SystemExit(f"--encoder missing for scales {missing}")
    return out


def cmd_toy_slide(a: argparse.Namespace) -> object:
    from csmil.toy.generator import make_toy_slide

    return make_toy_slide(
        a.out_svs, a.out_mask, cohort=a.cohort, label=a.label, seed=a.seed, size_px=a.size_px
    )


def cmd_tile(a: argparse.Namespace) -> object:
    from csmil.slides.tiling import tile_slide

    return tile_slide(
        a.slide,
        a.out,
        patch_px=a.patch_px,
        tissue_threshold=a.tissue_threshold,
        mask_mpp=a.mask_mpp,
        slide_id=a.slide_id,
        mpp_override=a.mpp,
        codec=a.codec,
        jpeg_quality=a.jpeg_quality,
        num_threads=a.threads,
    )


def cmd_train_encoder(a: argparse.Namespace) -> object:
    from csmil.encoders.training import SimSiamSettings, train_simsiam

    settings = SimSiamSettings(
        backbone=a.backbone,
        epochs=a.epochs,
        batch_size=a.batch_size,
        base_lr=a.base_lr,
        warmup_epochs=a.warmup_epochs,
        max_patches=a.max_patches,
        layers=tuple(a.layers),
        pooling=a.pooling,
        seed=a.seed,
    )
    return train_simsiam(
        a.patch_stores,
        scale=a.scale,
        out_path=a.out,
        settings=settings,
        device=a.device,
        num_threads=a.threads,
    )


def cmd_embed(a: argparse.Namespace) -> object:
    from csmil.encoders.embedding import embed_slide

    return embed_slide(
        a.patches,
        _encoder_map(a.encoder),
        a.out,
        batch_size=a.batch_size,
        device=a.device,
        num_threads=a.threads,
    )


def cmd_cluster(a: argparse.Namespace) -> object:
    from csmil.mil.phenotypes import cluster_patient

    df = cluster_patient(a.features, a.out, n_clusters=a.n_clusters, seed=a.seed)
    return {"patches": len(df), "out": a.out}


def cmd_validate(a: argparse.Namespace) -> object:
    from csmil.config import load_config, load_sample_sheet

    cfg = load_config(a.config)
    out: dict[str, object] = {"config": a.config, "datasets": list(cfg["datasets"])}
    for sheet in a.samples or []:
        df = load_sample_sheet(sheet)
        out[sheet] = {
            "slides": len(df),
            "patients": int(df["patient_id"].nunique()),
            "positive_patients": int(df.groupby("patient_id")["label"].first().sum()),
        }
    return out


def cmd_qc(a: argparse.Namespace) -> object:
    from pathlib import Path

    from csmil.config import SheetIndex, load_sample_sheet
    from csmil.slides.qc import qc_table, write_qc_table

    sheet = SheetIndex.from_frame(load_sample_sheet(a.samples))
    stores = {slide: Path(a.patches) / f"{slide}.h5" for slide in sheet.rows}
    df = qc_table(stores, sheet.excluded)
    if a.out:
        write_qc_table(df, a.out)
    shown = df[["slide_id", "status", "tiles", "tissue_fraction", "mpp_source", "reason"]]
    print(shown.to_string(index=False, na_rep="-", max_colwidth=100))
    counts = df["status"].value_counts()
    print("; ".join(f"{status}: {n}" for status, n in counts.items()))
    return None


def cmd_models(a: argparse.Namespace) -> object:
    from csmil.mil.models import MIL_MODELS, count_parameters, create_mil_model

    rows = {}
    for name in MIL_MODELS:
        rows[name] = count_parameters(create_mil_model(name, a.in_dim))
    return {"in_dim": a.in_dim, "parameters": rows}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="csmil",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"csmil {__version__}")
    p.add_argument("--log", help="also write the log to this file")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("toy-slide", help="generate one toy slide (Aperio SVS) and its mask")
    s.add_argument("out_svs")
    s.add_argument("out_mask")
    s.add_argument("--cohort", choices=["micro", "macro"], required=True)
    s.add_argument("--label", type=int, choices=[0, 1], required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size-px", type=int, default=3072, help="side in level-0 px (default 3072)")
    s.set_defaults(func=cmd_toy_slide)

    s = sub.add_parser("tile", help="tissue mask and co-centred 20x/10x/5x patches of a slide")
    s.add_argument("slide")
    s.add_argument("out", help="patch store (.h5) to write")
    s.add_argument("--patch-px", type=int, default=64, help="patch side in px (default 64)")
    s.add_argument(
        "--tissue-threshold",
        type=float,
        default=0.25,
        help="tissue fraction of a 20x tile to keep it (default 0.25)",
    )
    s.add_argument(
        "--mask-mpp", type=float, default=8.0, help="µm/px of the tissue-mask thumbnail (default 8)"
    )
    s.add_argument("--slide-id", default=None)
    s.add_argument("--mpp", type=float, default=None, help="level-0 µm/px when the slide lacks it")
    s.add_argument("--codec", choices=["jpeg", "png"], default="jpeg", help="patch encoding")
    s.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (default 90)")
    s.add_argument("--threads", type=int, default=None, help="threads that cut and encode")
    s.set_defaults(func=cmd_tile)

    s = sub.add_parser("train-encoder", help="SimSiam encoder of one scale")
    s.add_argument("out", help="encoder checkpoint (.pt)")
    s.add_argument("patch_stores", nargs="+")
    s.add_argument("--scale", choices=SCALES, required=True)
    s.add_argument("--backbone", default="resnet18")
    s.add_argument(
        "--layers",
        nargs="+",
        default=["layer4"],
        help="ResNet stages pooled and concatenated into the feature (default layer4)",
    )
    s.add_argument("--pooling", choices=["avg", "max", "gem"], default="avg")
    s.add_argument("--epochs", type=int, default=200)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--base-lr", type=float, default=0.05)
    s.add_argument("--warmup-epochs", type=int, default=10)
    s.add_argument("--max-patches", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=cmd_train_encoder)

    s = sub.add_parser("embed", help="features of every patch at every scale")
    s.add_argument("patches")
    s.add_argument("out", help="feature store (.h5) to write")
    s.add_argument("--encoder", action="append", default=[], metavar="SCALE=PATH")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("cluster", help="k-means phenotypes of one patient (20x features)")
    s.add_argument("out", help="phenotype table (.tsv) to write")
    s.add_argument("features", nargs="+", help="the patient's feature stores")
    s.add_argument("--n-clusters", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_cluster)

    s = sub.add_parser("validate", help="check a config file and sample sheets")
    s.add_argument("config")
    s.add_argument("--samples", action="append")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "qc",
        help="slide QC table of a dataset: ok, empty, failed (with the reason), excluded, pending",
    )
    s.add_argument("samples", help="the dataset's sample sheet (TSV)")
    s.add_argument("patches", help="the dataset's patch-store folder, e.g. results/lab/patches")
    s.add_argument("--out", help="also write the table (TSV) here")
    s.set_defaults(func=cmd_qc)

    s = sub.add_parser("models", help="list the MIL models and their parameter counts")
    s.add_argument("--in-dim", type=int, default=2048)
    s.set_defaults(func=cmd_models)

    from csmil.predict import add_predict_parser

    add_predict_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        log.error("%s", err)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
