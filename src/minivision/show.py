"""``minivision show DATA``: the tutorials' first look at a dataset — a grid of sample images titled
with their class names, and how many images each class has in each split."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .data import load_dataset
from .data.dataset import Dataset
from .data.rules import dataset_messages, skipped_listing
from .errors import MinivisionError
from .fileio import new_run_dir, write_text


def class_counts(ds: Dataset) -> dict[str, list[int]]:
    """{split: images per class} for the splits the source has."""
    return {name: torch.bincount(s.y, minlength=ds.num_classes).tolist()
            for name, s in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if s is not None and len(s)}


def format_counts(ds: Dataset, counts: dict[str, list[int]]) -> str:
    width = max(len(c) for c in ds.classes + ["total"])
    splits = list(counts)
    lines = [f"{'class':<{width}}" + "".join(f"{s:>9}" for s in splits)]
    for i, name in enumerate(ds.classes):
        lines.append(f"{name:<{width}}" + "".join(f"{counts[s][i]:>9,}" for s in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(counts[s]):>9,}" for s in splits))
    return "\n".join(lines)


def sample_grid(ds: Dataset, split: str = "train", n: int = 40, seed: int = 0, ax: Any = None):
    """A figure of ``n`` random images of ``split`` (seeded), titled with their class names."""
    from .report.plots import image_grid
    from .report.run import sample_indices

    s = getattr(ds, split)
    if s is None or len(s) == 0:
        raise MinivisionError(f"{ds.name} has no {split} split")
    pick = sample_indices(len(s), min(n, len(s)), seed)
    return image_grid(s.x[pick], [ds.classes[int(c)] for c in s.y[pick]], ax=ax,
                      title=f"{ds.name}: {len(pick)} random {split} images")


def show_dataset(data: str = "fashion-mnist", *, data_dir: str | None = None, test_data: str | None = None,
                 split: str = "train", n: int = 40, seed: int = 0, out: str | Path = "runs",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``samples_<split>.png``, ``class_counts.png`` and ``class_counts.csv`` to a new show folder.

    Files the reader could not use are reported as ``train`` reports them (a line naming the first,
    all of them in the folder's ``skipped.txt``), with the reader's notes (e.g. an empty class left out)."""
    from .report.fonts import font_note
    from .report.plots import plot_class_counts
    from .report.style import save_figure

    ds = load_dataset(data, data_dir=data_dir, test_data=test_data)
    if split == "val" and ds.val is None:
        raise MinivisionError(f"{ds.name} has no val split of its own (training holds one out of train)")
    grid = sample_grid(ds, split, n, seed)
    counts = class_counts(ds)
    folder = new_run_dir(out, "show")
    samples = save_figure(grid, folder / f"samples_{split}.png")
    bars = save_figure(plot_class_counts(counts, ds.classes), folder / "class_counts.png")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", *counts])
    w.writerows([c, *(counts[s][i] for s in counts)] for i, c in enumerate(ds.classes))
    write_text(folder / "class_counts.csv", buf.getvalue())
    if ds.skipped:
        write_text(folder / "skipped.txt", skipped_listing(ds))
    for line in dataset_messages(ds):  # as train reports them: notes, then the files it could not use
        log(line)
    if (missing := font_note(ds.classes)) is not None:  # class names no installed font draws
        log(missing)
    log(ds.describe())
    log(format_counts(ds, counts))
    log(f"saved {samples}, {bars}, {folder / 'class_counts.csv'}")
    return {"dataset": ds, "counts": counts, "samples": samples, "class_counts": bars, "folder": folder}
