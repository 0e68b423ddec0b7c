"""Configuration and sample sheets: loading, JSON-schema validation, per-dataset views.

The workflow validates ``config.yaml`` and every sample sheet before any job runs; the same
functions serve the command line. Errors name the file, the key or the row, and the fix.

``config.yaml`` holds every setting; the files of ``configs/`` and ``tests/config/`` are
overlays holding only what differs. :func:`load_config` merges them as Snakemake merges
``--configfile`` files on top of the workflow's ``configfile:`` (:func:`merge_overlay`).
This module reads configuration only; it imports no pipeline stage.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

# The schemas ship inside the package (src/csmil/schemas links to the top-level schemas/).
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SAMPLE_COLUMNS = ("slide_id", "patient_id", "path", "label")
#: Values of the optional ``exclude`` column that keep a slide in; any other text leaves the
#: slide out of every stage and is reported as the reason in the slide QC table.
KEEP_VALUES = ("", "false", "no", "0")


class ConfigError(ValueError):
    """A configuration or sample sheet that cannot be used, with the reason and the fix."""


def _schema(name: str, schema_dir: str | os.PathLike | None = None) -> dict:
    path = Path(schema_dir or SCHEMA_DIR) / name
    with open(path) as fh:
        return yaml.safe_load(fh)


def _apply_defaults(instance: Any, schema: dict) -> None:
    """Fill ``default`` values of object properties (recursively) into ``instance``."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub and key not in instance:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _apply_defaults(instance[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _apply_defaults(value, extra)


def validate_config(config: dict, schema_dir: str | os.PathLike | None = None) -> dict:
    """Validate a configuration mapping against ``config.schema.yaml``; fill defaults."""
    schema = _schema("config.schema.yaml", schema_dir)
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path)
    )
    if errors:
        lines = [f"  - at '{'.'.join(map(str, e.path)) or '<top>'}': {e.message}" for e in errors]
        raise ConfigError(
            "the configuration does not match schemas/config.schema.yaml:\n" + "\n".join(lines)
        )
    _apply_defaults(config, schema)
    return config


def merge_overlay(base: dict, overlay: Mapping) -> dict:
    """``base`` updated in place by ``overlay``, as Snakemake merges ``--configfile`` files:
    a mapping is merged key by key (recursively), any other value (a list, a number)
    replaces the base's. An overlay can therefore add or change keys but not remove them."""
    for key, value in overlay.items():
        if isinstance(value, Mapping):
            node = base.get(key)
            base[key] = merge_overlay(node if isinstance(node, dict) else {}, value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_config(path: str | os.PathLike, *overlays: str | os.PathLike) -> dict:
    """Read a YAML configuration file, merge ``overlays`` on top (:func:`merge_overlay`), in
    order, and validate the result."""
    paths = [path, *overlays]
    config: dict = {}
    for p in paths:
        with open(p) as fh:
            merge_overlay(config, yaml.safe_load(fh) or {})
    try:
        return validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"{' + '.join(map(str, paths))}: {err}") from None


