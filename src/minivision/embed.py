"""What the network has learned, as a map: its penultimate features projected to 2-D, beside raw pixels.

Raw pixels of Fashion-MNIST already group by class; a trained model pulls the groups apart. The
two-panel scatter shows both, in the same projection, so the difference is the model's work.
PCA is exact and fast; t-SNE (scikit-learn) and UMAP (umap-learn) show local neighbourhoods
better, at seconds to minutes of CPU. For TensorBoard's Embedding Projector we write the full
vectors, the class names and a sprite of the images, and let TensorBoard project them itself.

The projector files, as TensorBoard 2.21's ``projector_plugin.py`` reads them: with no event
files in the logdir the plugin reads ``projector_config.pbtxt`` from the logdir itself (run
"."), so ``tensorboard --logdir <folder>`` must name the folder these files are in. Paths in
the config are relative and must stay inside that folder. A tensor TSV has one tab-separated
row of floats per point and no header; ``metadata.tsv`` has a header row exactly when it has
two or more columns, and the projector labels points by its first non-numeric column (the
class name). The sprite is a grid of tiles ``single_image_dim`` = [width, height], row-major in
the order of the vectors; the web page refuses a sprite over 8192 px a side.
"""

from __future__ import annotations

import difflib
import io
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MinivisionError
from .fileio import write_bytes, write_text
from .report.style import class_colors, new_figure, save_figure
from .runfiles import LoadedModel

METHODS = ("pca", "tsne", "umap")
MIN_POINTS = {"pca": 3, "tsne": 5, "umap": 5}
SPLITS = ("train", "val", "test")
TSNE_PCA_DIMS = 50  # t-SNE on the first 50 principal components: what everyone does, and much faster
MAX_SPRITE_PX = 8192  # the Embedding Projector page refuses larger sprites


# ----------------------------------------------------------------------------- features

def penultimate_features(lm: LoadedModel, x: torch.Tensor, *, device: str = "auto",
                         batch_size: int = 256) -> np.ndarray:
    """float32 (N, D): the model's ``forward_features`` of uint8 images ``x`` (N, C, H, W), in eval mode.

    That is what the final layer receives (the models package's contract): for mvnet the pooled
    features before the head, for the tutorial models the last hidden Dense layer, for ``softmax``
    the normalised pixels. Input is prepared by ``lm.preprocess``, as in every other inference path.
    """
    from .inference import pick_device

    model = lm.model
    if not callable(getattr(model, "forward_features", None)):
        raise MinivisionError(f"{type(model).__name__} has no forward_features: no penultimate features to show")
    dev = pick_device(device)
    model = model.to(dev)
    chunks: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                features = model.forward_features(lm.preprocess(x[i:i + batch_size].to(dev, non_blocking=True)))
                chunks.append(features.float().cpu())
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, int(model.num_features)), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def raw_pixels(x: torch.Tensor) -> np.ndarray:
    """float32 (N, C*H*W) in [0, 1]: the images themselves, for contrast with the model's features."""
    return (x.reshape(len(x), -1).to(torch.float32) / 255.0).numpy()


# ----------------------------------------------------------------------------- projections

def _method_key(method: str) -> str:
    key = str(method).lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        close = difflib.get_close_matches(key, METHODS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        raise MinivisionError(f"unknown projection method {method!r}: {hint}(known: {', '.join(METHODS)})")
    return key


def _pca(x: np.ndarray, k: int) -> np.ndarray:
    """Scores on the first ``k`` principal components; signs fixed so a seed never flips a picture."""
    x = x.astype(np.float64)
    x -= x.mean(0)
    n, d = x.shape
    if n > 2 * d:  # tall: eigenvectors of the d x d scatter matrix, much cheaper than an SVD of x
        values, vectors = np.linalg.eigh(x.T @ x)
        components = vectors[:, ::-1].T[:min(k, d)]
    else:
        components = np.linalg.svd(x, full_matrices=False)[2][:k]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(1)])  # largest loading > 0
    signs[signs == 0] = 1
    scores = x @ (components * signs[:, None]).T
    if scores.shape[1] < k:  # fewer dimensions than asked: pad with zeros
        scores = np.hstack([scores, np.zeros((n, k - scores.shape[1]))])
    return scores


