"""SimSiam encoders: augmentations, schedule, training, checkpoint round trip, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csmil import SCALES
from csmil.encoders.augment import AugmentConfig, BatchAugment, blur_kernel_size
from csmil.encoders.loader import PatchSample
from csmil.encoders.resnet import normalize
from csmil.encoders.simsiam import SimSiam, build_backbone, encoder_id, load_encoder
from csmil.encoders.training import SimSiamSettings, history_path, lr_at, train_simsiam
from csmil.io import read_tsv
from csmil.slides.patchstore import PatchStoreWriter

PX = 32
FAST = dict(epochs=2, batch_size=8, max_patches=16, warmup_epochs=0, schedule_epochs=None)


def train(stores, scale, out, **settings):
    """train_simsiam with :class:`SimSiamSettings` fields as keywords, on one thread."""
    return train_simsiam(stores, scale, out, SimSiamSettings(**settings), num_threads=1)


def make_store(path, n, px=PX, seed=0):
    """A patch store of ``n`` structured patches: coloured stripes of random period and phase."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px]
    patches = {}
    for k, s in enumerate(SCALES):
        period = rng.integers(3, 12, size=(n, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        wave = np.sin(2 * np.pi * (xx + (k + 1) * yy)[None] / period + phase)  # (n, P, P)
        colour = rng.uniform(40, 215, size=(n, 1, 1, 3))
        img = colour + 40 * wave[..., None] + rng.normal(0, 8, size=(n, px, px, 3))
        patches[s] = np.clip(img, 0, 255).astype(np.uint8)
    coords = np.stack([np.arange(n) * 256, np.arange(n) * 128], 1)
    with PatchStoreWriter(path, patch_px=px, attrs={"slide_id": path.stem}) as w:
        w.append(coords, patches)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return [make_store(d / "a.h5", 24, seed=1), make_store(d / "b.h5", 16, seed=2)]


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "20x.pt"
    summary = train(stores, "20x", out, seed=3, **FAST)
    return out, summary


def test_augment_keeps_shape_dtype_and_is_seeded():
    x = torch.randint(0, 256, (6, 3, PX, PX), dtype=torch.uint8)
    aug = BatchAugment(PX, AugmentConfig(vflip=True, rot90=True))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    with pytest.raises(ValueError, match="uint8"):
        aug(x.float())


def test_augment_identity_settings_return_input():
    x = torch.randint(0, 256, (4, 3, PX, PX), dtype=torch.uint8)
    cfg = AugmentConfig(
        crop_min_scale=1.0, crop_ratio=(1, 1), hflip=False, jitter_p=0, grayscale_p=0, blur_p=0
    )
    assert torch.equal(BatchAugment(PX, cfg)(x), x)


def test_rot90_and_flips_only_permute_pixels():
    x = torch.randint(0, 256, (8, 3, PX, PX), dtype=torch.uint8)
    cfg = AugmentConfig(
        crop_min_scale=1.0, crop_ratio=(1, 1), vflip=True, rot90=True,
        jitter_p=0, grayscale_p=0, blur_p=0,
    )  # fmt: skip
    y = BatchAugment(PX, cfg)(x, torch.Generator().manual_seed(0))
    for xi, yi in zip(x, y, strict=True):
        variants = [torch.rot90(v, k, (1, 2)) for v in (xi, xi.flip(2)) for k in range(4)]
        assert any(torch.equal(yi, v) for v in variants)


def test_grayscale_always_gives_equal_channels_and_blur_kernel_scales():
    x = torch.randint(0, 256, (4, 3, PX, PX), dtype=torch.uint8)
    y = BatchAugment(PX, AugmentConfig(grayscale_p=1.0, blur_p=0))(x)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    assert blur_kernel_size(256) == 25 and blur_kernel_size(64) == 7 and blur_kernel_size(32) == 3
    with pytest.raises(ValueError, match="crop_min_scale"):
        AugmentConfig(crop_min_scale=0)


def test_crop_ratio_from_config_lists_and_validated():
    assert AugmentConfig(crop_ratio=[1, 1]).crop_ratio == (1.0, 1.0)  # as YAML gives it
    assert AugmentConfig(crop_ratio=[1, 1]).to_dict()["crop_ratio"] == [1.0, 1.0]
    for bad in ((4 / 3, 3 / 4), (0, 1), (1, 1, 1)):
        with pytest.raises(ValueError, match="crop_ratio"):
            AugmentConfig(crop_ratio=bad)


def test_normalize_matches_imagenet_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize(x)
    assert y.dtype == torch.float32
    assert y[0, :, 0, 0].tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    )


def test_lr_schedule_warmup_then_cosine():
    kw = dict(steps_per_epoch=10, lr=0.1, warmup_epochs=2, schedule_epochs=6)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(10, **kw) == pytest.approx(0.05)
    assert lr_at(20, **kw) == pytest.approx(0.1)
    assert lr_at(40, **kw) == pytest.approx(0.05)  # half-way through the cosine
    assert lr_at(59, **kw) < 0.001 and lr_at(60, **kw) == 0.0


def test_settings_normalise_config_values_and_name_bad_ones():
    s = SimSiamSettings(
        epochs=5, warmup_epochs=0, schedule_epochs=None, layers=["layer4", "layer2", "layer4"],
        augment={"vflip": True, "crop_ratio": [1, 1]},
    )  # fmt: skip
    assert s.schedule == 5 and s.layers == ("layer2", "layer4")
    assert s.augment == AugmentConfig(vflip=True, crop_ratio=(1, 1))
    assert SimSiamSettings().augment == AugmentConfig() and SimSiamSettings().schedule == 800
    with pytest.raises(ValueError, match="schedule_epochs=5"):
        SimSiamSettings(epochs=10, schedule_epochs=5)
    with pytest.raises(ValueError, match="backbone must be one of"):
        SimSiamSettings(backbone="vit")
    with pytest.raises(ValueError, match="pooling must be one of"):
        SimSiamSettings(pooling="median")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        SimSiamSettings(batch_size=0)


def test_model_shapes_and_loss_range():
    net, dim = build_backbone("resnet18")
    assert dim == 512 and not hasattr(net, "fc")
    model = SimSiam(net, dim)
    assert [type(m).__name__ for m in model.projector] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d",
    ]  # fmt: skip
    assert model.predictor[0].out_features == 128
    x = torch.randn(4, 3, PX, PX)
    assert -1.0 <= model(x, x).item() <= 1.0
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_backbone("vit")


