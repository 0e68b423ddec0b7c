"""Tests of the MIL model registry: every registered model, its options, checkpoints, counts."""

from __future__ import annotations

import math
import re

import pytest
import torch

from csmil import SCALES
from csmil.mil.models import (
    MIL_MODELS,
    MILBatch,
    count_parameters,
    create_mil_model,
    load_mil_checkpoint,
    masked_softmax,
    model_options,
    resolve_method,
    save_mil_checkpoint,
)

D = 12  # small feature size keeps the file fast

#: Option sets tested besides each model's defaults (ablations and documented choices).
EXTRA_OPTIONS: dict[str, list[dict]] = {
    "deepattnmisl": [{"scale": "10x"}, {"scale": "5x"}],
    "csmil": [
        {"shared_embedding": False},
        {"scale_activation": "tanh"},
        {"shared_embedding": False, "scale_activation": "tanh"},
        {"scale_normalisation": "softmax"},
        {"fusion": "mean"},
        {"fusion": "concat"},
    ],
    "dtfd": [{"distill": "maxmins"}, {"distill": "maxs"}],
    "hagmil": [{"guidance": "soft"}],
}


def _cases() -> list:
    cases = []
    for name in MIL_MODELS:
        for opts in [{}, *EXTRA_OPTIONS.get(name, [])]:
            label = name + "".join(f"-{k}={v}" for k, v in opts.items())
            cases.append(pytest.param(name, opts, id=label))
    return cases


CASES = _cases()


def make_batch(mask: torch.Tensor, seed: int = 0, dim: int = D) -> MILBatch:
    """Random features for every scale; padded positions hold random junk too."""
    g = torch.Generator().manual_seed(seed)
    b, n = mask.shape
    feats = {s: torch.randn(b, n, dim, generator=g) for s in SCALES}
    clusters = torch.randint(0, 8, (b, n), generator=g)
    return MILBatch(features=feats, clusters=clusters, mask=mask.to(torch.bool))


def build(name: str, opts: dict, seed: int = 0):
    torch.manual_seed(seed)
    return create_mil_model(name, D, **opts)


def aux_sum(out) -> torch.Tensor:
    return sum((p.sum() for p in out.aux_probs.values()), torch.zeros(()))


MASKS = {
    "one-instance": torch.tensor([[1]]),
    "B2-padded": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    "B3-empty-bag": torch.tensor(
        [[1, 0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    ),
    "B3-single": torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1]]),
}


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_forward_shapes_and_range(name, opts):
    model = build(name, opts)
    for train in (True, False):
        model.train(train)
        for key, mask in MASKS.items():
            out = model(make_batch(mask, seed=len(key)))
            b, n = mask.shape
            assert out.prob.shape == (b,), key
            assert torch.isfinite(out.prob).all(), key
            assert ((out.prob > 0) & (out.prob < 1)).all(), key
            inst = out.attention["instance"]
            assert inst.shape == (b, n)
            assert torch.isfinite(inst).all()
            assert (inst[~mask.bool()] == 0).all(), "padding must get zero attention"
            real = mask.bool().any(dim=1)
            torch.testing.assert_close(inst.sum(1)[real], torch.ones(int(real.sum())))
            if "scale" in out.attention:
                assert out.attention["scale"].shape == (b, n, len(SCALES))
                assert torch.isfinite(out.attention["scale"]).all()
            for aux in out.aux_probs.values():
                assert aux.shape[0] == b and torch.isfinite(aux).all()


