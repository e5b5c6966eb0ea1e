"""A tinted (sepia) copy of part of the CIFAR-10 JPEG folder: pictures whose three channels move together.

A model trained on such pictures meets ordinary colour photos as pictures unlike its training pictures;
bench/unsure.py measures how well its unsure check tells them apart (``--ood NAME=FOLDER``).

    python3 bench/tinted_folder.py CIFAR_DIR OUT [--train 600] [--test 200]

Each picture is made grey (PIL's ITU-R 601-2 luma L), then tinted: R = L, G = 0.85 L + 10, B = 0.65 L + 5;
the first N pictures of each class (sorted names) of ``train/`` and ``test/``, written as PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cifar", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=600, help="pictures per class from train/ (default 600)")
    p.add_argument("--test", type=int, default=200, help="pictures per class from test/ (default 200)")
    a = p.parse_args(argv)
    if a.out.exists():
        raise SystemExit(f"{a.out} exists: give a new folder")
    for split, n in (("train", a.train), ("test", a.test)):
        for cls in sorted(d for d in (a.cifar / split).iterdir() if d.is_dir()):
            (a.out / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                g = np.asarray(Image.open(f).convert("L"), dtype=np.float32)
                rgb = np.stack([g, g * 0.85 + 10, g * 0.65 + 5], -1).clip(0, 255).astype(np.uint8)
                Image.fromarray(rgb).save(a.out / split / cls.name / f"{f.stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
