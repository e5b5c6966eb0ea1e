"""The contract every registered network keeps: where to cut it into a backbone and a head (timm's).

Why: embeddings, fine-tuning on new classes and any "features of this image" feature need the
vector the last layer sees, and a new last layer. Finding "the last ``nn.Linear``" with a hook
breaks on the first net whose head is not a lone Linear (mvnet scales its logits after it) and
silently picks the wrong layer when a net's modules are not registered in call order. So each
net says where its head is, once, here; see the package docstring for the shapes.

State-dict keys are not affected: the head keeps the attribute name it always had, so saved
runs and checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from minivision.errors import MinivisionError

__all__ = ["ClassifierNet", "check_num_classes"]


def check_num_classes(num_classes: Any) -> None:
    """A classifier needs two classes at least: cross-entropy over one logit learns nothing."""
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2):
        what = "a classifier needs at least 2 classes"
        if isinstance(num_classes, int) and not isinstance(num_classes, bool):
            raise MinivisionError(f"{what}; this one was asked for {num_classes}")
        raise MinivisionError(f"{what}, given as a whole number (num_classes=10), not {num_classes!r}")


class ClassifierNet(nn.Module):
    """Base class of the registered nets: ``forward(x) = forward_head(forward_features(x))``.

    A subclass implements ``forward_features`` and ``forward_head`` and names its final layer in
    ``classifier_name``; this class gives it ``forward``, ``num_features``, ``num_classes``,
    ``get_classifier`` and ``reset_head``. It holds no state of its own.
    """

    #: attribute name of the final ``nn.Linear`` (the one ``reset_head`` replaces), e.g. "head"
    classifier_name: str

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, floating point N x D: exactly what the final ``nn.Linear`` receives.

        ``x`` is the preprocessed input, float N x C x H x W. Any dropout just before the final
        layer is included (the features are taken after it), so in training mode the features are
        dropped out and in eval mode, where dropout is the identity, they are deterministic. The
        dtype is the computation's: float32 normally, bfloat16 under bf16 autocast.
        """
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits N x K (no softmax) from penultimate ``features`` N x D: the final layer and
        whatever follows it (mvnet's fixed logit scale)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits N x K for preprocessed input N x C x H x W; bit-identical to
        ``forward_head(forward_features(x))`` because it is that."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final layer: ``nn.Linear(num_features, num_classes)``."""
        return self.get_submodule(self.classifier_name)

    @property
    def num_features(self) -> int:
        """D, the width of the penultimate features (the final layer's ``in_features``)."""
        return self.get_classifier().in_features

    @property
    def num_classes(self) -> int:
        """K, the number of logits (the final layer's ``out_features``)."""
        return self.get_classifier().out_features

    def init_from_data(self, x: torch.Tensor) -> bool:
        """Set any weights computed from the training data before training starts (mvnet's whitening
        stem), from preprocessed training pictures ``x``, float N x C x H x W. Returns whether the net
        had any; this default has none. Called once when a net is trained from scratch, never for a
        resumed run or a fine-tune: those weights are then saved with the rest."""
        return False

    def init_classifier(self, layer: nn.Linear) -> None:
        """Initialise a new final layer as the net initialises its own; PyTorch's default here."""

    def reset_head(self, num_classes: int) -> None:
        """Replace the final layer by a freshly initialised one for ``num_classes`` classes.

        The new layer has the same ``in_features``, bias or no bias, device, dtype and training
        mode as the old one, and the same attribute name, so the state-dict keys do not change;
        every other weight (the backbone) is kept as it is.
        """
        check_num_classes(num_classes)
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
        self.init_classifier(new)
        setattr(self, self.classifier_name, new.train(old.training))