def _shift_invariant(name: str, pname: str, opts: dict) -> bool:
    """A bias whose only effect is a constant added to the logits of a softmax: its gradient
    is zero by construction (round-off at most), so only "not None, finite" is asserted."""
    if re.search(r"(^|\.)(attention|tier[12]_attention)\.(net\.2|w)\.bias$", pname):
        return True
    softmax_scales = name == "csmil" and opts.get("scale_normalisation") == "softmax"
    return softmax_scales and pname == "scale_scorer.2.bias"


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_gradients_reach_every_parameter(name, opts):
    model = build(name, opts).train()
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 4:] = False
    out = model(make_batch(mask, seed=3))
    (out.prob.sum() + aux_sum(out)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        if not _shift_invariant(name, pname, opts):
            assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_padding_does_not_change_outputs(name, opts):
    model = build(name, opts).eval()
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    batch = make_batch(mask, seed=5)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    padded = make_batch(padded_mask, seed=6)  # junk everywhere ...
    for s in SCALES:  # ... then the original instances copied in front
        padded.features[s][:, :5] = batch.features[s]
        padded.features[s][:, 5:] = 1e3  # large junk in padding
    with torch.no_grad():
        ref, out = model(batch), model(padded)
    torch.testing.assert_close(out.prob, ref.prob, rtol=1e-5, atol=1e-6)
    for key, att in ref.attention.items():
        torch.testing.assert_close(out.attention[key][:, :5], att, rtol=1e-5, atol=1e-6)
        assert (out.attention[key][:, 5:] == 0).all(), key


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_checkpoint_round_trip(name, opts, tmp_path):
    model = build(name, opts, seed=11)
    model.eval()
    batch = make_batch(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), seed=2)
    path = save_mil_checkpoint(tmp_path / "model.pt", model, config={"seed": 0, "lr": 5e-4})
    loaded, meta = load_mil_checkpoint(path)
    assert not loaded.training
    assert meta["kind"] == "mil-model" and meta["name"] == name and meta["in_dim"] == D
    assert meta["options"] == model.options and meta["config"] == {"seed": 0, "lr": 5e-4}
    assert "torch" in meta["versions"]
    with torch.no_grad():
        ref, out = model(batch), loaded(batch)
    torch.testing.assert_close(out.prob, ref.prob, rtol=0, atol=0)
    for key in ref.attention:
        torch.testing.assert_close(out.attention[key], ref.attention[key], rtol=0, atol=0)
    # the raw file is a plain dict readable without unpickling code
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"kind", "name", "in_dim", "options", "state_dict", "config", "versions"}


@pytest.mark.parametrize(
    ("name", "opts", "expected"),
    [
        ("deepattnmisl", {}, 135_362),
        ("deepattnmisl", {"scale": "5x"}, 135_362),
        ("deepattnmisl_multi", {}, 135_362),
        ("msdamil", {}, 135_362),
        ("hagmil", {}, 406_086),
        ("csmil", {}, 137_475),
        ("csmil", {"shared_embedding": False}, 137_475 + 2 * 131_136),
        ("csmil", {"fusion": "mean"}, 135_362),
    ],
)
def test_parameter_counts_match_table6(name, opts, expected):
    if name not in MIL_MODELS:
        pytest.fail(f"{name} is not registered")
    model = create_mil_model(name, 2048, **opts)
    assert model.param_count() == expected
    assert count_parameters(model) == expected


def test_wrong_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_mil_model("cs_mil", 16)
    for name in MIL_MODELS:
        assert name in str(err.value)


def test_unknown_option_names_model_and_its_options():
    with pytest.raises(TypeError, match=r"'csmil'.*wrong_option.*fusion"):
        create_mil_model("csmil", 16, wrong_option=1)
    with pytest.raises(ValueError, match=r"scale_activation='gelu'.*'relu', 'tanh'"):
        create_mil_model("csmil", 16, scale_activation="gelu")
    with pytest.raises(ValueError, match="in_dim"):
        create_mil_model("csmil", 0)


def test_every_model_exposes_name_in_dim_options():
    for name in MIL_MODELS:
        model = create_mil_model(name, D)
        assert model.name == name and model.in_dim == D
        assert set(model.options) == set(model_options(name))


