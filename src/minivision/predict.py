"""Pictures -> tensors -> labels, for files, folders and globs; one bad file never stops the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data.images import open_image
from .data.rules import expand_paths, is_pixel_csv  # noqa: F401 (predict's names; torch-free)
from .errors import MinivisionError
from .inference import (
    EMPTY_NOTE,
    blank_pictures,
    empty_reason,
    noise_picture,
    noise_pictures,
    pick_device,
    predict_features,
    predict_logits,
    view_logits,
)
from .photo import BACKGROUNDS
from .runfiles import LoadedModel
from .scores import tta_mode, write_csv  # noqa: F401 (write_csv: predict's name; torch-free)


def predict_images(lm: LoadedModel, images: list[Any], *, top_k: int = 5, device: str = "auto",
                   names: list[str] | None = None, tta: bool | str | None = None, inputs: bool = False,
                   background: str | None = None) -> list[dict[str, Any]]:
    """Predict paths, bytes or PIL images. Each result: path, label, index, score, top_k, unsure, reason; or
    path, error.

    Scores are calibrated: softmax(logits / T), T from the model's ``calibration`` (trust.py; 1 for a
    model without one). ``unsure`` (bool) and ``reason`` (one sentence, or None when sure) follow
    ``trust.judge``: an empty picture, a picture unlike the training data (out of distribution), or a low
    top score.

    Every picture goes through the model's saved photo conversion (``lm.preprocess.image_to_uint8``:
    its ``photo.PictureConversion``), the same for the CLI, the HTTP service, the Python API and, for
    a model trained on a folder, the folder reader. PIL images are taken as decoded and
    upright (``open_image`` applies EXIF orientation and puts transparency on white).
    ``tta``: the test-time augmentation of the answers (``scores.tta_mode``): None (default) the model's own,
    model.json's ``tta`` ("none" for a model without one); "none", "flip" or "flip+shift"; True for "flip", False
    for "none". With a mode other than "none", label, score, top_k and the unsure verdict are those of the
    averaged views, and ``plain`` {label, index, score} is the answer of the picture alone.
    ``inputs``: each result also holds ``input``, the uint8 (C, H, W) tensor the model saw.
    An empty picture (``inference.empty_picture``: one colour, or almost, as given or as the model sees
    it after the conversion) is still predicted, and its result has ``empty`` True and ``note`` saying so.
    ``background``: auto, light or dark overrides the polarity the model's conversion detects.
    Raises MinivisionError (one line) for a ``top_k`` below 1, an unknown ``background`` or ``tta``; a picture
    that cannot be read is a result with ``error``, never an exception."""
    if top_k < 1:
        raise MinivisionError(f"--top-k must be >= 1, got {top_k}")
    mode = tta_mode(tta, lm.meta)  # checked before any picture is read
    if background not in (None, *BACKGROUNDS):
        raise MinivisionError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    k = min(top_k, len(lm.classes))
    results: list[dict[str, Any]] = []
    tensors, where, noisy = [], [], []
    for i, item in enumerate(images):
        name = names[i] if names else (str(item) if isinstance(item, (str, Path)) else f"image {i}")
        try:
            img = item if hasattr(item, "convert") else open_image(item, min_side=lm.preprocess.photo.decode_side)
            x = lm.preprocess.image_to_uint8(img, background)
            tensors.append(x)
            where.append(len(results))
            why = empty_reason(img, x)
            results.append({"path": name, **({"empty": True, "note": why} if why else {})})
            noisy.append(noise_picture(img))
        except MinivisionError as e:
            reason = str(e).removeprefix(f"{name}: ")  # the path is already in the result
            results.append({"path": name, "error": reason})
        except OSError as e:
            results.append({"path": name, "error": f"cannot read: {e.strerror or e}"})
    if tensors:
        batch = torch.stack(tensors)
        empty = torch.tensor([bool(results[r].get("empty")) for r in where])
        scored_rows = _top_k(lm, batch, k, device, mode, empty, torch.tensor(noisy, dtype=torch.bool))
        for j, (r, scored) in enumerate(zip(where, scored_rows, strict=True)):
            if inputs:
                results[r]["input"] = tensors[j]
            results[r].update(scored)
            if results[r].get("note") and results[r]["reason"] == EMPTY_NOTE:  # which kind of empty it is
                results[r]["reason"] = results[r]["note"]
    return results


def _top_k(lm: LoadedModel, batch: torch.Tensor, k: int, device: str, tta: bool | str | None = None,
           empty: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Per image of uint8 ``batch`` (N, C, H, W) at the model's size: label, index, score, top_k (calibrated
    scores), unsure, reason. ``tta`` as ``predict_images`` (None: the model's own); with a mode other than
    "none" the answer is the views' averaged calibrated probabilities, ``plain`` {label, index, score} the
    picture's alone and ``tta`` the mode; the unsure verdict judges the answer's top score. ``empty``,
    ``noise``: bool (N,), which pictures are empty or noise (default: ``blank_pictures``, ``noise_pictures``
    of the batch). Raises MinivisionError for an unknown ``tta``."""
    from .trust import judge

    mode = tta_mode(tta, lm.meta)
    dev = pick_device(device)
    lm.model.to(dev)
    t = lm.temperature
    features, logits = predict_features(lm.model, lm.preprocess, batch, device=dev)
    plain = torch.softmax(logits / t, 1)
    averaged = mode != "none"
    probs = plain
    if averaged:  # the picture's own pass is done: only the other views go through the network
        others = view_logits(lm.model, lm.preprocess, batch, mode, device=dev, first=False)
        probs = plain.clone()
        for o in others:  # summed in the views' order, then divided, as inference.predict_logits does
            probs += torch.softmax(o / t, 1)
        probs /= len(others) + 1
    ood = lm.trust.score(features) if lm.trust is not None else None
    verdicts = judge(probs.max(1).values, ood, blank_pictures(batch) if empty is None else empty, lm.meta,
                     EMPTY_NOTE, noise_pictures(batch) if noise is None else noise)
    scores, idx = probs.topk(k, dim=1)
    out = []
    for j in range(len(batch)):
        top = [{"label": lm.classes[int(c)], "index": int(c), "score": round(float(s), 6)}
               for s, c in zip(scores[j], idx[j], strict=False)]
        row = {"label": top[0]["label"], "index": top[0]["index"], "score": top[0]["score"], "top_k": top,
               "unsure": verdicts[j][0], "reason": verdicts[j][1]}
        if averaged:
            score, c = plain[j].max(0)
            row["plain"] = {"label": lm.classes[int(c)], "index": int(c), "score": round(float(score), 6)}
            row["tta"] = mode
        out.append(row)
    return out


