"""Fold training: learns a separable toy problem, selects the lowest validation loss, writes the
documented tables and a loadable checkpoint."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import csmil.mil.training as train_mod
from csmil import SCALES
from csmil.io import read_tsv
from csmil.mil.bags import EmptyPatientError, PatientBags, PatientBagSource
from csmil.mil.inference import attention_table
from csmil.mil.models import MIL_MODELS, MILOutput, load_mil_checkpoint, model_options
from csmil.mil.results import (
    ATTENTION_COLUMNS,
    HISTORY_COLUMNS,
    MEMORY_COLUMNS,
    PREDICTION_COLUMNS,
)
from csmil.mil.splits import fold_partition
from csmil.mil.training import TrainSettings, bag_nll, model_loss, train_fold

DIM = 16


def make_cohort(n_patients=40, n_folds=4, seed=0, empty=()):
    """Positive patients have 6 patches (their own cluster 7) with a shifted mean; folds are
    label-balanced."""
    rng = np.random.default_rng(seed)
    patients, rows = [], []
    for i in range(n_patients):
        pid, label = f"P{i:02d}", i % 2
        n = 0 if pid in empty else int(rng.integers(20, 41))
        clusters = rng.integers(0, 7, size=n)
        feats = {s: rng.normal(size=(n, DIM)).astype(np.float32) for s in SCALES}
        if label and n:
            clusters[:6] = 7
            for s in SCALES:
                feats[s][:6, :4] += 2.0
        slides = np.array([f"{pid}_a"] * (n // 2) + [f"{pid}_b"] * (n - n // 2), dtype=object)
        patch = np.concatenate([np.arange(n // 2), np.arange(n - n // 2)])
        patients.append(
            PatientBags(
                pid,
                label,
                feats,
                clusters.astype(np.int64),
                slides,
                patch,
                {f"{pid}_a": n // 2, f"{pid}_b": n - n // 2},
                # the same phenotypes for every clustering choice
                {c: clusters.astype(np.int64) for c in ("10x", "5x", "all")},
            )
        )
        rows.append((pid, label, (i // 2) % n_folds))
    return patients, pd.DataFrame(rows, columns=["patient_id", "label", "fold"])


@pytest.mark.parametrize("method", ["csmil", "deepattnmisl_20x"])
def test_learns_a_separable_problem_and_writes_documented_outputs(tmp_path, method):
    patients, splits = make_cohort()
    summary = train_fold(
        patients,
        splits,
        0,
        method,
        settings=TrainSettings(epochs=40, n_test_bags=20),
        out_dir=tmp_path,
        seed=3,
        num_threads=1,
        device="cpu",
    )
    preds = read_tsv(tmp_path / "predictions.tsv", dtype={"patient_id": str})
    assert list(preds.columns) == list(PREDICTION_COLUMNS)
    assert sorted(preds["patient_id"]) == sorted(splits.loc[splits["fold"] == 0, "patient_id"])
    assert (preds["fold"] == 0).all() and len(preds) == 10
    assert roc_auc_score(preds["label"], preds["prob"]) > 0.9
    assert (
        (preds["prob_median"] <= preds["prob_max"]) & (preds["prob"] <= preds["prob_max"])
    ).all()
    n_patches = {p.patient_id: p.n for p in patients}
    assert (preds["n_patches"] == preds["patient_id"].map(n_patches)).all()

    hist = read_tsv(tmp_path / "history.tsv")
    memory = MEMORY_COLUMNS["cpu"]  # the peak so far: never falls
    assert list(hist.columns) == [*HISTORY_COLUMNS, memory] and len(hist) == 40
    assert (hist[memory] >= 0).all() and hist[memory].is_monotonic_increasing
    assert hist["best"].sum() == 1
    best = hist.loc[hist["best"], "epoch"].item()
    assert best == hist.loc[hist["val_loss"] == hist["val_loss"].min(), "epoch"].max()
    assert summary["best_epoch"] == best and summary["n_train"] == 20

    att = read_tsv(tmp_path / "attention.tsv", dtype={"patient_id": str, "slide_id": str})
    assert list(att.columns) == list(ATTENTION_COLUMNS)
    assert set(att["patient_id"]) == set(preds["patient_id"])
    assert (att["n_bags"].between(1, 20)).all() and att["instance"].between(0, 1).all()
    assert not att.duplicated(["patient_id", "slide_id", "patch_index"]).any()
    scales = att[[f"scale_{s}" for s in SCALES]]
    if method == "csmil":
        np.testing.assert_allclose(scales.sum(axis=1), 1.0, rtol=1e-5)
    else:
        assert scales.isna().all().all()
    # positive patients attend more to their shifted patches (cluster 7, patch rows 0-5)
    pos = att[att["patient_id"].isin(preds.loc[preds["label"] == 1, "patient_id"])]
    signal = (pos["slide_id"].str.endswith("_a")) & (pos["patch_index"] < 6)
    assert pos.loc[signal, "instance"].mean() > 5 * pos.loc[~signal, "instance"].mean()

    model, meta = load_mil_checkpoint(tmp_path / "model.pt")
    assert meta["config"]["best_epoch"] == best and meta["config"]["method"] == method
    assert set(meta["config"]["test_patients"]) == set(preds["patient_id"])
    assert meta["name"] == summary["model"] and meta["in_dim"] == DIM


@pytest.mark.parametrize("name", sorted(MIL_MODELS))
def test_every_registered_model_trains_and_scores(tmp_path, name):
    patients, splits = make_cohort(n_patients=12)
    method = f"{name}_10x" if "scale" in model_options(name) else name
    settings = TrainSettings(epochs=2, n_test_bags=3)
    summary = train_fold(patients, splits, 2, method, settings=settings, out_dir=tmp_path)
    preds = read_tsv(tmp_path / "predictions.tsv")
    assert summary["model"] == name and len(preds) == (splits["fold"] == 2).sum()
    assert preds["prob"].between(0, 1).all() and preds["prob"].notna().all()
    att = read_tsv(tmp_path / "attention.tsv")
    assert att["n_bags"].between(1, 3).all() and len(att) > 0


def test_each_epoch_draws_one_bag_per_training_patient_and_steps_per_group(tmp_path, monkeypatch):
    patients, splits = make_cohort(n_patients=16)
    train_ids, _, _ = fold_partition(splits, 0)
    calls, steps = [], []
    collate = PatientBagSource.collate

    def spy(self, index):
        if torch.is_grad_enabled():  # training batches; validation and test run without grad
            calls.append([self.patients[self.instance_patient[i]].patient_id for i in index[:, 0]])
        return collate(self, index)

    class CountingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            steps.append(len(calls))
            return super().step(*args, **kwargs)

    monkeypatch.setattr(PatientBagSource, "collate", spy)
    monkeypatch.setattr(torch.optim, "Adam", CountingAdam)
    settings = TrainSettings(epochs=3, accumulate=3, n_test_bags=2)
    train_fold(patients, splits, 0, "csmil", settings=settings, out_dir=tmp_path)
    assert [len(c) for c in calls] == [3, 3, 2] * 3
    assert steps == list(range(1, 10))  # one optimiser step per group, the last one partial
    epochs = [sum(calls[i : i + 3], []) for i in range(0, 9, 3)]
    assert all(sorted(e) == sorted(train_ids) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled every epoch


def test_keeps_the_weights_of_the_lowest_validation_loss_later_ties_win(tmp_path, monkeypatch):
    patients, splits = make_cohort(n_patients=16)
    losses = iter([0.5, 0.3, 0.4, 0.3, 0.6])
    states = []

    def fake_val_loss(model, *args):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(losses)

    monkeypatch.setattr(train_mod, "_epoch_val_loss", fake_val_loss)
    settings = TrainSettings(epochs=5, n_test_bags=2)
    train_fold(patients, splits, 1, "csmil", settings=settings, out_dir=tmp_path, seed=0)
    hist = read_tsv(tmp_path / "history.tsv")
    assert hist["best"].tolist() == [False, False, False, True, False]
    model, _ = load_mil_checkpoint(tmp_path / "model.pt")
    saved = model.state_dict()
    for k, v in states[3].items():
        torch.testing.assert_close(saved[k], v)
    assert any(not torch.equal(saved[k], v) for k, v in states[4].items())


def test_same_seed_same_results_and_no_validation_fallback(tmp_path, caplog):
    patients, splits = make_cohort(n_patients=12)
    splits.loc[splits["fold"] == 1, "fold"] = 0  # fold 1 empty: fold 0 has no validation
    kw = {"settings": TrainSettings(epochs=3, n_test_bags=4), "seed": 5, "n_folds": 4}
    with caplog.at_level(logging.WARNING):
        train_fold(patients, splits, 0, "csmil", out_dir=tmp_path / "a", **kw)
    assert "no validation patients" in caplog.text
    train_fold(patients, splits, 0, "csmil", out_dir=tmp_path / "b", **kw)
    for name in ("predictions.tsv", "attention.tsv"):
        pd.testing.assert_frame_equal(
            read_tsv(tmp_path / "a" / name), read_tsv(tmp_path / "b" / name)
        )
    hist = read_tsv(tmp_path / "a" / "history.tsv")
    assert hist["val_loss"].isna().all()
    assert (
        hist.loc[hist["best"], "epoch"].item()
        == hist.loc[hist["train_loss"] == hist["train_loss"].min(), "epoch"].max()
    )


def test_empty_patient_is_refused_before_training(tmp_path):
    patients, splits = make_cohort(n_patients=12, empty=("P04",))
    with pytest.raises(EmptyPatientError, match="P04.*P04_a \\(0 patches\\)"):
        train_fold(patients, splits, 0, "csmil", settings=TrainSettings(epochs=1), out_dir=tmp_path)
    assert not (tmp_path / "model.pt").exists()


def test_loss_clamps_and_adds_auxiliary_probabilities():
    nll = bag_nll(torch.tensor([0.0, 1.0, 0.25]), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(
        nll, torch.tensor([-np.log(1e-5), -np.log(1 - 1e-5), -np.log(0.75)], dtype=torch.float32)
    )
    out = MILOutput(
        prob=torch.tensor([0.5, 0.5]),
        attention={},
        aux_probs={"tier1": torch.tensor([[0.5, 0.25], [0.5, 0.5]])},
    )
    loss = model_loss(out, torch.tensor([1.0, 0.0]))
    expected = [np.log(2) + (np.log(2) - np.log(0.25)) / 2, 2 * np.log(2)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32))


def test_attention_is_averaged_over_the_bags_a_patch_appears_in():
    feats = {s: np.zeros((3, 2), np.float32) for s in SCALES}
    p = PatientBags(
        "p",
        1,
        feats,
        np.array([0, 1, 1]),
        np.array(["s"] * 3, dtype=object),
        np.array([10, 11, 12]),
        {"s": 3},
    )
    source = PatientBagSource([p], n_clusters=2)
    # global ids follow cluster order: patch 10 -> 0, 11 -> 1, 12 -> 2
    index = np.array([[0, 1, 1], [2, 1, -1]])
    att = {
        "instance": np.array([[0.2, 0.4, 0.4], [0.7, 0.3, 0.0]]),
        "scale": np.tile(np.array([0.5, 0.3, 0.2]), (2, 3, 1)),
    }
    att["scale"][1, 1] = [0.1, 0.1, 0.8]
    df = attention_table(source, index, att)
    assert df["patch_index"].tolist() == [10, 11, 12]
    assert df["n_bags"].tolist() == [1, 2, 1]  # patch 11 twice in bag 0 counts once
    np.testing.assert_allclose(df["instance"], [0.2, 0.35, 0.7])
    np.testing.assert_allclose(df["scale_5x"], [0.2, 0.5, 0.2])


def test_default_clustering_follows_the_model():
    from csmil.mil.methods import default_clustering

    assert default_clustering("deepattnmisl", {"scale": "5x"}) == "5x"
    assert default_clustering("deepattnmisl", {}) == "20x"
    assert default_clustering("deepattnmisl_multi", {}) == "all"
    assert default_clustering("csmil", {"fusion": "mean"}) == "20x"


def test_feature_statistics_equal_numpy_over_all_patches():
    patients, _ = make_cohort(n_patients=6)
    mean, std = train_mod.feature_statistics(patients)
    for i, s in enumerate(SCALES):
        every = np.concatenate([p.features[s] for p in patients])
        np.testing.assert_allclose(mean[i], every.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std[i], every.std(axis=0), rtol=1e-5, atol=1e-6)
    patients[0].features["20x"][:, 0] = 7.0  # a constant dimension is only shifted
    for p in patients[1:]:
        p.features["20x"][:, 0] = 7.0
    mean, std = train_mod.feature_statistics(patients)
    assert mean[0, 0] == pytest.approx(7.0) and std[0, 0] == 1.0


def test_standardise_stores_the_training_patients_statistics(tmp_path):
    patients, splits = make_cohort(n_patients=12)
    for p in patients:  # a large shared offset, as short-trained encoders give
        for s in SCALES:
            p.features[s] += 50.0
    settings = TrainSettings(epochs=2, n_test_bags=2, standardise=True)
    train_fold(patients, splits, 1, "csmil", settings=settings, out_dir=tmp_path, num_threads=1)
    model, meta = load_mil_checkpoint(tmp_path / "model.pt")
    train_ids = set(meta["config"]["train_patients"])
    mean, std = train_mod.feature_statistics([p for p in patients if p.patient_id in train_ids])
    np.testing.assert_allclose(model.feature_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(model.feature_std.numpy(), std, rtol=1e-6)
    assert meta["config"]["standardise"] is True
    settings = TrainSettings(epochs=1, n_test_bags=2)
    train_fold(patients, splits, 1, "csmil", settings=settings, out_dir=tmp_path, num_threads=1)
    model, meta = load_mil_checkpoint(tmp_path / "model.pt")
    assert (model.feature_mean == 0).all() and (model.feature_std == 1).all()
    assert meta["config"]["standardise"] is False


def test_settings_refuse_bad_values_and_a_variant_bag_mode_overrides_them(tmp_path):
    with pytest.raises(ValueError, match="accumulate, epochs and n_test_bags must be >= 1"):
        TrainSettings(epochs=0)
    with pytest.raises(ValueError, match="n_val_bags must be >= 1"):
        TrainSettings(n_val_bags=0)
    with pytest.raises(ValueError, match="bag_mode must be one of"):
        TrainSettings(bag_mode="random")
    patients, splits = make_cohort(n_patients=12)
    settings = TrainSettings(epochs=1, n_test_bags=2)
    train_fold(patients, splits, 0, "csmil", {"bag_mode": "naive"}, settings=settings,
               out_dir=tmp_path, num_threads=1)  # fmt: skip
    _, meta = load_mil_checkpoint(tmp_path / "model.pt")
    assert meta["config"]["bag_mode"] == "naive" and settings.bag_mode == "cluster"