def test_resolve_method():
    assert resolve_method("csmil") == ("csmil", {})
    assert resolve_method("deepattnmisl_10x") == ("deepattnmisl", {"scale": "10x"})
    assert resolve_method("deepattnmisl_5x", {"scale": "5x"}) == ("deepattnmisl", {"scale": "5x"})
    variant = {"model": "csmil", "scale_activation": "tanh", "shared_embedding": False}
    assert resolve_method("csmil_nonshared_tanh", variant) == (
        "csmil",
        {"scale_activation": "tanh", "shared_embedding": False},
    )
    assert variant["model"] == "csmil", "the caller's mapping must not be modified"
    with pytest.raises(ValueError, match="deepattnmisl_20x"):
        resolve_method("no_such_method")
    with pytest.raises(ValueError, match="40x"):
        resolve_method("deepattnmisl_40x")
    with pytest.raises(ValueError, match="agree"):
        resolve_method("deepattnmisl_5x", {"scale": "20x"})
    with pytest.raises(ValueError, match="not a registered"):
        resolve_method("x", {"model": "nope"})
    with pytest.raises(TypeError, match="fusion"):
        resolve_method("csmil_x", {"model": "csmil", "fusoin": "mean"})


def test_masked_softmax_matches_authors_formula_and_handles_empty_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0], [0] * 6]).bool()
    ours = masked_softmax(x, mask)
    # The authors' version: push masked logits to about -1e5, exponentiate, mask, normalise.
    m = mask.float()
    y = x * m + (1 - 1 / (m + 1e-5))
    e = torch.exp(y - y.max(1, keepdim=True).values) * m
    theirs = e / e.sum(1, keepdim=True)
    torch.testing.assert_close(ours[:3], theirs[:3])
    assert (ours[3] == 0).all() and (ours[~mask] == 0).all()
    torch.testing.assert_close(ours[2], torch.tensor([1.0, 0, 0, 0, 0, 0]))


def test_single_scale_model_reads_only_its_scale():
    model = build("deepattnmisl", {"scale": "10x"}).eval()
    batch = make_batch(torch.ones(2, 4), seed=1)
    with torch.no_grad():
        ref = model(batch).prob
        batch.features["20x"].normal_()
        batch.features["5x"].normal_()
        assert torch.equal(model(batch).prob, ref)
        batch.features["10x"].normal_()
        assert not torch.allclose(model(batch).prob, ref)


def test_csmil_default_is_the_released_computation():
    """Raw scale scores (no softmax), F = sum_s a_s f_s, then DeepAttnMISL pooling and head."""
    model = build("csmil", {}).eval()
    batch = make_batch(torch.tensor([[1, 1, 1, 0]]), seed=4)
    x = torch.stack([batch.features[s][0, :3] for s in SCALES], dim=1)  # (3 inst, 3 scales, D)
    emb = model.embeddings[0]
    f = torch.relu(x @ emb[0].weight.T + emb[0].bias)  # (3, 3, 64)
    lin1, act, lin2 = model.scale_scorer
    assert isinstance(act, torch.nn.ReLU)
    raw = (torch.relu(f @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias)[..., 0]
    fused = (raw[..., None] * f).sum(1)  # (3, 64)
    logits = model.attention(fused)
    a = torch.softmax(logits, 0)
    prob = model.head(a @ fused)
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(out.prob, prob[None].detach() if prob.dim() == 0 else prob)
    torch.testing.assert_close(out.attention["scale_raw"][0, :3], raw.detach())
    torch.testing.assert_close(out.attention["scale"][0, :3], torch.softmax(raw, -1).detach())


def test_csmil_softmax_normalisation_weights_sum_to_one():
    model = build("csmil", {"scale_normalisation": "softmax"}).eval()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = model(make_batch(mask, seed=8))
    sums = out.attention["scale"].sum(-1)
    torch.testing.assert_close(sums[mask.bool()], torch.ones(5))
    assert (sums[~mask.bool()] == 0).all()


def test_csmil_mean_fusion_is_fixed_one_third():
    model = build("csmil", {"fusion": "mean"}).eval()
    out = model(make_batch(torch.ones(1, 3), seed=9))
    torch.testing.assert_close(out.attention["scale"], torch.full((1, 3, 3), 1 / 3))
    assert not hasattr(model, "scale_scorer")
    assert math.isclose(out.attention["instance"].sum().item(), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(("name", "opts"), [c for c in CASES if c.values[0] != "dtfd"])
def test_prediction_ignores_instance_order(name, opts):
    """A bag is a set: permuting its instances leaves the probability unchanged (DTFD-MIL is
    exempt: its pseudo-bag split follows instance order by design)."""
    model = build(name, opts).eval()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    batch = make_batch(mask, seed=12)
    perm = torch.tensor([3, 0, 4, 1, 2, 5])
    shuffled = MILBatch(
        features={s: f[:, perm] for s, f in batch.features.items()},
        clusters=batch.clusters[:, perm],
        mask=torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 0, 1, 1, 0]], dtype=torch.bool),
    )
    shuffled.features["20x"][1, 0] = 5.0  # the moved padding is junk again
    with torch.no_grad():
        ref, out = model(batch), model(shuffled)
    torch.testing.assert_close(out.prob, ref.prob, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.attention["instance"], ref.attention["instance"][:, perm])