def load_sample_sheet(path: str | os.PathLike, base_dir: str | os.PathLike | None = None):
    """Read a sample sheet TSV and validate every row; relative slide paths are resolved
    against ``base_dir`` (default: the sheet's folder is NOT used; paths are taken as given
    relative to the working directory, as Snakemake does).

    Returns a DataFrame with at least ``slide_id, patient_id, path, label, pretrain, exclude``
    (``exclude`` is ``""`` for a slide that is kept, else the reason it is left out).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sample sheet {path} does not exist")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    return validate_sample_sheet(df, source=str(path), base_dir=base_dir)


def _coerce_row(row: dict) -> dict:
    out = dict(row)
    if out.get("label", "") != "":
        try:
            out["label"] = int(out["label"])
        except ValueError:
            pass
    if "pretrain" in out:
        text = str(out["pretrain"]).strip().lower()
        if text in ("", "false", "0", "no"):
            out["pretrain"] = False
        elif text in ("true", "1", "yes"):
            out["pretrain"] = True
    if "exclude" in out:
        text = str(out["exclude"]).strip()
        out["exclude"] = "" if text.lower() in KEEP_VALUES else text
    if "mpp" in out:
        text = str(out["mpp"]).strip()
        try:
            out["mpp"] = float(text) if text not in ("", "nan", "NA") else None
        except ValueError:
            pass
    return out


def validate_sample_sheet(
    df: pd.DataFrame, source: str = "<sample sheet>", base_dir: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Validate a sample sheet DataFrame row by row (errors name the row and column)."""
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(
            f"{source}: missing column(s) {missing}; a sample sheet needs tab-separated columns "
            f"{list(SAMPLE_COLUMNS)} (optional: pretrain, mpp, exclude)"
        )
    validator = jsonschema.Draft202012Validator(_schema("samples.schema.yaml"))
    rows, problems = [], []
    for i, raw in enumerate(df.to_dict("records")):
        row = _coerce_row(raw)
        for err in validator.iter_errors(row):
            where = ".".join(map(str, err.path)) or "row"
            problems.append(
                f"  - row {i + 2} (slide {raw.get('slide_id')!r}), {where}: {err.message}"
            )
        rows.append(row)
    if problems:
        raise ConfigError(
            f"{source}: invalid rows (line numbers count the header):\n" + "\n".join(problems)
        )
    out = pd.DataFrame(rows)
    dup = out["slide_id"][out["slide_id"].duplicated()].unique()
    if len(dup):
        raise ConfigError(f"{source}: slide_id must be unique; repeated: {list(dup)}")
    per_patient = out.groupby("patient_id")["label"].nunique()
    mixed = per_patient[per_patient > 1].index.tolist()
    if mixed:
        raise ConfigError(
            f"{source}: patients with slides of different labels: {mixed}; labels are per patient"
        )
    if "pretrain" not in out.columns:
        out["pretrain"] = False
    out["pretrain"] = out["pretrain"].astype(bool)
    if "exclude" not in out.columns:
        out["exclude"] = ""
    if base_dir is not None:
        out["path"] = [str(Path(base_dir) / p) if not os.path.isabs(p) else p for p in out["path"]]
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class SheetIndex:
    """A validated sample sheet indexed once, so that each lookup costs O(1): the workflow asks
    for one slide's row or one patient's slides once per job, tens of thousands of times while
    it plans a large cohort, and a pandas lookup per job would make planning quadratic.

    ``rows`` maps slide id -> that row (column -> value; a missing ``mpp`` is None), in sheet
    order; ``by_patient`` maps patient id -> its slide ids in sheet order, patients sorted.
    Slides whose ``exclude`` column holds a reason are in neither: ``excluded`` maps them to
    that reason, and a patient whose slides are all excluded leaves the cohort.
    """

    rows: dict[str, dict[str, Any]]
    by_patient: dict[str, list[str]]
    excluded: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> SheetIndex:
        """Index a sheet as :func:`validate_sample_sheet` returns it (slide ids unique)."""
        rows, excluded = {}, {}
        for row in df.to_dict("records"):
            mpp = row.get("mpp")
            if isinstance(mpp, float) and math.isnan(mpp):  # empty cell: the file's own MPP
                row["mpp"] = None
            slide = str(row["slide_id"])
            if slide in rows or slide in excluded:
                raise ConfigError(f"slide_id must be unique to index a sample sheet: {slide!r}")
            reason = str(row.get("exclude") or "")
            if reason:
                excluded[slide] = reason
            else:
                rows[slide] = row
        by_patient: dict[str, list[str]] = {}
        for slide, row in rows.items():
            by_patient.setdefault(str(row["patient_id"]), []).append(slide)
        return cls(rows, {p: by_patient[p] for p in sorted(by_patient)}, excluded)

    def row(self, slide: str) -> dict[str, Any]:
        """The row of ``slide``; a KeyError names the slide when the sheet lacks it."""
        try:
            return self.rows[slide]
        except KeyError:
            raise KeyError(f"slide {slide!r} is not in the sample sheet") from None

    def slides(self, patient: str) -> list[str]:
        """The slide ids of ``patient``, in sheet order."""
        try:
            return self.by_patient[patient]
        except KeyError:
            raise KeyError(f"patient {patient!r} is not in the sample sheet") from None

    @property
    def patients(self) -> list[str]:
        """Patient ids, sorted."""
        return list(self.by_patient)

    @property
    def pretrain_slides(self) -> list[str]:
        """Slide ids pinned for encoder pretraining, in sheet order."""
        return [s for s, row in self.rows.items() if row.get("pretrain", False)]

    def patient_labels(self) -> list[dict[str, Any]]:
        """``{"patient_id", "label"}`` of every patient, sorted by patient id."""
        return [
            {"patient_id": p, "label": self.rows[slides[0]]["label"]}
            for p, slides in self.by_patient.items()
        ]


def derive_seed(seed: int, *keys: str | int) -> int:
    """A stable 31-bit seed derived from a master seed and names (not Python's ``hash``)."""
    import hashlib

    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF
