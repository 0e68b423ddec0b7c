import pytest

from csmil.mil.methods import configured_methods, method_spec, resolve
from csmil.mil.models import model_options


def test_a_variant_sets_model_options_and_training_options():
    spec = resolve("csmil_naive", {"model": "csmil", "bag_mode": "naive", "fusion": "mean"})
    assert (spec.model, spec.bag_mode, spec.clustering) == ("csmil", "naive", "20x")
    assert spec.given == {"fusion": "mean"}
    assert spec.options == {**model_options("csmil"), "fusion": "mean"}
    assert method_spec("deepattnmisl_5x", {}, "cluster").clustering == "5x"
    assert method_spec("csmil", {"csmil": {"model": "csmil", "clustering": "all"}}).clustering == (
        "all"
    )


def test_bad_training_options_name_the_valid_values():
    with pytest.raises(ValueError, match=r"bag_mode must be one of \('cluster', 'naive'\)"):
        resolve("csmil", {"bag_mode": "random"})
    with pytest.raises(ValueError, match="clustering must be one of"):
        resolve("csmil", {"clustering": "40x"})


def test_configured_methods_resolve_methods_reference_and_variants():
    mil = {
        "methods": ["deepattnmisl_20x"],
        "variants": {"csmil_tanh": {"model": "csmil", "scale_activation": "tanh"}},
        "bag_mode": "naive",
    }
    specs = configured_methods(mil, "csmil")
    assert list(specs) == ["deepattnmisl_20x", "csmil"]
    assert all(s.bag_mode == "naive" for s in specs.values())
    bad = {**mil, "variants": {"csmil_x": {"model": "csmil", "fusion": "concta"}}}
    with pytest.raises(ValueError, match=r"mil.variants: .*fusion"):
        configured_methods(bad, "csmil")
    with pytest.raises(ValueError, match=r"tables.reference: unknown MIL method 'cs_mil'"):
        configured_methods(mil, "cs_mil")
