import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from csmil.config import (
    ConfigError,
    derive_seed,
    load_config,
    load_sample_sheet,
    merge_overlay,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "config.yaml"
OVERLAYS = [
    ROOT / "configs" / "paper.yaml",
    ROOT / "tests" / "config" / "tiny.yaml",
    ROOT / "tests" / "config" / "toy_experiment.yaml",
]
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())


def test_default_and_paper_configs_are_valid():
    cfg = load_config(BASE)
    assert set(cfg["datasets"]) == {"micro", "macro"}
    assert cfg["mil"]["epochs"] == 100 and cfg["splits"]["n_folds"] == 10
    paper = load_config(BASE, ROOT / "configs" / "paper.yaml")
    assert paper["encoder"]["backbone"] == "resnet50"
    assert paper["tiling"]["patch_px"] == 256
    # every method of the paper and every CS-MIL ablation by default
    assert len(cfg["mil"]["methods"]) == 18
    assert set(cfg["mil"]["variants"]) <= set(cfg["mil"]["methods"])


def schema_at(*keys):
    node = SCHEMA
    for key in keys:
        node = node[key]
    return node


def test_schema_enums_are_the_registries():
    from csmil.encoders.simsiam import BACKBONES, POOLINGS, STAGES
    from csmil.mil.bags import BAG_MODES
    from csmil.mil.methods import CLUSTERINGS, option_names, registry_names
    from csmil.slides.codec import CODECS
    from csmil.toy.generator import COHORTS

    tiling = schema_at("properties", "tiling", "properties")
    assert tiling["patch_codec"]["enum"] == list(CODECS)

    encoder = schema_at("properties", "encoder", "properties")
    assert encoder["backbone"]["enum"] == list(BACKBONES)
    assert encoder["layers"]["items"]["enum"] == list(STAGES)
    assert encoder["pooling"]["enum"] == list(POOLINGS)
    toy = schema_at("properties", "datasets", "additionalProperties", "properties", "toy")
    assert toy["properties"]["cohort"]["enum"] == list(COHORTS)
    mil = schema_at("properties", "mil", "properties")
    assert mil["bag_mode"]["enum"] == list(BAG_MODES)
    variant = mil["variants"]["additionalProperties"]
    assert variant["properties"]["model"]["enum"] == registry_names()
    assert variant["propertyNames"]["enum"] == option_names()
    assert variant["properties"]["bag_mode"]["enum"] == list(BAG_MODES)
    assert variant["properties"]["clustering"]["enum"] == list(CLUSTERINGS)


def test_augment_keys_are_augment_settings():
    from csmil.encoders.augment import AugmentConfig

    keys = schema_at("properties", "encoder", "properties", "augment", "properties")
    assert set(keys) <= {f.name for f in dataclasses.fields(AugmentConfig)}


@pytest.mark.parametrize(
    "section, key",
    [("tiling", "patch_px"), ("mil", "epochs"), ("encoder", "backbone"), ("tables", "reference")],
)
def test_a_key_the_code_needs_is_required(section, key):
    cfg = yaml.safe_load(BASE.read_text())
    del cfg[section][key]
    with pytest.raises(ConfigError, match=rf"at '{section}'.*'{key}' is a required property"):
        validate_config(cfg)


def test_optional_keys_get_their_schema_defaults():
    cfg = yaml.safe_load(BASE.read_text())
    for key in ("layers", "pooling", "schedule_epochs", "max_patches", "augment"):
        del cfg["encoder"][key]
    del cfg["mil"]["variants"], cfg["mil"]["standardise"]
    cfg = validate_config(cfg)
    assert cfg["encoder"]["layers"] == ["layer4"] and cfg["encoder"]["pooling"] == "avg"
    assert cfg["encoder"]["schedule_epochs"] is None and cfg["encoder"]["max_patches"] is None
    assert cfg["encoder"]["augment"] == {} and cfg["mil"]["variants"] == {}
    assert cfg["mil"]["standardise"] is False


def test_the_schema_rejects_what_the_code_rejects():
    cfg = yaml.safe_load(BASE.read_text())
    cfg["encoder"]["backbone"] = "resnet34"
    with pytest.raises(ConfigError, match="encoder.backbone"):
        validate_config(cfg)
    cfg = yaml.safe_load(BASE.read_text())
    cfg["mil"]["variants"]["csmil"]["fusoin"] = "mean"
    with pytest.raises(ConfigError, match="mil.variants.csmil"):
        validate_config(cfg)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_merge_as_snakemake_merges_them(overlay):
    from snakemake.utils import update_config

    ours = merge_overlay(yaml.safe_load(BASE.read_text()), yaml.safe_load(overlay.read_text()))
    theirs = yaml.safe_load(BASE.read_text())
    update_config(theirs, yaml.safe_load(overlay.read_text()))
    assert ours == theirs
    validate_config(ours)