def test_training_writes_history_and_contract_checkpoint(trained):
    out, summary = trained
    hist = read_tsv(history_path(out))
    assert list(hist.columns) == ["epoch", "loss", "lr", "seconds"]
    assert hist["epoch"].tolist() == [1, 2]
    assert all(math.isfinite(v) and -1 <= v <= 1 for v in hist["loss"])
    assert summary["n_patches"] == 16 and summary["n_patches_available"] == 40
    assert summary["batch_size"] == 8
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["kind"] == "simsiam-encoder" and ckpt["backbone"] == "resnet18"
    assert ckpt["scale"] == "20x" and ckpt["patch_px"] == PX and ckpt["feature_dim"] == 512
    assert ckpt["mean"] == [0.485, 0.456, 0.406]
    assert all(not k.startswith(("projector", "predictor")) for k in ckpt["state_dict"])
    assert summary["encoder_id"] == encoder_id(ckpt) and len(summary["encoder_id"]) == 12


def test_checkpoint_round_trip_gives_identical_features(trained):
    out, _ = trained
    ckpt = torch.load(out, weights_only=True)
    net, meta = load_encoder(out)
    assert not net.training and meta["scale"] == "20x" and "state_dict" not in meta
    fresh, _ = build_backbone("resnet18")
    fresh.load_state_dict(ckpt["state_dict"])
    x = normalize(torch.randint(0, 256, (5, 3, PX, PX), dtype=torch.uint8))
    with torch.inference_mode():
        f1, f2 = net(x), fresh.eval()(x)
        f0 = build_backbone("resnet18")[0].eval()(x)
    assert f1.shape == (5, 512) and torch.equal(f1, f2)
    assert not torch.allclose(f1, f0)  # the trained weights, not a fresh initialisation
    assert meta["encoder_id"] == load_encoder(out)[1]["encoder_id"]


