"""The registry of MIL models: config method name -> constructor, and the factory."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from csmil import SCALES
from csmil.mil.models.base import MILModel
from csmil.mil.models.csmil_model import CSMIL
from csmil.mil.models.deepattnmisl import MSDAMIL, DeepAttnMISL, DeepAttnMISLMulti
from csmil.mil.models.dsmil import DSMIL
from csmil.mil.models.dtfd import DTFD
from csmil.mil.models.gated_attention import GatedAttentionMIL
from csmil.mil.models.hagmil import HAGMIL
from csmil.mil.models.hipt import HIPT

#: Registry name -> model class (paper §5.1 order). Keys are the config's method names.
MIL_MODELS: dict[str, type[MILModel]] = {
    cls.name: cls
    for cls in (
        DeepAttnMISL,
        GatedAttentionMIL,
        DeepAttnMISLMulti,
        MSDAMIL,
        DSMIL,
        DTFD,
        HIPT,
        HAGMIL,
        CSMIL,
    )
}


def _valid_names() -> str:
    return ", ".join(sorted(MIL_MODELS))


def _get(name: str) -> type[MILModel]:
    if name not in MIL_MODELS:
        raise ValueError(f"unknown MIL model {name!r}; valid names are: {_valid_names()}")
    return MIL_MODELS[name]


def model_options(name: str) -> dict[str, Any]:
    """The options a registered model accepts, with their defaults."""
    params = inspect.signature(_get(name).__init__).parameters
    return {p.name: p.default for p in params.values() if p.kind is p.KEYWORD_ONLY}


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(f"{k} (default {v!r})" for k, v in accepted.items()) or "none"
        raise TypeError(
            f"MIL model {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"its options are: {listed}"
        )


def create_mil_model(name: str, in_dim: int, **options: Any) -> MILModel:
    """Build the registered model ``name`` for ``in_dim``-d features with ``options``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names) or a bad option value.
        TypeError: an option the model does not take (the message lists its options).
    """
    cls = _get(name)
    _check_options(name, options)
    return cls(in_dim, **options)


_SCALE_SUFFIX = re.compile(r"^(?P<base>[a-z0-9_]+)_(?P<scale>\d+x)$")


def resolve_method(
    method_name: str, options: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """Map a config method name (and its optional ``mil.variants`` entry) to
    ``(registry_name, options)`` for :func:`create_mil_model`.

    - a registry name (``"csmil"``) maps to itself with ``options``;
    - ``"<model>_<scale>"`` for a single-scale model (``"deepattnmisl_5x"``) maps to the model
      with ``scale=<scale>``;
    - any other name needs ``options["model"]`` naming the registry entry; the remaining
      options go to the constructor (e.g. ``csmil_tanh: {model: csmil, scale_activation:
      tanh}``).

    Raises:
        ValueError: an unknown method or model name, or a scale suffix that contradicts
            ``options["scale"]``.
        TypeError: an option the model does not take.
    """
    opts = dict(options or {})
    model = opts.pop("model", None)
    if model is not None:
        if model not in MIL_MODELS:
            raise ValueError(
                f"method {method_name!r}: model {model!r} is not a registered MIL model; "
                f"valid names are: {_valid_names()}"
            )
        name = model
    elif method_name in MIL_MODELS:
        name = method_name
    else:
        match = _SCALE_SUFFIX.match(method_name)
        base = match["base"] if match else None
        if base not in MIL_MODELS or "scale" not in model_options(base):
            single = [n for n in MIL_MODELS if "scale" in model_options(n)]
            forms = ", ".join(f"{n}_{s}" for n in single for s in SCALES)
            raise ValueError(
                f"unknown MIL method {method_name!r}: use a registered name "
                f"({_valid_names()}), a single-scale form ({forms}), or declare it under "
                f"mil.variants with 'model: <registered name>' and its options"
            )
        scale = match["scale"]
        if scale not in SCALES:
            raise ValueError(
                f"method {method_name!r}: scale {scale!r} is not one of {', '.join(SCALES)}"
            )
        if opts.get("scale", scale) != scale:
            raise ValueError(
                f"method {method_name!r} names scale {scale} but its options say "
                f"scale={opts['scale']!r}; make them agree"
            )
        opts["scale"] = scale
        name = base
    _check_options(name, opts)
    return name, opts