def predict_pixel_csv(lm: LoadedModel, path: str | Path, *, top_k: int = 5, device: str = "auto",
                      tta: bool | str | None = None) -> list[dict[str, Any]]:
    """Predict every row of a pixel CSV (``label`` optional, e.g. a Kaggle ``test.csv`` of ``pixel1..pixelN``
    columns or ``id,pixel...``), one result per row in file order: path (``FILE#ROW``, rows counted from 1),
    row, id (when the file has an id column), label, index, score, top_k.

    The rows are taken as the dataset's own pixels (already 8-bit grey at the model's size, as the
    Kaggle files are), not as photos: no photo conversion. Scores, unsure, reason, ``tta`` (None: the model's
    own) and ``plain`` as ``predict_images`` (a row is empty by ``inference.blank_pictures``). Raises
    MinivisionError (one line) when the file is malformed, its pictures are not the model's size or
    channels, or ``tta`` is unknown."""
    from .data.csvfile import read_pixel_table

    if top_k < 1:
        raise MinivisionError(f"--top-k must be >= 1, got {top_k}")
    mode = tta_mode(tta, lm.meta)
    table = read_pixel_table(path, need_labels=False)
    want = (lm.preprocess.channels, *lm.preprocess.size)
    if tuple(table.x.shape[1:]) != want:
        side = table.x.shape[-1]
        raise MinivisionError(f"{path}: its pictures are {side}x{side} grey (1x{side}x{side}), the model takes "
                              f"{want[0]}x{want[1]}x{want[2]}")
    results = []
    for i, scored in enumerate(_top_k(lm, table.x, min(top_k, len(lm.classes)), device, mode)):
        row: dict[str, Any] = {"path": f"{path}#{i + 1}", "row": i + 1}
        if table.ids is not None:
            row["id"] = table.ids[i]
        results.append({**row, **scored})
    return results


