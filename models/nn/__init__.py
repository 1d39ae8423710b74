"""The multi-task graph neural network: six message-passing families, per-dataset heads, forces, stress, loss.

``build_model(config)`` -> :class:`MultiHeadModel`; ``multitask_loss(pred, batch)``; ``precision_context``.
Family modules (``painn``, ``schnet``, ``egnn``, ``dimenet``, ``mace``, ``pna``) are imported lazily.
"""

from models.nn.loss import multitask_loss
from models.nn.model import FAMILIES, MultiHeadModel, build_model, count_parameters, normalize_config
from models.nn.precision import PRECISIONS, cast_batch, param_dtype, precision_context

__all__ = [
    "FAMILIES",
    "PRECISIONS",
    "MultiHeadModel",
    "build_model",
    "cast_batch",
    "count_parameters",
    "multitask_loss",
    "normalize_config",
    "param_dtype",
    "precision_context",
]
