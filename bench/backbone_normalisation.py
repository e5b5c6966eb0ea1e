#!/usr/bin/env python3
"""Which input normalisation do the EfficientNet-Lite0 ImageNet weights expect?

    python3 bench/backbone_normalisation.py /tmp/x/cifar10-jpg/test --per-class 50

CIFAR-10 test pictures (the JPEG folder, the first N per class in file-name order), upsampled to
224 x 224 inside the network, scored by whether the ImageNet top-1 / top-5 holds a class of the
group matching the CIFAR-10 label (``GROUPS``: ImageNet-1k class indices; deer, which ImageNet lacks,
counts the antelopes), once with TF lite's normalisation (mean 127, std 128 on 0-255) and once with
ImageNet's statistics (0.485/0.456/0.406, 0.229/0.224/0.225). Not a test: the answer is recorded in
the card ``src/minivision/backbones/efficientnet-lite0.json`` and ``models/efficientnet_lite.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minivision.models import create_model
from minivision.pretrained import backbone_state


def _r(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


GROUPS = {  # CIFAR-10 class -> ImageNet-1k class indices
    "airplane": [404, 895, 908], "automobile": [407, 436, 468, 479, 511, 581, 609, 627, 656, 661, 717, 751, 817],
    "bird": _r(7, 24) + _r(80, 100) + _r(127, 146), "cat": _r(281, 285), "deer": _r(348, 353),
    "dog": _r(151, 268), "frog": [30, 31, 32], "horse": [339, 603],
    "ship": [403, 472, 484, 510, 554, 576, 625, 628, 693, 694, 724, 780, 814, 833, 871, 913, 914],
    "truck": [555, 569, 675, 717, 734, 864, 866, 867]}
NORMALISATIONS = {"tf-lite 127/128": ((127 / 255,) * 3, (128 / 255,) * 3),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="cifar10-jpg/test (one folder per class)")
    ap.add_argument("--per-class", type=int, default=50)
    a = ap.parse_args()
    xs, ys = [], []
    for ci, c in enumerate(GROUPS):
        for f in sorted((a.folder / c).glob("*.jpg"))[:a.per_class]:
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(ci)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    groups = [set(g) for g in GROUPS.values()]
    model = create_model("efficientnet-lite0", in_channels=3, image_size=32, num_classes=1000, input_size=224)
    model.load_state_dict(backbone_state("efficientnet-lite0"))
    model.eval()
    for label, (mean, std) in NORMALISATIONS.items():
        model.adapter.mean = torch.tensor(mean).view(1, 3, 1, 1)
        model.adapter.std = torch.tensor(std).view(1, 3, 1, 1)
        t, top1, top5 = time.time(), 0, 0
        with torch.inference_mode():
            for i in range(0, len(x), 50):
                for row, y in zip(model(x[i:i + 50]).topk(5, dim=1).indices.tolist(), ys[i:i + 50], strict=True):
                    top1 += row[0] in groups[y]
                    top5 += bool(groups[y] & set(row))
        print(f"{label:16s} n={len(x)}  top-1 match {100 * top1 / len(x):.1f}%  top-5 match "
              f"{100 * top5 / len(x):.1f}%  ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