def test_msdamil_and_multi_compute_the_same_function_on_cocentred_bags():
    multi, msda = build("deepattnmisl_multi", {}).eval(), build("msdamil", {}, seed=3).eval()
    msda.load_state_dict(multi.state_dict())
    batch = make_batch(torch.tensor([[1, 1, 0]]), seed=13)
    with torch.no_grad():
        torch.testing.assert_close(msda(batch).prob, multi(batch).prob, rtol=0, atol=0)
        scale = multi(batch).attention["scale"]
    torch.testing.assert_close(scale.sum(), torch.tensor(1.0))


def test_dsmil_prob_is_mean_of_max_and_bag_streams():
    model = build("dsmil", {}).eval()
    batch = make_batch(torch.tensor([[1, 1, 1, 1, 0]]), seed=14)
    h = torch.cat([batch.features[s][0, :4] for s in SCALES], dim=1)  # (4, 3D)
    with torch.no_grad():
        c = model.instance_classifier(h)[:, 0]
        q = model.query(h)
        a = torch.softmax(q @ q[c.argmax()] / math.sqrt(128), 0)
        bag = model.bag_classifier(a @ h)[0]
        expected = 0.5 * (torch.sigmoid(c.max()) + torch.sigmoid(bag))
        out = model(batch)
    torch.testing.assert_close(out.prob[0], expected)
    torch.testing.assert_close(out.attention["instance"][0, :4], a)


def test_dtfd_pseudo_bags_partition_and_eval_is_deterministic():
    model = build("dtfd", {"n_pseudo_bags": 4}).eval()
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :10], mask[1, :3], mask[2, :7] = True, True, True
    member = model.pseudo_bag_membership(mask)  # (3, 4, 10)
    # >= G instances: every real instance in exactly one pseudo-bag, sizes differ by <= 1
    assert (member[0].sum(0) == 1).all() and (member[2, :, :7].sum(0) == 1).all()
    sizes = member[2].sum(1)
    assert sizes.sum() == 7 and sizes.max() - sizes.min() <= 1
    # < G instances: no empty pseudo-bag, instance g mod n in pseudo-bag g
    assert (member[1].sum(1) == 1).all() and not member[1, :, 3:].any()
    torch.testing.assert_close(member, model.pseudo_bag_membership(mask), rtol=0, atol=0)
    batch = make_batch(mask, seed=15)
    with torch.no_grad():
        p1, p2 = model(batch), model(batch)
    torch.testing.assert_close(p1.prob, p2.prob, rtol=0, atol=0)
    assert p1.aux_probs["tier1"].shape == (3, 4)
    model.train()
    torch.manual_seed(0)
    first = model.pseudo_bag_membership(mask)
    torch.manual_seed(0)
    assert torch.equal(first, model.pseudo_bag_membership(mask)), "training split is seeded"
    assert not torch.equal(first, model.pseudo_bag_membership(mask)), "and re-drawn per call"


