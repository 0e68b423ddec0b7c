"""Training the folds of a method together (one stacked model) gives each fold the numbers it
gets trained alone, up to float rounding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import make_cohort

from csmil.io import read_tsv
from csmil.mil.foldbatch import StackedAdam, can_batch
from csmil.mil.models import MIL_MODELS, create_mil_model, load_mil_checkpoint
from csmil.mil.models.layers import FoldDropout
from csmil.mil.training import TrainSettings, train_fold, train_folds

DIM = 16
FOLDS = [0, 1, 2, 3]
SEEDS = [11, 12, 13, 14]
# 38 patients in 4 folds: 10, 10, 10 and 8 per fold, so training sets of 18 and 20 patients and
# (accumulating 3 bags) 6 or 7 optimiser steps per epoch: folds sit out the last step.
SETTINGS = TrainSettings(epochs=4, accumulate=3, n_test_bags=5, standardise=True, bag_mode="naive")
METHODS = {
    "csmil": {"scale_normalisation": "softmax"},
    "csmil_concat": {"model": "csmil", "fusion": "concat"},
    "csmil_noshare": {"model": "csmil", "shared_embedding": False, "scale_activation": "tanh"},
    "deepattnmisl_20x": {},
    "gated_attention": {},
    "deepattnmisl_multi": {},
    "msdamil": {},
    "dsmil": {},
    "hagmil": {},
    "dtfd": {},
    "dtfd_maxmins": {"model": "dtfd", "distill": "maxmins"},
    "hipt": {},
}


def _outputs(folder):
    return {
        "predictions": read_tsv(folder / "predictions.tsv"),
        "attention": read_tsv(folder / "attention.tsv"),
        "history": read_tsv(folder / "history.tsv"),
        "state": load_mil_checkpoint(folder / "model.pt")[0].state_dict(),
    }


def _assert_same(a, b, what):
    pa, pb = a["predictions"], b["predictions"]
    assert list(pa["patient_id"]) == list(pb["patient_id"]), what
    probs = [c for c in pa.columns if c.startswith("prob")]
    np.testing.assert_allclose(pa[probs].to_numpy(), pb[probs].to_numpy(), atol=2e-5, err_msg=what)
    ha, hb = a["history"], b["history"]
    assert list(ha["best"]) == list(hb["best"]), f"{what}\n{ha}\n{hb}"
    np.testing.assert_allclose(
        ha[["train_loss", "val_loss"]].to_numpy(),
        hb[["train_loss", "val_loss"]].to_numpy(),
        rtol=1e-5,
        err_msg=what,
    )
    # Weights: the bias of a softmax attention's last layer shifts every logit alike, so its
    # true gradient is 0 and its computed one is rounding noise, which Adam turns into steps of
    # up to lr each; it changes no output (compared tightly above and below).
    assert a["state"].keys() == b["state"].keys()
    max_move = SETTINGS.lr * SETTINGS.epochs * 7
    for k in a["state"]:
        torch.testing.assert_close(
            a["state"][k],
            b["state"][k],
            atol=max_move,
            rtol=0,
            msg=lambda m, k=k: f"{what} {k}: {m}",
        )
        if not k.endswith("attention.net.2.bias"):
            torch.testing.assert_close(
                a["state"][k],
                b["state"][k],
                atol=5e-5,
                rtol=1e-4,
                msg=lambda m, k=k: f"{what} {k}: {m}",
            )
    aa, ab = a["attention"], b["attention"]
    assert aa[["patient_id", "slide_id", "patch_index"]].equals(
        ab[["patient_id", "slide_id", "patch_index"]]
    )
    num = aa.select_dtypes("number").columns
    np.testing.assert_allclose(aa[num].to_numpy(), ab[num].to_numpy(), atol=2e-5, err_msg=what)


@pytest.mark.parametrize("method", list(METHODS))
def test_stacked_folds_equal_folds_trained_one_by_one(tmp_path, method):
    patients, splits = make_cohort(n_patients=38, n_folds=4)
    options = METHODS[method]
    summaries = train_folds(
        patients,
        splits,
        FOLDS,
        method,
        options,
        settings=SETTINGS,
        out_dirs=[tmp_path / "stacked" / f"fold{f}" for f in FOLDS],
        seeds=SEEDS,
        num_threads=1,
    )
    assert len({s["n_train"] for s in summaries}) == 2  # folds of unequal step counts
    for fold, seed in zip(FOLDS, SEEDS, strict=True):
        alone = tmp_path / "alone" / f"fold{fold}"
        train_fold(
            patients,
            splits,
            fold,
            method,
            options,
            settings=SETTINGS,
            out_dir=alone,
            seed=seed,
            num_threads=1,
        )
        _assert_same(
            _outputs(tmp_path / "stacked" / f"fold{fold}"), _outputs(alone), f"{method} fold {fold}"
        )


def test_every_model_can_be_stacked_and_a_stray_dropout_prevents_it():
    assert all(can_batch(create_mil_model(name, DIM)) for name in MIL_MODELS)
    model = create_mil_model("csmil", DIM)
    model.extra = torch.nn.Dropout(0.1)  # torch's dropout draws its own noise
    assert not can_batch(model)
    hipt = create_mil_model("hipt", DIM)
    hipt.extra = FoldDropout(0.1)  # noise of two kinds of draws: their order is not tracked
    assert not can_batch(hipt)


def test_models_that_cannot_be_stacked_train_fold_by_fold_with_the_same_numbers(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(MIL_MODELS["hipt"], "fold_batchable", False)
    patients, splits = make_cohort(n_patients=38, n_folds=4)
    settings = TrainSettings(epochs=2, accumulate=3, n_test_bags=3, bag_mode="naive")
    train_folds(
        patients,
        splits,
        [1, 2],
        "hipt",
        settings=settings,
        seeds=[5, 6],
        out_dirs=[tmp_path / "both" / "a", tmp_path / "both" / "b"],
        num_threads=1,
    )
    for fold, seed, name in ((1, 5, "a"), (2, 6, "b")):
        train_fold(
            patients,
            splits,
            fold,
            "hipt",
            settings=settings,
            seed=seed,
            out_dir=tmp_path / "alone" / name,
            num_threads=1,
        )
        a, b = _outputs(tmp_path / "both" / name), _outputs(tmp_path / "alone" / name)
        pd.testing.assert_frame_equal(a["predictions"], b["predictions"])
        for k in a["state"]:
            assert torch.equal(a["state"][k], b["state"][k])


def test_stacked_adam_is_torch_adam_per_fold_and_skips_inactive_folds():
    torch.manual_seed(0)
    k, shape = 3, (4, 5)
    start = torch.randn(k, *shape)
    grads = [torch.randn(k, *shape) for _ in range(6)]
    active = [
        np.array(a, bool)
        for a in ([1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1])
    ]
    stacked = start.clone().requires_grad_()
    opt = StackedAdam([stacked], k, lr=5e-4, weight_decay=1e-4)
    for g, a in zip(grads, active, strict=True):
        stacked.grad = g.clone()
        opt.step(a)
    for f in range(k):
        p = start[f].clone().requires_grad_()
        ref = torch.optim.Adam([p], lr=5e-4, weight_decay=1e-4)
        for g, a in zip(grads, active, strict=True):
            if a[f]:
                p.grad = g[f].clone()
                ref.step()
        assert torch.equal(stacked[f].detach(), p.detach()), f"fold {f}"


def test_several_validation_bags_per_patient_stacked_equal_one_by_one(tmp_path):
    """``n_val_bags`` draws that many bags per validation patient each epoch, in both paths."""
    patients, splits = make_cohort(n_patients=38, n_folds=4)
    options = METHODS["csmil"]
    settings = replace(SETTINGS, n_val_bags=3)
    train_folds(
        patients,
        splits,
        FOLDS[:2],
        "csmil",
        options,
        settings=settings,
        out_dirs=[tmp_path / "stacked" / f"fold{f}" for f in FOLDS[:2]],
        seeds=SEEDS[:2],
        num_threads=1,
    )
    for fold, seed in zip(FOLDS[:2], SEEDS[:2], strict=True):
        for n_val, folder in ((3, "alone"), (1, "one_bag")):
            train_fold(
                patients,
                splits,
                fold,
                "csmil",
                options,
                settings=replace(settings, n_val_bags=n_val),
                out_dir=tmp_path / folder / f"fold{fold}",
                seed=seed,
                num_threads=1,
            )
        stacked = _outputs(tmp_path / "stacked" / f"fold{fold}")
        _assert_same(stacked, _outputs(tmp_path / "alone" / f"fold{fold}"), f"fold {fold}")
        one_bag = _outputs(tmp_path / "one_bag" / f"fold{fold}")["history"]
        # the training is the same; only the validation loss (more bags) differs
        np.testing.assert_allclose(
            stacked["history"]["train_loss"], one_bag["train_loss"], rtol=1e-5
        )
        assert not np.allclose(stacked["history"]["val_loss"], one_bag["val_loss"])
