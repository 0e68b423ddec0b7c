import pytest

from csmil.inputs import flatten, nest


def test_nested_inputs_round_trip_in_order():
    tree = {
        "runs": {
            "micro": {"csmil": {"models": ["m0.pt", "m1.pt"], "benchmarks": ["b0.tsv"]}},
            "macro": {"deepattnmisl_20x": {"models": ["x.pt"], "benchmarks": []}},
        },
        "splits": "splits.tsv",
    }
    flat = flatten(tree)
    assert list(flat) == [
        "runs__micro__csmil__models",
        "runs__micro__csmil__benchmarks",
        "runs__macro__deepattnmisl_20x__models",
        "runs__macro__deepattnmisl_20x__benchmarks",
        "splits",
    ]
    back = nest(flat.items())
    assert back == tree
    assert list(back["runs"]) == ["micro", "macro"]


def test_names_that_cannot_be_split_back_are_refused():
    with pytest.raises(ValueError, match="must not contain '__'"):
        flatten({"slides": {"p01__s1": "a.svs"}})
    with pytest.raises(ValueError, match="non-empty"):
        flatten({"": "a.svs"})


def test_nest_refuses_a_file_that_is_also_a_group():
    with pytest.raises(ValueError, match="under an input that is a file"):
        nest({"a": "x.tsv", "a__b": "y.tsv"})
    with pytest.raises(ValueError, match="also names a group"):
        nest({"a__b": "y.tsv", "a": "x.tsv"})