def proba_for_tensor(lm: LoadedModel, x: torch.Tensor, device: str = "auto",
                     tta: bool | str | None = None) -> torch.Tensor:
    """Calibrated class probabilities, float32 (N, K): softmax(logits / T) (T from the model's ``calibration``,
    1 without one) for uint8 images (N, C, H, W) or (N, H, W); with test-time augmentation (``tta`` as
    ``predict_images``, None: the model's own), the mean of the views' calibrated probabilities. Raises
    MinivisionError (one line) for pictures that are not uint8 or not the model's size, or an unknown ``tta``."""
    mode = tta_mode(tta, lm.meta)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.dtype != torch.uint8:
        raise MinivisionError(f"images must be uint8 0-255, got {x.dtype}")
    if tuple(x.shape[1:]) != (lm.preprocess.channels, *lm.preprocess.size):
        raise MinivisionError(f"images are {tuple(x.shape[1:])}, the model takes "
                              f"{(lm.preprocess.channels, *lm.preprocess.size)}")
    dev = pick_device(device)
    lm.model.to(dev)
    return torch.softmax(predict_logits(lm.model, lm.preprocess, x, device=dev, temperature=lm.temperature,
                                        tta=mode), 1)


# ----------------------------------------------------------------------------- outputs of `predict`

def _free_name(folder: Path, stem: str, taken: set[str]) -> Path:
    """``stem.png``, else ``stem-2.png``, ``stem-3.png``, ...: never a file already in ``folder``."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip(".") or "photo"
    n = 1
    while True:
        name = f"{stem}.png" if n == 1 else f"{stem}-{n}.png"
        if name not in taken and not (folder / name).exists():
            taken.add(name)
            return folder / name
        n += 1


def show_prediction(photo: Any, model_input: torch.Tensor, top_k: list[dict[str, Any]], title: str = "") -> Any:
    """A figure: the photo, what the model saw (its input, enlarged, nearest-neighbour) and the top-k
    scores as horizontal bars. Matplotlib's object API (report/style.py)."""
    import numpy as np

    from .report import style

    fig = style.new_figure(10.5, max(3.6, 0.22 * len(top_k) + 1.2))  # taller for a long top-k
    axes = [fig.add_axes(rect) for rect in ((0.02, 0.06, 0.27, 0.78), (0.33, 0.06, 0.27, 0.78),
                                            (0.78, 0.14, 0.20, 0.70))]
    thumb = photo.copy()
    thumb.thumbnail((512, 512))
    axes[0].imshow(np.asarray(thumb), cmap="gray" if thumb.mode == "L" else None, vmin=0, vmax=255)
    axes[0].set_title("photo", fontsize=10)
    seen = model_input.numpy()
    seen = seen[0] if seen.shape[0] == 1 else seen.transpose(1, 2, 0)
    axes[1].imshow(seen, cmap="gray" if seen.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    axes[1].set_title(f"what the model saw ({seen.shape[1]} x {seen.shape[0]})", fontsize=10)
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    labels = [str(t["label"]).replace("$", r"\$") for t in top_k][::-1]
    scores = [float(t["score"]) for t in top_k][::-1]
    colors = ["#c7c7c7"] * (len(scores) - 1) + [style.RIGHT]
    axes[2].barh(range(len(scores)), scores, color=colors)
    axes[2].set_yticks(range(len(scores)), [s if len(s) <= 24 else s[:23] + "\u2026" for s in labels], fontsize=9)
    axes[2].set_xlim(0, 1)
    axes[2].set_xticks([0, 0.5, 1], ["0%", "50%", "100%"], fontsize=8)
    for i, s in enumerate(scores):  # the figure inside a long bar, after a short one
        inside = s > 0.7
        axes[2].text(s - 0.02 if inside else s + 0.02, i, f"{s:.1%}", va="center", ha="right" if inside else "left",
                     color="white" if inside else "black", fontsize=8)
    axes[2].set_title(f"top {len(scores)}", fontsize=10)
    for side in ("top", "right"):
        axes[2].spines[side].set_visible(False)
    if title:
        fig.suptitle(title.replace("$", r"\$"), fontsize=11)
    return fig


def save_shows(results: list[dict[str, Any]], folder: str | Path) -> list[Path]:
    """For each predicted file, ``folder/<stem>.png`` from ``show_prediction`` (needs ``inputs=True``
    results); the folder is created, and an existing file in it is never overwritten."""
    from .report import style
    from .report.fonts import isolate

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinivisionError(f"cannot create folder {folder}: {e.strerror or e}") from None
    taken: set[str] = set()
    saved = []
    for r in results:
        if "error" in r or "input" not in r:
            continue
        try:
            photo = open_image(r["path"])
        except (MinivisionError, OSError):
            continue  # it was read a moment ago; if it is gone now there is nothing to show
        title = f"{isolate(Path(r['path']).name)}: {isolate(r['label'])} {r['score']:.1%}"
        path = _free_name(folder, Path(r["path"]).stem, taken)
        saved.append(style.save_figure(show_prediction(photo, r["input"], r["top_k"], title), path))
    return saved
