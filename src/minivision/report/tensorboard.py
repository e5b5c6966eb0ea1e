"""``train --tensorboard``: scalars per epoch and the run's pictures as TensorBoard event files.

The events go to ``<run>/tensorboard``; ``tensorboard --logdir runs`` shows every run side by side.
PyTorch's ``SummaryWriter`` needs the ``tensorboard`` package (a dependency), and importing it
costs ~4 s, so it is imported only when the flag is given.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import MinivisionError

PICTURES = ("results.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "mistakes.png",
            "predictions.png", "calibration.png")


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MinivisionError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.folder = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def epoch(self, row: dict[str, float]) -> None:
        step = int(row["epoch"])
        for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"), ("accuracy/train", "train_accuracy"),
                         ("accuracy/val", "val_accuracy"), ("learning_rate", "lr"), ("epoch_seconds", "seconds")):
            value = float(row[key])
            if not math.isnan(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def add_pictures(self, run_dir: Path, step: int) -> list[str]:
        """The report's PNGs as images (HWC uint8), tagged by file name."""
        import numpy as np
        from PIL import Image

        tags = []
        for name in PICTURES:
            path = Path(run_dir) / name
            if path.is_file():
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("RGB"))
                tag = f"report/{name.removesuffix('.png')}"
                self.writer.add_image(tag, arr, step, dataformats="HWC")
                tags.append(tag)
        self.writer.flush()
        return tags

    def close(self) -> None:
        self.writer.close()
