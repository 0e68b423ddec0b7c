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

A job that reads a whole cohort (every feature store of every patient) would otherwise have
tens of thousands of inputs, and Snakemake pays for each input of each such job while it plans;
the cohort's files are then gathered once by a listing job whose inputs they are, which writes
them as a *listing* (:func:`write_listing`); the jobs that read the cohort take the listing as
their one input and get the named files back with :func:`read_listing`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from csmil.io import atomic_path

SEP = "__"
LISTING_FORMAT = "csmil-input-listing"
LISTING_VERSION = 1

log = logging.getLogger(__name__)


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


def _items(named: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    return named.items() if isinstance(named, Mapping) else named


def write_listing(
    path: str | os.PathLike, named: Mapping[str, Any] | Iterable[tuple[str, Any]]
) -> None:
    """Write named inputs (name -> path or list of paths, e.g. ``snakemake.input.items()``)
    as a listing: JSON, names and their order kept, written atomically."""
    inputs = {
        str(name): str(value) if isinstance(value, str | os.PathLike) else list(map(str, value))
        for name, value in _items(named)
    }
    doc = {"format": LISTING_FORMAT, "version": LISTING_VERSION, "inputs": inputs}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
    n_files = sum(1 if isinstance(v, str) else len(v) for v in inputs.values())
    log.info("listed %d files under %d names in %s", n_files, len(inputs), path)


def read_listing(path: str | os.PathLike) -> dict[str, Any]:
    """The named inputs of a listing written by :func:`write_listing`, in their order."""
    with open(path) as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or doc.get("format") != LISTING_FORMAT:
        raise ValueError(f"{path} is not an input listing (no 'format: {LISTING_FORMAT}')")
    if doc.get("version") != LISTING_VERSION:
        raise ValueError(
            f"{path}: input listing version {doc.get('version')!r}, this csmil reads version "
            f"{LISTING_VERSION}; delete it and re-run the workflow to rewrite it"
        )
    return doc["inputs"]
