"""Pictures -> tensors -> labels, for files, folders and globs; one bad file never stops the rest."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import torch

from .data.images import IMAGE_EXTENSIONS, open_image
from .errors import MinivisionError
from .runfiles import LoadedModel
from .train import pick_device, predict_logits


def expand_paths(items: list[str]) -> list[str]:
    """Files as given, folders walked (sorted, hidden entries skipped), globs expanded."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise MinivisionError(f"{item}: folder has no image files")
            out += found
        elif any(ch in item for ch in "*?[") and not p.exists():
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                raise MinivisionError(f"{item}: no file matches this pattern")
            out += found
        else:
            out.append(item)  # a missing file is reported per file, with the rest still predicted
    return out


def predict_images(lm: LoadedModel, images: list[Any], *, top_k: int = 5, device: str = "auto",
                   names: list[str] | None = None, tta: bool = False, inputs: bool = False) -> list[dict[str, Any]]:
    """Predict paths, bytes or PIL images. Each result: path, label, index, score, top_k; or path, error.

    ``tta``: scores with flip test-time augmentation, and ``plain`` {label, index, score} without it.
    ``inputs``: each result also holds ``input``, the uint8 (C, H, W) tensor the model saw."""
    if top_k < 1:
        raise MinivisionError(f"--top-k must be >= 1, got {top_k}")
    k = min(top_k, len(lm.classes))
    results: list[dict[str, Any]] = []
    tensors, where = [], []
    for i, item in enumerate(images):
        name = names[i] if names else (str(item) if isinstance(item, (str, Path)) else f"image {i}")
        try:
            img = item if hasattr(item, "convert") else open_image(item)
            tensors.append(lm.preprocess.image_to_uint8(img))
            where.append(len(results))
            results.append({"path": name})
        except MinivisionError as e:
            reason = str(e).removeprefix(f"{name}: ")  # the path is already in the result
            results.append({"path": name, "error": reason})
        except OSError as e:
            results.append({"path": name, "error": f"cannot read: {e.strerror or e}"})
    if tensors:
        dev = pick_device(device)
        lm.model.to(dev)
        batch = torch.stack(tensors)
        probs = torch.softmax(predict_logits(lm.model, lm.preprocess, batch, device=dev, tta=tta), 1)
        plain = torch.softmax(predict_logits(lm.model, lm.preprocess, batch, device=dev), 1) if tta else None
        scores, idx = probs.topk(k, dim=1)
        for j, r in enumerate(where):
            if inputs:
                results[r]["input"] = tensors[j]
            top = [{"label": lm.classes[int(c)], "index": int(c), "score": round(float(s), 6)}
                   for s, c in zip(scores[j], idx[j], strict=False)]
            results[r].update({"label": top[0]["label"], "index": top[0]["index"], "score": top[0]["score"],
                               "top_k": top})
            if plain is not None:
                score, c = plain[j].max(0)
                results[r]["plain"] = {"label": lm.classes[int(c)], "index": int(c), "score": round(float(score), 6)}
    return results


def proba_for_tensor(lm: LoadedModel, x: torch.Tensor, device: str = "auto") -> torch.Tensor:
    """Class probabilities for uint8 images (N, C, H, W) or (N, H, W)."""
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.dtype != torch.uint8:
        raise MinivisionError(f"images must be uint8 0-255, got {x.dtype}")
    if tuple(x.shape[1:]) != (lm.preprocess.channels, *lm.preprocess.size):
        raise MinivisionError(f"images are {tuple(x.shape[1:])}, the model takes "
                              f"{(lm.preprocess.channels, *lm.preprocess.size)}")
    dev = pick_device(device)
    lm.model.to(dev)
    return torch.softmax(predict_logits(lm.model, lm.preprocess, x, device=dev), 1)
