"""Nested mappings of files as flat named inputs, and back.

A workflow job receives its files as named inputs: a flat mapping of name -> path or list of
paths. A library call that takes a nested mapping (dataset -> method -> fold files) gets its
files as inputs named by the keys joined with :data:`SEP` (``"runs__micro__csmil__models"``):
:func:`flatten` builds the names when the workflow is parsed, :func:`nest` rebuilds the mapping
in the job. No key may contain :data:`SEP`.

>>> flat = flatten({"curves": {"csmil": "a.tsv"}, "splits": "s.tsv"})
>>> flat
{'curves__csmil': 'a.tsv', 'splits': 's.tsv'}
>>> nest(flat)
{'curves': {'csmil': 'a.tsv'}, 'splits': 's.tsv'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SEP = "__"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``tree`` (nested mappings whose leaves are paths or lists of paths) as one flat mapping
    of names joined by :data:`SEP`.

    Raises:
        ValueError: a key that is empty or contains :data:`SEP` (its name could not be split
            back).
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        key = str(key)
        if not key or SEP in key:
            raise ValueError(
                f"{key!r} cannot name an input: names are joined by {SEP!r}, so a dataset, "
                f"method, patient or slide name must be non-empty and must not contain {SEP!r}"
            )
        name = f"{prefix}{SEP}{key}" if prefix else key
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def nest(named: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The nested mapping of named inputs built by :func:`flatten`; a leaf is a path (``str``)
    or a list of paths, in the order given.

    Accepts a mapping or ``(name, value)`` pairs, e.g. Snakemake's ``snakemake.input.items()``.
    """
    items = named.items() if isinstance(named, Mapping) else named
    out: dict[str, Any] = {}
    for name, value in items:
        *branches, leaf = str(name).split(SEP)
        node = out
        for key in branches:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"input {name!r} lies under an input that is a file")
        if leaf in node:
            raise ValueError(f"input {name!r} is given twice or also names a group")
        node[leaf] = str(value) if isinstance(value, str) else [str(v) for v in value]
    return out
