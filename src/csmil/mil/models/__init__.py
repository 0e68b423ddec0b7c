"""MIL models: the batch contract, one registry, the factory and checkpoints.

>>> model = create_mil_model("csmil", 2048)
>>> model.param_count()
137475
"""

from csmil.mil.models.base import (
    MILBatch,
    MILModel,
    MILOutput,
    attention_pool,
    count_parameters,
    masked_softmax,
)
from csmil.mil.models.checkpoint import load_mil_checkpoint, save_mil_checkpoint
from csmil.mil.models.registry import MIL_MODELS, create_mil_model, model_options, resolve_method

__all__ = [
    "MIL_MODELS",
    "MILBatch",
    "MILModel",
    "MILOutput",
    "attention_pool",
    "count_parameters",
    "create_mil_model",
    "load_mil_checkpoint",
    "masked_softmax",
    "model_options",
    "resolve_method",
    "save_mil_checkpoint",
]
