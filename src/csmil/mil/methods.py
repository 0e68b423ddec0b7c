"""Configured MIL methods: a method name of ``mil.methods`` and its ``mil.variants`` entry,
resolved to the registry model, its options, the bag mode and the phenotype clustering.

This is the one place a configured method is interpreted: training builds the model from
:attr:`MethodSpec.given`, the tables read :attr:`MethodSpec.options`, and the workflow resolves
every configured method when it is parsed, so a mistyped name fails the dry run.

A variant entry holds ``model`` (a registry name), the model's options, and two training
options that are not the model's: ``bag_mode`` (:data:`csmil.mil.bags.BAG_MODES`, default the
run's ``mil.bag_mode``) and ``clustering`` (:data:`CLUSTERINGS`, default
:func:`default_clustering`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from csmil import SCALES
from csmil.mil.bags import BAG_MODES
from csmil.mil.models import MIL_MODELS, create_mil_model, model_options, resolve_method

#: Phenotype clusterings bags can be drawn from: one scale's features, or all scales together.
CLUSTERINGS: tuple[str, ...] = (*SCALES, "all")
#: Options of a variant entry that configure training, not the model.
TRAINING_OPTIONS: tuple[str, ...] = ("bag_mode", "clustering")
#: Feature size of the probe model that checks a variant's option values.
_PROBE_DIM = 8


@dataclass(frozen=True)
class MethodSpec:
    """A configured method resolved to its registry model, full options and bag mode.

    ``options`` holds every option of the model (defaults filled in); ``given`` only those the
    configuration names (what the model is built with and its checkpoint records).
    """

    method: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    bag_mode: str = "cluster"
    clustering: str = "20x"
    given: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple:
        """What identifies the trained model; scorer options are moot without a scorer."""
        opts = dict(self.options)
        if self.model == "csmil" and opts.get("fusion") != "attention":
            opts.pop("scale_activation", None)
            opts.pop("scale_normalisation", None)
        return self.model, tuple(sorted(opts.items())), self.bag_mode


def default_clustering(registry_name: str, model_options: Mapping[str, Any]) -> str:
    """Phenotype clustering a model's bags use unless told otherwise: a single-scale model
    clusters at its own scale, the scales-as-instances model on all scales together, every
    other model (CS-MIL included, as the authors' code) on 20x features."""
    if "scale" in model_options:
        return str(model_options["scale"])
    if registry_name == "deepattnmisl_multi":
        return "all"
    return "20x"


def resolve(
    method: str, entry: Mapping[str, Any] | None = None, bag_mode: str = "cluster"
) -> MethodSpec:
    """Resolve ``method`` with its variant ``entry`` (``None``: a registry name or a
    single-scale form such as ``deepattnmisl_5x``); ``bag_mode`` is the run's default, which
    the entry may override.

    Raises:
        ValueError: an unknown method, model, bag mode or clustering (the message lists the
            valid ones).
        TypeError: an option the model does not take (the message lists its options).
    """
    opts = dict(entry or {})
    mode = opts.pop("bag_mode", bag_mode)
    if mode not in BAG_MODES:
        raise ValueError(f"method {method!r}: bag_mode must be one of {BAG_MODES}, got {mode!r}")
    clustering = opts.pop("clustering", None)
    if clustering is not None and clustering not in CLUSTERINGS:
        raise ValueError(
            f"method {method!r}: clustering must be one of {CLUSTERINGS}, got {clustering!r}"
        )
    name, given = resolve_method(method, opts)
    clustering = clustering or default_clustering(name, given)
    return MethodSpec(method, name, {**model_options(name), **given}, mode, clustering, given)


def method_spec(
    method: str, variants: Mapping[str, Mapping[str, Any]] | None = None, bag_mode: str = "cluster"
) -> MethodSpec:
    """:func:`resolve` ``method`` with its entry of ``variants`` (``mil.variants``), if any."""
    return resolve(method, (variants or {}).get(method), bag_mode)


def check_values(spec: MethodSpec) -> None:
    """Build the method's model on small features so that a bad option value (``fusion:
    concta``) fails now, not when training starts."""
    create_mil_model(spec.model, _PROBE_DIM, **spec.given)


def configured_methods(
    mil: Mapping[str, Any], reference: str | None = None
) -> dict[str, MethodSpec]:
    """Resolve every method of a ``mil`` configuration section (``methods``), the tables'
    ``reference`` and every ``variants`` entry, and check their option values. Returns method
    name -> spec for ``methods`` and the reference, in that order.

    Raises:
        ValueError: the first method or variant that does not resolve, prefixed with where it
            is configured; the message lists the valid names.
    """
    variants = mil.get("variants") or {}
    bag_mode = mil.get("bag_mode", "cluster")
    specs: dict[str, MethodSpec] = {}
    also = [] if reference is None else [reference]
    named = [(m, "mil.methods") for m in mil["methods"]] + [(m, "tables.reference") for m in also]
    named += [(m, "mil.variants") for m in variants]
    for method, place in named:
        if method in specs:
            continue
        try:
            spec = method_spec(method, variants, bag_mode)
            check_values(spec)
        except (TypeError, ValueError) as err:
            known = f" (variants configured: {', '.join(variants)})" if variants else ""
            raise ValueError(f"{place}: {err}{known}") from None
        specs[method] = spec
    keep = {*mil["methods"], *also}
    return {m: s for m, s in specs.items() if m in keep}


def registry_names() -> list[str]:
    """Every registered model name (the schema's ``model`` enum)."""
    return list(MIL_MODELS)


def option_names() -> list[str]:
    """Every key a variant entry may hold: ``model``, the training options and every option
    of a registered model (the schema's variant property names)."""
    names = ["model", *TRAINING_OPTIONS]
    for model in MIL_MODELS:
        names += [o for o in model_options(model) if o not in names]
    return names