def test_overlays_keep_what_their_runs_need():
    """An overlay cannot remove a key of config.yaml: what the paper and tiny settings leave
    at the code's defaults is set back explicitly."""
    from csmil.encoders.augment import AugmentConfig
    from csmil.mil.methods import configured_methods
    from csmil.mil.models import model_options

    for name in ("configs/paper.yaml", "tests/config/tiny.yaml"):
        cfg = load_config(BASE, ROOT / name)
        assert AugmentConfig(**cfg["encoder"]["augment"]) == AugmentConfig(), name
        csmil = configured_methods(cfg["mil"], cfg["tables"]["reference"])["csmil"]
        assert csmil.options == model_options("csmil"), name  # the released code's CS-MIL
        assert cfg["mil"]["standardise"] is False and cfg["mil"]["bag_mode"] == "cluster"
    tiny = load_config(BASE, ROOT / "tests" / "config" / "tiny.yaml")
    assert {ds: spec["toy"]["n_patients"] for ds, spec in tiny["datasets"].items()} == {
        "micro": 6,
        "macro": 6,
    }
    assert len(tiny["mil"]["methods"]) == 18 and tiny["splits"]["n_folds"] == 3
    paper = load_config(BASE, ROOT / "configs" / "paper.yaml")
    assert paper["mil"]["methods"] == load_config(BASE)["mil"]["methods"]
    toy = load_config(BASE, ROOT / "tests" / "config" / "toy_experiment.yaml")
    assert toy["mil"]["variants"] == load_config(BASE)["mil"]["variants"]


def test_configuration_imports_no_pipeline_stage():
    code = (
        "import sys, csmil.config; print(sorted(m for m in sys.modules if m.startswith('csmil')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['csmil', 'csmil.config']"


def test_a_mistyped_method_fails_the_dry_run_with_the_valid_names(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text(yaml.safe_dump({"mil": {"methods": ["csmil", "deepatnmisl_20x"]}}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
           "-n", "--configfile", str(BASE), str(overlay)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "mil.methods: unknown MIL method 'deepatnmisl_20x'" in text
    assert "deepattnmisl_20x, deepattnmisl_10x, deepattnmisl_5x" in text
    assert "csmil, deepattnmisl, deepattnmisl_multi, dsmil" in text
    assert not (tmp_path / "results").exists()


def test_unknown_key_fails_with_its_location():
    cfg = yaml.safe_load(BASE.read_text())
    bad = copy.deepcopy(cfg)
    bad["mil"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"at 'mil'.*epoch"):
        validate_config(bad)
    bad = copy.deepcopy(cfg)
    bad["datasets"]["micro"]["toy"]["cohort"] = "mezzo"
    with pytest.raises(ConfigError, match="datasets.micro"):
        validate_config(bad)


def test_defaults_are_filled():
    cfg = yaml.safe_load(BASE.read_text())
    del cfg["datasets"]["micro"]["toy"]["size_px"]
    assert validate_config(cfg)["datasets"]["micro"]["toy"]["size_px"] == 3072


def write_sheet(path, rows):
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def test_sample_sheet_errors_name_the_row(tmp_path):
    sheet = tmp_path / "s.tsv"
    write_sheet(
        sheet,
        [
            {"slide_id": "a", "patient_id": "p1", "path": "a.svs", "label": 1},
            {"slide_id": "b c", "patient_id": "p2", "path": "b.svs", "label": 2},
        ],
    )
    with pytest.raises(ConfigError, match=r"row 3 \(slide 'b c'\)"):
        load_sample_sheet(sheet)


def test_sample_sheet_checks_columns_duplicates_and_patient_labels(tmp_path):
    sheet = tmp_path / "s.tsv"
    write_sheet(sheet, [{"slide_id": "a", "path": "a.svs", "label": 1}])
    with pytest.raises(ConfigError, match="patient_id"):
        load_sample_sheet(sheet)
    write_sheet(
        sheet,
        [
            {"slide_id": "a", "patient_id": "p1", "path": "a.svs", "label": 1},
            {"slide_id": "a", "patient_id": "p2", "path": "b.svs", "label": 0},
        ],
    )
    with pytest.raises(ConfigError, match="unique"):
        load_sample_sheet(sheet)
    write_sheet(
        sheet,
        [
            {"slide_id": "a", "patient_id": "p1", "path": "a.svs", "label": 1},
            {"slide_id": "b", "patient_id": "p1", "path": "b.svs", "label": 0},
        ],
    )
    with pytest.raises(ConfigError, match="p1"):
        load_sample_sheet(sheet)


def test_sample_sheet_parses_optional_columns(tmp_path):
    sheet = tmp_path / "s.tsv"
    write_sheet(
        sheet,
        [
            {
                "slide_id": "a",
                "patient_id": "p1",
                "path": "a.svs",
                "label": 1,
                "pretrain": "true",
                "mpp": "0.25",
            },
            {
                "slide_id": "b",
                "patient_id": "p2",
                "path": "b.svs",
                "label": 0,
                "pretrain": "",
                "mpp": "",
            },
        ],
    )
    df = load_sample_sheet(sheet)
    assert df["pretrain"].tolist() == [True, False]
    assert df.loc[0, "mpp"] == 0.25 and pd.isna(df.loc[1, "mpp"])
    assert df["label"].tolist() == [1, 0]


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "micro") == derive_seed(0, "micro")
    assert derive_seed(0, "micro") != derive_seed(0, "macro")
    assert 0 <= derive_seed(5, "x", 3) < 2**31


def test_the_default_run_fills_every_row_of_tables_2_and_3():
    from csmil.mil.methods import configured_methods
    from csmil.reporting.tables import TABLE2_SLOTS, TABLE3_SLOTS, _slots

    cfg = load_config(BASE)
    reference = cfg["tables"]["reference"]
    specs = list(configured_methods(cfg["mil"], reference).values())
    slots = _slots(TABLE2_SLOTS, specs, reference) + _slots(TABLE3_SLOTS, specs, reference)
    assert all(method is not None for _, method in slots), slots
