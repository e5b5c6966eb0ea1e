"""Models: a registry of named networks with the training settings each was designed for.

Importing this package registers every model (the tutorial models and mvnet); ``list_models()``
shows them and ``create_model(name, ...)`` builds one for a given input shape and class count.
"""

from minivision.models import mvnet, tutorial  # noqa: F401  (imported to register their models)
from minivision.models.registry import (
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)
from minivision.models.summary import LayerRow, format_summary, summarize

#: The model used when the user names none and gives --epochs or --steps instead of a budget
#: (with a budget, ``budget.LADDER`` picks one): the 30-second network.
DEFAULT_MODEL = "mvnet-t"

__all__ = [
    "DEFAULT_MODEL",
    "LayerRow",
    "ModelInfo",
    "count_parameters",
    "create_model",
    "format_summary",
    "list_models",
    "model_info",
    "register_model",
    "summarize",
]