def project(features: np.ndarray, method: str = "pca", *, seed: int = 0) -> np.ndarray:
    """float32 (N, 2): ``features`` (N, D) projected by ``pca``, ``tsne`` or ``umap``."""
    key = _method_key(method)
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise MinivisionError(f"features must be a 2-D array (points x dimensions), got shape {x.shape}")
    n = len(x)
    if n < MIN_POINTS[key]:
        raise MinivisionError(f"{key} needs at least {MIN_POINTS[key]} points, got {n}")
    if not np.isfinite(x).all():
        raise MinivisionError("features contain NaN or infinity: the model's weights may be broken")
    if key == "pca":
        return _pca(x, 2).astype(np.float32)
    if key == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise MinivisionError("--method tsne needs scikit-learn: pip install scikit-learn") from None
        if x.shape[1] > TSNE_PCA_DIMS:
            x = _pca(x, TSNE_PCA_DIMS).astype(np.float32)
        tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", learning_rate="auto",
                    random_state=seed)
        return tsne.fit_transform(x).astype(np.float32)
    try:
        import umap
    except ImportError:
        raise MinivisionError("--method umap needs umap-learn: pip install umap-learn") from None
    import warnings

    k = min(15, n - 1)
    # Below 4,096 points UMAP computes exact neighbours anyway; handing it ours skips compiling its
    # numba kNN code, which halves its start-up (9 s instead of 17 s on the 2-core dev VM).
    knn = _exact_knn(x, k) if n < 4096 else (None, None, None)
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state", "no search index"
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=k, random_state=seed, precomputed_knn=knn)
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def _exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each point's ``k`` nearest neighbours, itself first, as UMAP expects."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    squares = t.square().sum(1)
    d2 = (squares[:, None] + squares[None, :] - 2 * (t @ t.T)).clamp_min_(0)
    d2.fill_diagonal_(-1.0)  # rounding must never put another point before the point itself
    dist, idx = torch.topk(d2, k, dim=1, largest=False)
    return idx.numpy().astype(np.int32), dist.clamp_min(0).sqrt().numpy().astype(np.float32)


