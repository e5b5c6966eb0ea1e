"""Models: a registry of named networks with the training settings each was designed for.

Importing this package registers every model (the tutorial models and mvnet); ``list_models()``
shows them and ``create_model(name, ...)`` builds one for a given input shape and class count.

Every registered model is a ``ClassifierNet`` (``base.py``; ``create_model`` checks it) and shows
where to cut it, as timm's models do. With ``x`` the preprocessed input, float32 N x C x H x W:

* ``forward_features(x)`` -> penultimate features, float N x D: exactly what the final
  ``nn.Linear`` receives, taken after any dropout in front of it (dropout is the identity in eval
  mode, so eval-mode features are deterministic). float32, or bfloat16 under bf16 autocast.
* ``forward_head(features)`` -> logits, float N x K, no softmax: the final layer and anything
  after it (mvnet's fixed logit scale).
* ``forward(x) == forward_head(forward_features(x))``, bit for bit: ``forward`` is defined so.
* ``num_features`` is D and ``num_classes`` is K; ``get_classifier()`` is the final layer.
* ``reset_head(num_classes)`` replaces the final layer by a freshly initialised one (the net's
  own init) for K classes, on the same device and dtype, under the same name; the backbone's
  weights are kept, and the state-dict keys are unchanged, so saved runs still load.

D for 1 x 28 x 28 input: mvnet-t 64, mvnet-s 64, mvnet 128, mvnet-l 256 (any input size);
softmax 784 (C x H x W), mlp 100, cnn2 32, cnn2-bn 128, cnn1 128, cnn3 128, cnn4 128, efficientnet-lite0 1280.
"""

from minivision.models import efficientnet_lite, mvnet, tutorial  # noqa: F401  (imported to register their models)
from minivision.models.base import ClassifierNet
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
    "ClassifierNet",
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
