"""MIL model checkpoints: ``{"kind": "mil-model", "name", "in_dim", "options", "state_dict",
"config", "versions"}``, written atomically and read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from csmil.io import atomic_path
from csmil.mil.models.base import MILModel
from csmil.mil.models.registry import create_mil_model
from csmil.runtime import versions

log = logging.getLogger(__name__)

KIND = "mil-model"
_KEYS = ("kind", "name", "in_dim", "options", "state_dict")


def save_mil_checkpoint(
    path: str | os.PathLike, model: MILModel, config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (registry name, ``in_dim``, options, weights) with the resolved
    ``config`` and package versions to ``path`` atomically; return the path."""
    for attr in ("name", "in_dim", "options"):
        if not hasattr(model, attr):
            raise TypeError(
                f"cannot checkpoint {type(model).__name__}: it has no {attr!r}; build MIL "
                "models with csmil.mil.models.create_mil_model"
            )
    payload = {
        "kind": KIND,
        "name": model.name,
        "in_dim": int(model.in_dim),
        "options": dict(model.options),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config if config is not None else {},
        # plain str: torch.__version__ is a str subclass that weights_only loading refuses
        "versions": {str(k): str(v) for k, v in versions().items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.info("saved %s model (%d params) to %s", model.name, model.param_count(), path)
    return path


def load_mil_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[MILModel, dict[str, Any]]:
    """Rebuild the model saved at ``path`` on ``device``, in eval mode.

    Returns the model and the checkpoint's metadata (every key but ``state_dict``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MIL checkpoint {path} does not exist")
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a MIL model checkpoint (kind={kind!r}, expected {KIND!r})")
    missing = [k for k in _KEYS if k not in payload]
    if missing:
        raise ValueError(
            f"MIL checkpoint {path} lacks {', '.join(missing)}; re-train to rewrite it"
        )
    try:
        model = create_mil_model(payload["name"], payload["in_dim"], **payload["options"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"cannot rebuild the MIL model stored in {path}: {err}") from err
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