def choose_subset(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a stratified random subset of ``n`` of the labels ``y`` (all if ``n >= len(y)``).

    Each class gets its share (largest remainder), and at least one point when ``n`` allows, so
    every class shows up; the same seed picks the same points.
    """
    y = torch.as_tensor(y, dtype=torch.int64).cpu()
    total = len(y)
    if n < 1:
        raise MinivisionError(f"--n must be >= 1, got {n}")
    if n >= total:
        return torch.arange(total)
    counts = torch.bincount(y).tolist()
    present = [k for k, c in enumerate(counts) if c > 0]
    base = {k: (1 if n >= len(present) else 0) for k in present}
    cap = {k: counts[k] - base[k] for k in present}
    rest, cap_total = n - sum(base.values()), sum(cap.values())
    quota = {k: base[k] + rest * cap[k] // cap_total for k in present}
    remainders = sorted(present, key=lambda k: (-(rest * cap[k] % cap_total), k))
    for k in remainders[:n - sum(quota.values())]:
        quota[k] += 1
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for k in present:
        members = torch.nonzero(y == k).flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:quota[k]]])
    return torch.sort(torch.cat(picked)).values


# ----------------------------------------------------------------------------- plots

def _legend_handles(labels: np.ndarray, classes: Sequence[str]) -> list[Any]:
    from matplotlib.lines import Line2D

    colors = class_colors(len(classes))
    shown = sorted(set(int(v) for v in labels))
    return [Line2D([], [], marker="o", linestyle="", markersize=7, markeredgewidth=0, color=colors[k],
                   label=str(classes[k])) for k in shown]


def _legend_columns(n_entries: int) -> int:
    return max(1, math.ceil(n_entries / 25))


def plot_embedding(points: np.ndarray, labels: Any, classes: Sequence[str], *, ax: Any = None,
                   title: str | None = None, legend: bool = True) -> Any:
    """Scatter of 2-D ``points`` coloured by class, legend outside to the right; returns the figure.

    Points are drawn in a fixed shuffled order, so no class always lies on top of the others.
    """
    points = np.asarray(points, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise MinivisionError(f"need (N, 2) points and N labels, got {points.shape} and {labels.shape}")
    if ax is None:
        fig = new_figure(7.5, 6)
        fig.set_layout_engine("constrained")  # room for the legend outside the axes
        ax = fig.add_subplot(1, 1, 1)
    fig = ax.figure
    n = len(points)
    colors = np.array(class_colors(len(classes)))
    order = np.random.default_rng(0).permutation(n)
    size = float(np.clip(12000 / max(n, 1), 3, 36))  # area in pt^2: 6 at 2,000 points, 36 at 300 or fewer
    if n:
        ax.scatter(points[order, 0], points[order, 1], c=colors[labels[order]], s=size, linewidths=0, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if legend:
        handles = _legend_handles(labels, classes)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False, ncols=_legend_columns(len(handles)))
    return fig


def plot_embeddings(panels: list[tuple[str, np.ndarray]], labels: Any, classes: Sequence[str], *,
                    title: str | None = None) -> Any:
    """Panels side by side (e.g. "raw pixels (PCA)" and "model features (PCA)") with one shared legend."""
    if not panels:
        raise MinivisionError("nothing to plot: no panels")
    fig = new_figure(5.2 * len(panels) + 1.8, 5.4)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, points) in zip(axes, panels, strict=True):
        plot_embedding(points, labels, classes, ax=ax, title=name, legend=False)
    handles = _legend_handles(np.asarray(labels), classes)
    fig.legend(handles=handles, loc="outside right upper", frameon=False, ncols=_legend_columns(len(handles)))
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- projector files

def _check_sprite(n: int, height: int, width: int) -> None:
    side = math.ceil(math.sqrt(n))
    if side * max(height, width) > MAX_SPRITE_PX:
        fit = (MAX_SPRITE_PX // max(height, width)) ** 2
        raise MinivisionError(f"{n:,} images of {width}x{height} make a sprite over {MAX_SPRITE_PX} px a side, "
                              f"which the Embedding Projector refuses: use at most {fit:,} (--n {fit})")


def _sprite_png(images: torch.Tensor) -> bytes:
    from PIL import Image

    n, c, h, w = images.shape
    side = math.ceil(math.sqrt(n))
    grid = np.zeros((side * side, h, w, c), dtype=np.uint8)
    grid[:n] = images.permute(0, 2, 3, 1).cpu().numpy()
    grid = grid.reshape(side, side, h, w, c).transpose(0, 2, 1, 3, 4).reshape(side * h, side * w, c)
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _tsv_cell(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split()) or "?"


def _tensor_tsv(vectors: np.ndarray) -> str:
    buf = io.StringIO()
    np.savetxt(buf, vectors, fmt="%.6g", delimiter="\t")
    return buf.getvalue()


def write_projector(folder: str | Path, embeddings: dict[str, np.ndarray], labels: Any, classes: Sequence[str],
                    images: torch.Tensor, *, index: Sequence[int] | None = None) -> list[Path]:
    """TensorBoard Embedding Projector files in ``folder``; returns the paths written.

    ``<name>.tsv`` per embedding (N rows of D floats), ``metadata.tsv`` (class, class_index, index:
    the position of each image in its split, ``index`` or 0..N-1), ``sprite.png`` and
    ``projector_config.pbtxt``. View with ``tensorboard --logdir <folder>``.
    """
    import re

    folder = Path(folder)
    labels = np.asarray(labels, dtype=np.int64)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise MinivisionError("images must be a uint8 tensor N x C x H x W")
    n, c, h, w = (int(s) for s in images.shape)
    if c not in (1, 3):
        raise MinivisionError(f"a sprite needs 1- or 3-channel images, got {c} channels")
    if not embeddings:
        raise MinivisionError("no embeddings to write")
    if len(labels) != n or (index is not None and len(index) != n):
        raise MinivisionError(f"{n} images but {len(labels)} labels and {n if index is None else len(index)} indices")
    for name, vectors in embeddings.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == "metadata":
            raise MinivisionError(f"embedding name {name!r}: use letters, digits, '_', '-' or '.'")
        if np.ndim(vectors) != 2 or len(vectors) != n:
            raise MinivisionError(f"embedding {name!r} must have {n} rows, got shape {np.shape(vectors)}")
    _check_sprite(n, h, w)
    index = list(range(n)) if index is None else [int(i) for i in index]

    written = []
    try:
        for name, vectors in embeddings.items():
            path = folder / f"{name}.tsv"
            write_text(path, _tensor_tsv(np.asarray(vectors, dtype=np.float32)))
            written.append(path)
        rows = ["class\tclass_index\tindex"]
        rows += [f"{_tsv_cell(classes[k])}\t{k}\t{i}" for k, i in zip(labels.tolist(), index, strict=True)]
        write_text(folder / "metadata.tsv", "\n".join(rows) + "\n")
        write_bytes(folder / "sprite.png", _sprite_png(images))
        entries = []
        for name, vectors in embeddings.items():
            entries.append(
                "embeddings {\n"
                f'  tensor_name: "{name}"\n'
                f'  tensor_path: "{name}.tsv"\n'
                f"  tensor_shape: {n}\n"
                f"  tensor_shape: {int(np.shape(vectors)[1])}\n"
                '  metadata_path: "metadata.tsv"\n'
                "  sprite {\n"
                '    image_path: "sprite.png"\n'
                f"    single_image_dim: {w}\n"
                f"    single_image_dim: {h}\n"
                "  }\n"
                "}\n")
        write_text(folder / "projector_config.pbtxt", "".join(entries))
    except OSError as e:
        raise MinivisionError(f"cannot write projector files to {folder}: {e.strerror or e}") from None
    return [*written, folder / "metadata.tsv", folder / "sprite.png", folder / "projector_config.pbtxt"]


# ----------------------------------------------------------------------------- the command

def embed_run(run: str | Path, *, data: str | None = None, data_dir: str | None = None,
              test_data: str | None = None, split: str = "test", method: str = "pca", n: int = 2000,
              projector: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
              device: str = "auto", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Project a run's penultimate features and the raw pixels of ``n`` images; write a PNG (and projector files).

    Returns {"points": {"features", "pixels"} (n, 2), "features" (n, D), "pixels" (n, C*H*W),
    "labels", "index", "classes", "method", "png", "projector"}.
    """
    from .evaluate import dataset_for
    from .inference import split_for
    from .runfiles import load_model

    key = _method_key(method)
    if split not in SPLITS:
        close = difflib.get_close_matches(str(split), SPLITS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise MinivisionError(f"unknown split {split!r}: {hint}(known: {', '.join(SPLITS)})")
    if n < MIN_POINTS[key]:
        raise MinivisionError(f"--n must be at least {MIN_POINTS[key]} for {key}, got {n}")
    lm = load_model(run)
    ds = dataset_for(lm, data, data_dir, test_data, split=split)
    part = split_for(ds, split)
    idx = choose_subset(part.y, n, seed)
    x, y = part.x[idx], part.y[idx]
    if projector is not None:
        _check_sprite(len(x), int(x.shape[2]), int(x.shape[3]))  # before minutes of t-SNE, not after
    if len(x) < MIN_POINTS[key]:
        raise MinivisionError(f"{ds.name} {split} has {len(x)} images; {key} needs at least {MIN_POINTS[key]}")

    started = time.monotonic()
    features = penultimate_features(lm, x, device=device)
    pixels = raw_pixels(x)
    points = {"features": project(features, key, seed=seed), "pixels": project(pixels, key, seed=seed)}
    label = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}[key]
    log(f"{label} of {len(x):,} {split} images ({features.shape[1]}-d features, {pixels.shape[1]} pixels): "
        f"{time.monotonic() - started:.1f} s")

    fig = plot_embeddings([(f"raw pixels ({label})", points["pixels"]),
                           (f"{lm.name} features ({label})", points["features"])],
                          y.numpy(), lm.classes, title=f"{lm.name}: {len(x):,} {split} images of {ds.name}")
    png = Path(out) if out is not None else lm.path / f"embedding_{key}_{split}.png"
    try:
        save_figure(fig, png)
    except OSError as e:
        raise MinivisionError(f"cannot write {png}: {e.strerror or e}") from None
    log(f"wrote {png}")

    folder = None
    if projector is not None:
        folder = Path(projector)
        for path in write_projector(folder, {"features": features, "pixels": pixels}, y.numpy(), lm.classes, x,
                                    index=idx.tolist()):
            log(f"wrote {path}")
        log(f"view them: tensorboard --logdir {folder}")
    return {"points": points, "features": features, "pixels": pixels, "labels": y.numpy(),
            "index": idx.numpy(), "classes": list(lm.classes), "method": key, "png": png, "projector": folder}
