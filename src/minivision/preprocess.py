"""The one object that turns pixels into model input, saved with the model.

Training, evaluation, prediction, the HTTP service and export all call the same ``Preprocess``
read back from ``model.json``, so the input a model sees at prediction time is prepared exactly as
its training data was (size, channels, scaling, and for a user's photo the conversion in
``photo.py``: Zalando's steps for Fashion-MNIST-style models, a plain resize for the others).

Reading one (``from_dict``) needs no PyTorch, so a reader of an exported model (onnx_runtime.py) takes
the same object; torch is imported where tensors are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from .errors import MinivisionError
from .photo import PictureConversion, choose_conversion, default_conversion

if TYPE_CHECKING:
    import torch


@dataclass
class Preprocess:
    channels: int                      # 1 grayscale, 3 RGB
    size: tuple[int, int]              # (height, width) the model takes
    mean: list[float] = field(default_factory=list)  # per channel, on the 0-1 scale; [] = 0
    std: list[float] = field(default_factory=list)   # per channel; [] = 1
    # how a picture becomes a model input (photo.PictureConversion at this size and channels): zalando
    # for light-on-black grayscale data such as Fashion-MNIST, else resize; None = the plain resize
    photo: PictureConversion = None  # type: ignore[assignment]
    # what the network itself does to this input before its backbone (a pretrained one's adapter:
    # channels repeated, resized, the backbone's mean/std), as ``network_input()`` describes it; recorded
    # so a reader (export, another tool) knows, never applied here (the network does it). None: nothing.
    network_input: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.photo is None:
            self.photo = PictureConversion(tuple(self.size), self.channels)
        elif not isinstance(self.photo, PictureConversion):
            raise TypeError(f"photo must be a photo.PictureConversion, got {type(self.photo).__name__} "
                            "(PictureConversion.from_dict reads model.json's form)")
        elif (self.photo.size, self.photo.channels) != (tuple(self.size), self.channels):
            raise MinivisionError(f"the photo conversion makes {self.photo.channels} x {self.photo.size[0]} x "
                                  f"{self.photo.size[1]} pictures; the model takes {self.channels} x "
                                  f"{self.size[0]} x {self.size[1]}")

    @classmethod
    def fit(cls, x: torch.Tensor, normalize: str, conversion: PictureConversion | None = None) -> Preprocess:
        """Build from a uint8 training batch (N, C, H, W); ``standard`` measures mean/std on it; the
        photo conversion is chosen from the batch too (``photo.choose_conversion`` states the rule),
        ``conversion`` being the one the source made its pictures with (an image folder's fit)."""
        import torch

        c, h, w = (int(s) for s in x.shape[1:])
        photo = choose_conversion(x, conversion)
        if normalize == "unit":
            return cls(c, (h, w), photo=photo)
        total = torch.zeros(c, dtype=torch.float64)
        squares = torch.zeros(c, dtype=torch.float64)
        for i in range(0, len(x), 4096):  # in chunks: a float64 copy of 60,000 images would be 370 MB
            v = x[i:i + 4096].to(torch.float64).div_(255.0)
            total += v.sum((0, 2, 3))
            squares += v.square_().sum((0, 2, 3))
        n = x.shape[0] * h * w
        mean = total / n
        var = (squares / n - mean.square()) * n / max(n - 1, 1)
        return cls(c, (h, w), [round(float(m), 6) for m in mean],
                   [round(max(float(v), 1e-6) ** 0.5, 6) for v in var], photo)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) on any device -> float32 model input on that device."""
        import torch

        out = x.to(torch.float32) / 255.0
        if self.mean:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            out = (out - mean) / std
        return out.contiguous(memory_format=torch.channels_last)

    def image_to_uint8(self, img: Image.Image, background: str | None = None) -> torch.Tensor:
        """A decoded upright picture (``open_image``) -> uint8 (C, H, W) at the model's size and
        channels: ``self.photo.convert``. ``background`` (auto, light, dark) overrides the saved
        polarity of a zalando conversion."""
        import torch

        return torch.from_numpy(self.photo.convert(img, background))

    def to_dict(self) -> dict[str, Any]:
        """model.json's ``preprocess`` entry: channels, size, mean, std, photo (``PictureConversion.to_dict``)
        and, for a network that adapts its input, ``network_input``."""
        out = {"channels": self.channels, "size": list(self.size), "mean": list(self.mean), "std": list(self.std),
               "photo": self.photo.to_dict()}
        if self.network_input is not None:
            out["network_input"] = dict(self.network_input)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], dataset_name: str | None = None) -> Preprocess:
        """Read back ``to_dict``. A model.json written before the photo setting has no ``photo``:
        it gets ``photo.default_conversion(dataset_name)`` (zalando for Fashion-MNIST and MNIST). A
        malformed entry raises MinivisionError with a one-line message."""
        try:
            channels, size = int(d["channels"]), (int(d["size"][0]), int(d["size"][1]))
            mean, std = [float(v) for v in d.get("mean", [])], [float(v) for v in d.get("std", [])]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise MinivisionError(f"model.json has a malformed 'preprocess' entry ({e})") from None
        if "photo" in d:
            photo = PictureConversion.from_dict(d["photo"], size, channels)
        else:
            try:
                photo = default_conversion(dataset_name, size, channels)
            except MinivisionError as e:
                raise MinivisionError(f"model.json: {e}") from None
        network_input = d.get("network_input")  # older runs: none
        if network_input is not None and not isinstance(network_input, dict):
            raise MinivisionError("model.json has a malformed 'preprocess' entry (network_input is not a mapping)")
        return cls(channels, size, mean, std, photo, network_input)