def test_hipt_transformer_layers_are_torchs_with_its_parameters():
    """HIPT's own layers (whose dropout can be drawn per fold) compute what torch's
    TransformerEncoder computes with the same weights, padding mask included."""
    from csmil.mil.models.hipt import TransformerStack

    torch.manual_seed(3)
    ours = TransformerStack(2, 64, 4, dropout=0.25).eval()
    layer = torch.nn.TransformerEncoderLayer(64, 4, 64, 0.25, batch_first=True)
    theirs = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 64)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 4:] = True
    padding[2, 1:] = True
    with torch.no_grad():
        # torch's fast path returns zeros at padded positions; compare the real ones
        keep = ~padding
        torch.testing.assert_close(
            ours(x, padding)[keep], theirs(x, src_key_padding_mask=padding)[keep]
        )
        torch.testing.assert_close(ours(x), theirs(x))


def test_hagmil_without_zoom_is_three_deepattnmisl_nets_averaged():
    hag = build("hagmil", {"zoom_fraction": 1.0}).eval()
    batch = make_batch(torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]), seed=16)
    probs = []
    for s in SCALES:
        single = create_mil_model("deepattnmisl", D, scale=s).eval()
        single.net.load_state_dict(hag.levels[s].state_dict())
        probs.append(single(batch).prob)
    with torch.no_grad():
        out = hag(batch)
    torch.testing.assert_close(out.prob, torch.stack(probs).mean(0).detach())


def test_hagmil_hard_guidance_zooms_into_the_most_attended_locations():
    hag = build("hagmil", {"zoom_fraction": 0.5}).eval()
    batch = make_batch(torch.ones(1, 8), seed=17)
    with torch.no_grad():
        scale = hag(batch).attention["scale"][0]  # (8, 3): 20x, 10x, 5x columns
    seen = (scale > 0).sum(0)
    assert seen.tolist() == [2, 4, 8]
    assert ((scale[:, 0] > 0) <= (scale[:, 1] > 0)).all(), "20x looks only where 10x looked"
    assert ((scale[:, 1] > 0) <= (scale[:, 2] > 0)).all()
    top4 = scale[:, 2].topk(4).indices
    assert set(torch.nonzero(scale[:, 1]).flatten().tolist()) == set(top4.tolist())
    torch.testing.assert_close(scale.sum(0), torch.ones(3))
    soft = build("hagmil", {"guidance": "soft"}).eval()
    with torch.no_grad():
        assert (soft(batch).attention["scale"][0] > 0).all()


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_mil_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "encoder.pt"
    torch.save({"kind": "simsiam-encoder", "state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="simsiam-encoder"):
        load_mil_checkpoint(foreign)
    broken = tmp_path / "broken.pt"
    torch.save(
        {"kind": "mil-model", "name": "csmil", "in_dim": D, "options": {}, "state_dict": {}},
        broken,
    )
    with pytest.raises(ValueError, match="(?s)cannot rebuild.*Missing key"):
        load_mil_checkpoint(broken)


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_standardisation_equals_standardised_input_and_survives_checkpoints(name, opts, tmp_path):
    model = build(name, opts, seed=5)
    model.eval()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    batch = make_batch(mask, seed=4)
    g = torch.Generator().manual_seed(9)
    mean = torch.randn(len(SCALES), D, generator=g)
    std = torch.rand(len(SCALES), D, generator=g) + 0.5
    shifted = MILBatch(
        features={s: batch.features[s] * std[i] + mean[i] for i, s in enumerate(SCALES)},
        clusters=batch.clusters,
        mask=batch.mask,
    )
    with torch.no_grad():
        ref = model(batch)
        model.set_feature_standardisation(mean, std)
        out = model(shifted)
    torch.testing.assert_close(out.prob, ref.prob, rtol=1e-4, atol=1e-5)
    assert model.param_count() == build(name, opts).param_count()  # buffers are not parameters
    path = save_mil_checkpoint(tmp_path / "model.pt", model, config={})
    loaded, _ = load_mil_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(shifted).prob, out.prob, rtol=0, atol=0)


def test_standardisation_rejects_bad_statistics():
    model = build("csmil", {})
    good = torch.ones(len(SCALES), D)
    with pytest.raises(ValueError, match=r"shape \(3, 12\)"):
        model.set_feature_standardisation(torch.zeros(D), good)
    with pytest.raises(ValueError, match="positive standard deviations"):
        model.set_feature_standardisation(torch.zeros(len(SCALES), D), good * 0)
