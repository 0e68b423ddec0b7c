import argparse

import numpy as np
import pandas as pd
import pytest
import torch

from csmil import SCALES
from csmil.encoders.training import SimSiamSettings, train_simsiam
from csmil.mil.bags import load_patient
from csmil.mil.models import create_mil_model, save_mil_checkpoint
from csmil.predict import PREDICT_COLUMNS, add_predict_parser, score_patient
from csmil.slides.tiling import tile_slide
from csmil.toy.generator import make_toy_slide
from csmil.toy.svs import write_aperio_svs

PX = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A toy slide, a blank slide, three tiny encoders and two fold models of one method."""
    d = tmp_path_factory.mktemp("run")
    make_toy_slide(d / "new1.svs", d / "new1.mask.png", "micro", 1, seed=5, size_px=1536)
    write_aperio_svs(d / "blank.svs", np.full((1536, 1536, 3), 255, np.uint8), mpp=0.5)
    tile_slide(d / "new1.svs", d / "train.h5", patch_px=PX)
    enc = d / "encoders"
    for i, s in enumerate(SCALES):
        settings = SimSiamSettings(
            backbone="resnet18", epochs=1, batch_size=8, warmup_epochs=0, schedule_epochs=None,
            max_patches=16, seed=i,
        )  # fmt: skip
        train_simsiam([d / "train.h5"], s, enc / f"{s}.pt", settings, num_threads=1)
    models = d / "mil"
    for k in range(2):
        torch.manual_seed(k)
        model = create_mil_model("csmil", 512)
        save_mil_checkpoint(
            models / f"fold{k}" / "model.pt", model, {"n_clusters": 3, "bag_mode": "cluster"}
        )
    return d


def cli(argv):
    parser = argparse.ArgumentParser()
    add_predict_parser(parser.add_subparsers())
    return parser.parse_args(["predict", *map(str, argv)])


def test_predict_scores_new_slides_with_every_fold_model(run, tmp_path):
    out = tmp_path / "out"
    args = cli(
        [out, run / "new1.svs", run / "blank.svs", "--model-dir", run / "mil",
         "--encoder-dir", run / "encoders", "--n-bags", 6, "--seed", 2, "--device", "cpu"]
    )  # fmt: skip
    summary = args.func(args)
    assert [r["slide_id"] for r in summary["predictions"]] == ["new1", "blank"]
    df = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert df.columns.tolist() == [*PREDICT_COLUMNS, "prob_fold0", "prob_fold1"]
    new = df.iloc[0]
    assert new["n_models"] == 2 and new["n_patches"] > 10
    folds = new[["prob_fold0", "prob_fold1"]].to_numpy(dtype=float)
    assert 0 < new["prob"] < 1 and new["prob"] == pytest.approx(folds.mean())
    assert new["prob_sd"] == pytest.approx(folds.std())
    assert new["predicted_label"] == int(new["prob"] > 0.5)
    assert folds[0] != folds[1]  # two different models
    blank = df.iloc[1]  # no tissue: a state, not a crash
    assert blank["n_patches"] == 0 and np.isnan(blank["prob"]) and blank["predicted_label"] == -1
    att = pd.read_csv(out / "attention" / "new1.tsv", sep="\t")
    assert att["patch_index"].is_unique and att["patch_index"].max() < new["n_patches"]
    assert att["instance"].between(0, 1).all()
    np.testing.assert_allclose(att[["scale_20x", "scale_10x", "scale_5x"]].sum(axis=1), 1, 1e-5)
    assert (out / "maps" / "new1.png").stat().st_size > 5000
    assert not (out / "maps" / "blank.png").exists()
    # same seed, same result
    again = cli(
        [tmp_path / "again", run / "new1.svs", "--model", run / "mil/fold0/model.pt",
         "--model", run / "mil/fold1/model.pt", "--encoder-dir", run / "encoders",
         "--n-bags", 6, "--seed", 2, "--device", "cpu", "--no-maps"]
    )  # fmt: skip
    assert again.func(again)["predictions"][0]["prob"] == pytest.approx(new["prob"], abs=1e-7)


def test_score_patient_averages_attention_over_models(run, tmp_path):
    feats = tmp_path / "f.h5"
    from csmil.encoders.embedding import embed_slide
    from csmil.mil.phenotypes import cluster_patient

    embed_slide(run / "train.h5", {s: run / "encoders" / f"{s}.pt" for s in SCALES}, feats,
                device="cpu")  # fmt: skip
    cluster_patient([feats], tmp_path / "ph.tsv", n_clusters=3, seed=0)
    patient = load_patient("p", 0, [feats], tmp_path / "ph.tsv")
    model = create_mil_model("csmil", 512).eval()
    probs, att = score_patient([model, model], patient, 3, "cluster", 4, 0, "cpu")
    assert probs.shape == (2,) and 0 < probs.min() <= probs.max() < 1
    one_probs, one = score_patient([model], patient, 3, "cluster", 4, 0, "cpu")
    assert probs[0] == one_probs[0]
    # the second model draws other bags; each patch's n_bags adds up over models
    assert att["n_bags"].sum() > one["n_bags"].sum()
    assert att["patch_index"].is_unique


def test_models_of_different_runs_are_refused(run, tmp_path):
    bad = tmp_path / "bad.pt"
    save_mil_checkpoint(bad, create_mil_model("csmil", 512), {"n_clusters": 8, "bag_mode": "x"})
    args = cli(
        [tmp_path / "o", run / "new1.svs", "--model", run / "mil/fold0/model.pt", "--model", bad,
         "--encoder-dir", run / "encoders", "--device", "cpu"]
    )  # fmt: skip
    with pytest.raises(ValueError, match="give the fold models of one method"):
        args.func(args)
    args = cli([tmp_path / "o", run / "new1.svs", "--model-dir", run / "mil", "--encoder", "1x=a"])
    with pytest.raises(ValueError, match="--encoder takes SCALE=PATH"):
        args.func(args)