def test_same_seed_gives_identical_weights(stores, trained, tmp_path):
    out, summary = trained
    again = train(stores, "20x", tmp_path / "again.pt", seed=3, **FAST)
    a = torch.load(out, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "again.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["encoder_id"] == summary["encoder_id"]
    other = train(stores, "20x", tmp_path / "other.pt", seed=4, **FAST)
    assert other["encoder_id"] != summary["encoder_id"]


def test_max_patches_small_batch_and_too_few(stores, tmp_path, caplog):
    s = train(stores, "5x", tmp_path / "m.pt", **{**FAST, "epochs": 1, "max_patches": 6})
    assert s["n_patches"] == 6 and s["batch_size"] == 6 and s["n_patches_available"] == 40
    assert "batch size reduced" in caplog.text
    one = {**FAST, "epochs": 1, "seed": 7, "max_patches": None}
    cached = train(stores, "5x", tmp_path / "c.pt", **one)
    lazy = train(stores, "5x", tmp_path / "l.pt", cache_mb=0, **one)
    assert lazy["n_patches"] == 40 and lazy["encoder_id"] == cached["encoder_id"]
    empty = make_store(tmp_path / "empty.h5", 0)
    with pytest.raises(ValueError, match="at least 2 patches"):
        train([empty], "20x", tmp_path / "e.pt", **FAST)
    assert not (tmp_path / "e.pt").exists()


@pytest.mark.parametrize("max_patches", [2, 30, None])
def test_patch_sample_cache_equals_lazy_reads(stores, max_patches):
    from csmil.slides.patchstore import open_patch_store

    cached = PatchSample(stores, "10x", max_patches, 4096, np.random.default_rng(0))
    lazy = PatchSample(stores, "10x", max_patches, 0, np.random.default_rng(0))
    assert cached.in_memory and not lazy.in_memory
    assert len(cached) == (40 if max_patches is None else max_patches)
    assert len(np.unique(cached.refs, axis=0)) == len(cached)  # drawn without replacement
    idx = np.arange(len(cached))[::-1]
    got = cached.batch(idx)
    assert np.array_equal(got, lazy.batch(idx))
    lazy.close()
    store_i, row = cached.refs[idx[0]]
    with open_patch_store(stores[store_i]) as st:
        assert np.array_equal(got[0], st.read("10x", np.array([row]))[0])


def test_default_readout_is_torchvision_average_of_layer4():
    import torchvision

    net, _ = build_backbone("resnet18")
    ref = torchvision.models.resnet18(weights=None)
    ref.fc = torch.nn.Identity()
    ref.load_state_dict(net.state_dict())  # strict: the same keys as torchvision without fc
    x = torch.randn(3, 3, PX, PX)
    with torch.inference_mode():
        assert torch.allclose(net.eval()(x), ref.eval()(x), atol=1e-6)


def test_pooling_and_layers_set_width_and_order_responses():
    torch.manual_seed(0)
    x = torch.randn(4, 3, PX, PX)
    feats = {}
    for pooling in ("avg", "gem", "max"):
        torch.manual_seed(1)  # same weights for each read-out
        net, dim = build_backbone("resnet18", pooling, ("layer4", "layer2"))
        assert dim == 128 + 512
        with torch.inference_mode():
            feats[pooling] = net.eval()(x)
        assert feats[pooling].shape == (4, dim)
    # post-ReLU maps are non-negative: mean <= cubic mean <= max, strictly on some channels
    assert (feats["avg"] <= feats["gem"] + 1e-5).all() and (
        feats["gem"] <= feats["max"] + 1e-5
    ).all()
    assert (feats["max"] > feats["avg"] + 1e-3).any()
    # the layer2 block comes first (stage order) and equals layer2's pooled map
    torch.manual_seed(1)
    net = build_backbone("resnet18", "max", ("layer4", "layer2"))[0].eval()
    with torch.inference_mode():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        l2 = net.layer2(net.layer1(h)).amax(dim=(2, 3))
    assert torch.allclose(feats["max"][:, :128], l2)
    assert build_backbone("resnet50", "avg", ("layer3", "layer4"))[1] == 1024 + 2048


def test_small_bright_spot_survives_max_pooling_better_than_average():
    """A 2x2 spot on a flat patch moves max-pooled features more than averaged ones."""
    flat = torch.zeros(1, 3, PX, PX)
    spot = flat.clone()
    spot[..., 10:12, 20:22] = 3.0
    shift = {}
    for pooling in ("avg", "max"):
        torch.manual_seed(2)
        net = build_backbone("resnet18", pooling, ("layer1",))[0].eval()
        with torch.inference_mode():
            a, b = net(flat), net(spot)
        shift[pooling] = ((b - a).norm() / a.norm().clamp(min=1e-6)).item()
    assert shift["max"] > 2 * shift["avg"]


def test_readout_options_are_validated():
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_backbone("resnet18", "median")
    with pytest.raises(ValueError, match="layers must be a non-empty subset"):
        build_backbone("resnet18", "avg", ("layer5",))
    with pytest.raises(ValueError, match="layers must be a non-empty subset"):
        build_backbone("resnet18", "avg", ())


def test_readout_is_stored_and_used_by_load_encoder(stores, trained, tmp_path):
    out, summary = trained
    kw = {**FAST, "epochs": 1}
    s = train(stores, "10x", tmp_path / "g.pt", seed=3, pooling="gem",
              layers=["layer3", "layer4"], **kw)  # fmt: skip
    ckpt = torch.load(tmp_path / "g.pt", weights_only=True)
    assert ckpt["pooling"] == "gem" and ckpt["layers"] == ["layer3", "layer4"]
    assert ckpt["feature_dim"] == 768 and ckpt["config"]["pooling"] == "gem"
    net, meta = load_encoder(tmp_path / "g.pt")
    x = normalize(torch.randint(0, 256, (2, 3, PX, PX), dtype=torch.uint8))
    with torch.inference_mode():
        f = net(x)
        fresh = build_backbone("resnet18", "gem", ("layer3", "layer4"))[0].eval()
        fresh.load_state_dict(ckpt["state_dict"])
        assert f.shape == (2, 768) and torch.equal(f, fresh(x))
    assert meta["encoder_id"] == s["encoder_id"]
    # same weights, other read-out: another encoder id; the default read-out keeps its id
    assert encoder_id({**ckpt, "pooling": "avg", "layers": ["layer4"]}) != s["encoder_id"]
    plain = torch.load(out, weights_only=True)
    legacy = {k: v for k, v in plain.items() if k not in ("pooling", "layers")}
    assert encoder_id(legacy) == summary["encoder_id"]
    torch.save({**ckpt, "feature_dim": 512}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="feature_dim=512"):
        load_encoder(tmp_path / "bad.pt")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_our_resnets_are_torchvisions_weight_for_weight_and_output_for_output(name):
    """The encoders' own ResNets (no torchvision import when embedding) give torchvision's
    module names, initial weights for a seed, and outputs."""
    import torchvision

    from csmil.encoders.resnet import RESNETS

    torch.manual_seed(5)
    ours = RESNETS[name]().eval()
    torch.manual_seed(5)
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_normalize_is_torchvisions():
    from torchvision.transforms.v2 import functional as TF

    from csmil.encoders.resnet import IMAGENET_MEAN, IMAGENET_STD

    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    ref = TF.normalize(x.float().div(255.0), list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert torch.equal(normalize(x), ref)


def test_tiling_imports_no_torch_and_embedding_no_torchvision():
    """Start-up is most of a toy slide's job: tiling needs neither, embedding only torch."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "import csmil.slides.tiling\n"
        "assert 'torch' not in sys.modules\n"
        "import csmil.encoders.embedding\n"
        "from csmil.slides.codec import decode_into, encode_patch\n"
        "b = np.frombuffer(encode_patch(np.zeros((8, 8, 3), np.uint8)), np.uint8)\n"
        "decode_into(b, 'jpeg', np.empty((8, 8, 3), np.uint8))\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
