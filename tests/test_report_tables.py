import numpy as np
import pandas as pd
import pytest

from csmil.evaluation.compare import COMPARE_COLUMNS
from csmil.io import write_tsv
from csmil.mil.models import create_mil_model, save_mil_checkpoint
from csmil.mil.results import MEMORY_COLUMNS
from csmil.reporting.tables import (
    CPU_LABEL,
    GPU_LABEL,
    NOT_RUN,
    RSS_LABEL,
    dataset_counts,
    display_name,
    method_spec,
    setting,
    table1,
    table2,
    table3,
    table4,
    table6,
    write_report_table,
)

VARIANTS = {
    "csmil_tanh": {"model": "csmil", "scale_activation": "tanh"},
    "csmil_mean": {"model": "csmil", "fusion": "mean"},
    "csmil_naive": {"model": "csmil", "bag_mode": "naive"},
    "csmil_softmax": {"model": "csmil", "scale_normalisation": "softmax"},
}
METHODS = ["deepattnmisl_20x", "dsmil", "csmil", *VARIANTS]


def comparison(methods, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for m in methods:
        row = dict.fromkeys(COMPARE_COLUMNS, np.nan)
        row.update(method=m, reference="csmil", auc=rng.uniform(0.5, 1), ap=rng.uniform(0.5, 1))
        if m != "csmil":
            row.update(p_auc_delong=0.01, p_ap_bootstrap=0.2)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


@pytest.fixture
def specs():
    return [method_spec(m, VARIANTS, "cluster") for m in METHODS]


def test_method_spec_fills_defaults_and_bag_mode(specs):
    by = {s.method: s for s in specs}
    assert by["deepattnmisl_20x"].model == "deepattnmisl"
    assert by["deepattnmisl_20x"].options == {"scale": "20x"}
    assert by["csmil_naive"].bag_mode == "naive" and "bag_mode" not in by["csmil_naive"].options
    assert by["csmil_tanh"].options["shared_embedding"] is True
    assert display_name(by["deepattnmisl_20x"]) == "DeepAttnMISL (20x)"
    assert setting(by["deepattnmisl_20x"]) == ("Single", "20x")
    assert setting(method_spec("deepattnmisl_5x")) == ("Single", "5x")
    assert setting(method_spec("deepattnmisl_multi")) == ("Multiple", "all")
    assert setting(method_spec("csmil")) == ("Multiple", "20x")
    assert setting(by["csmil_naive"]) == ("Multiple", "none (random bags)")


def test_table1_lists_baselines_and_reference_last(specs):
    comps = {"micro": comparison(METHODS), "macro": comparison(METHODS, 1)}
    csv, md = table1(comps, specs, "csmil")
    # ablation variants go to tables 2/3; the softmax variant fills no slot and stays here
    assert csv["method"].tolist() == ["deepattnmisl_20x", "dsmil", "csmil_softmax", "csmil"]
    row = csv.set_index("method").loc["dsmil"]
    micro = comps["micro"].set_index("method").loc["dsmil"]
    assert row["micro_auc"] == micro["auc"] and row["micro_p_auc"] == 0.01
    assert row["micro_sig_auc"] == "*" and row["micro_sig_ap"] == "N.S."
    assert csv.set_index("method").loc["csmil", "macro_sig_auc"] == "Ref."
    assert md.set_index("method").loc["dsmil", "micro p (AUC)"] == "0.01 *"
    assert md.set_index("method").loc["csmil", "micro p (AP)"] == "Ref."


def test_table2_and_3_fill_slots_and_mark_absent_variants(specs):
    comps = {"micro": comparison(METHODS)}
    csv2, _ = table2(comps, specs, "csmil")
    assert csv2[["layer_kernel", "activation", "method"]].values.tolist() == [
        ["Non-sharing", "Tanh", NOT_RUN],
        ["Non-sharing", "ReLU", NOT_RUN],
        ["Sharing", "Tanh", "csmil_tanh"],
        ["Sharing", "ReLU", "csmil"],
    ]
    assert csv2.loc[0, "micro_sig_auc"] == NOT_RUN and np.isnan(csv2.loc[0, "micro_auc"])
    csv3, md3 = table3(comps, specs, "csmil")
    assert csv3["method"].tolist() == ["csmil_mean", NOT_RUN, "csmil_naive", "csmil"]
    assert md3.loc[1, "micro AUC"] == NOT_RUN
    assert csv3.loc[3, "micro_sig_ap"] == "Ref."


def test_tables_without_any_variant_still_build():
    specs = [method_spec(m) for m in ("csmil", "deepattnmisl_5x")]
    comps = {"d": comparison(["csmil", "deepattnmisl_5x"])}
    csv2, _ = table2(comps, specs, "csmil")
    assert (csv2["method"] == NOT_RUN).sum() == 3
    csv1, _ = table1(comps, specs, "csmil")
    assert csv1["method"].tolist() == ["deepattnmisl_5x", "csmil"]


def test_dataset_counts_follow_the_fold_partition():
    splits = pd.DataFrame(
        {"patient_id": list("abcdef"), "label": [0, 1, 0, 1, 0, 1], "fold": [0, 0, 1, 1, 2, 2]}
    )
    patches = dict(zip("abcdef", [10, 20, 30, 40, 50, 60], strict=True))
    slides = dict.fromkeys("abcdef", 1) | {"a": 2}
    c = dataset_counts(splits, patches, slides, n_test_bags=100)
    # fold 0: val {c,d}=70, train {e,f}=110; fold 1: val {e,f}=110, train {a,b}=30;
    # fold 2: val {a,b}=30, train {c,d}=70
    assert c["validation_patches_per_fold"] == pytest.approx((70 + 110 + 30) / 3)
    assert c["training_patches_per_fold"] == pytest.approx((110 + 30 + 70) / 3)
    assert (c["test_slides"], c["test_patients"], c["test_bags"]) == (7, 6, 600)
    assert c["patches"] == 210
    assert table4({"x": c}).loc[0, "dataset"] == "x"
    with pytest.raises(KeyError, match="no patch or slide count"):
        dataset_counts(splits, {"a": 1}, slides, 10)


def test_table6_counts_parameters_and_reads_benchmarks(tmp_path):
    runs = {}
    for method, name, opts in (
        ("csmil", "csmil", {}),
        ("deepattnmisl_5x", "deepattnmisl", {"scale": "5x"}),
    ):
        files = {"models": [], "histories": [], "benchmarks": []}
        for k in range(2):
            d = tmp_path / method / f"fold{k}"
            save_mil_checkpoint(d / "model.pt", create_mil_model(name, 16, **opts))
            write_tsv(pd.DataFrame({"epoch": [1, 2], "seconds": [1.0, 3.0]}), d / "history.tsv")
            write_tsv(pd.DataFrame({"s": [5.0], "max_rss": [100.0 + 50 * k]}), d / "bench.tsv")
            for key, f in (
                ("models", "model.pt"),
                ("histories", "history.tsv"),
                ("benchmarks", "bench.tsv"),
            ):
                files[key].append(d / f)
        runs[method] = files
    df = table6({"toy": runs}).set_index("method")
    assert df.loc["csmil", "params_2048"] == 137475
    assert df.loc["deepattnmisl_5x", "params_2048"] == 135362
    assert df.loc["csmil", "in_dim"] == 16
    assert df.loc["csmil", "params"] == 16 * 64 + 64 + 137475 - 2048 * 64 - 64
    assert df.loc["csmil", "peak_memory_mb"] == 150.0
    assert df.loc["csmil", "memory_measure"] == RSS_LABEL
    assert df.loc["csmil", "seconds_per_epoch"] == 2.0
    # the histories' training memory wins over the benchmark's whole-job RSS; GPU over CPU
    h0, h1 = runs["csmil"]["histories"]
    cpu = MEMORY_COLUMNS["cpu"]
    write_tsv(pd.DataFrame({"epoch": [1, 2], "seconds": [1.0, 1.0], cpu: [3.0, 7.0]}), h0)
    write_tsv(pd.DataFrame({"epoch": [1, 2], "seconds": [1.0, 1.0], cpu: [2.0, 5.0]}), h1)
    df = table6({"toy": runs}).set_index("method")
    assert df.loc["csmil", "peak_memory_mb"] == 7.0
    assert df.loc["csmil", "memory_measure"] == CPU_LABEL
    assert df.loc["deepattnmisl_5x", "memory_measure"] == RSS_LABEL  # no record: the job's
    cuda = MEMORY_COLUMNS["cuda"]
    write_tsv(pd.DataFrame({"epoch": [1], "seconds": [1.0], cuda: [42.0]}), h0)
    df = table6({"toy": runs}).set_index("method")
    assert df.loc["csmil", "peak_memory_mb"] == 42.0
    assert df.loc["csmil", "memory_measure"] == GPU_LABEL


def test_write_report_table_writes_numbers_and_display(tmp_path):
    csv = pd.DataFrame({"method": ["a"], "auc": [0.91234]})
    md = pd.DataFrame({"method": ["a"], "AUC": ["0.9123 *"]})
    write_report_table(csv, tmp_path / "t.csv", tmp_path / "t.md", md, title="T", footnotes=["f"])
    assert pd.read_csv(tmp_path / "t.csv")["auc"].iloc[0] == pytest.approx(0.91234)
    text = (tmp_path / "t.md").read_text()
    assert "| a | 0.9123 * |" in text and text.rstrip().endswith("f")
