"""What a convolutional model sees in a picture: the input after the picture conversion, the first
layer's filters, the feature maps of each convolution block, Grad-CAM heat maps and the scores.

``minivision inspect RUN PICTURE...`` writes one PNG per picture (``inspect_files``);
``minivision inspect RUN`` with no picture draws a right and a wrong picture of each class (of the test split,
else validation; the title names it) with its Grad-CAM map (``inspect_report``) as ``RUN/inspect.png``, which
the run's report then shows in its "What the model looked at" section. That section is made on request, not
at the end of every training: a report is rewritten by many runs (tests, compare, budget runs), and the section's
drawing would be paid by all of them.

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV, arXiv:1610.02391) is computed by Captum's ``LayerGradCam``
(PyTorch's own interpretability library), not by our own hooks: the map of class c over the
block's output A (K channels of h x w) is ReLU(sum_k alpha_k A_k) with alpha_k the mean over the h x w
positions of d y_c / d A_k, y_c the class's logit (before the softmax). For a network that averages
its last block globally and then applies a linear layer, the un-rectified map summed over the
positions equals (y_c - bias_c): the CAM identity the paper proves (tests/test_inspect.py checks it).
The map is then resized bilinearly to the picture's size (Captum's ``LayerAttribution.interpolate``).

Which outputs are the "convolution blocks" is read from the network's modules in the order they are
registered (``conv_blocks``): a block starts at a module that holds a convolution and takes the
modules after it that change no shape's meaning (activations, batch norm, max-pooling, dropout) up to
the next convolution or the head (flatten, global pooling, linear). A container of several such
blocks (mvnet's and EfficientNet's ``blocks``) is opened one level. A block's output is read as the
input of the module after it, so an activation applied in place (EfficientNet's ReLU6) is included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MinivisionError

#: Feature maps shown per block: the channels with the highest mean activation for the picture.
STRONGEST = 8
#: Classes with a Grad-CAM map per picture (the top scores).
TOP_CLASSES = 3
#: First-layer filters shown (the first ones, in the layer's order).
MAX_FILTERS = 32
#: Classes in the score chart; more classes show the top ones.
MAX_SCORES = 10

# modules that may follow a convolution inside its block: they keep the spatial layout of the maps
_IN_BLOCK = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Sigmoid, nn.Tanh,
             nn.BatchNorm2d, nn.GroupNorm, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass
class ConvBlock:
    """One convolution block: ``name`` (the module path of its first module), ``modules`` (its modules,
    in order) and where its output is read: the input of ``after`` (the next module) when there is one,
    else the output of its last module."""

    name: str
    modules: list[nn.Module]
    after: nn.Module | None


def _has_conv(m: nn.Module) -> bool:
    return any(isinstance(s, nn.Conv2d) for s in m.modules())


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's children in registration order, a container of two or more convolution blocks opened
    one level (``blocks`` -> ``blocks.0``, ``blocks.1``, ...)."""
    out = []
    for name, child in model.named_children():
        inner = list(child.named_children()) if isinstance(child, nn.Sequential | nn.ModuleList) else []
        if sum(_has_conv(c) for _, c in inner) >= 2:
            out += [(f"{name}.{n}", c) for n, c in inner]
        else:
            out.append((name, child))
    return out


def conv_blocks(model: nn.Module) -> list[ConvBlock]:
    """The convolution blocks of ``model`` in forward order (see the module docstring for the rule);
    ``[]`` for a network without convolutions (softmax, mlp). A batch norm just before a convolution
    belongs to that convolution's block (the Kaggle tutorial's BatchNorm -> Conv)."""
    units = _units(model)
    blocks: list[ConvBlock] = []
    i = 0
    while i < len(units):
        name, unit = units[i]
        if not _has_conv(unit):
            i += 1
            continue
        members = [unit]
        i += 1
        while i < len(units) and not _has_conv(units[i][1]) and isinstance(units[i][1], _IN_BLOCK):
            nxt = units[i + 1][1] if i + 1 < len(units) else None
            if isinstance(units[i][1], nn.BatchNorm2d) and nxt is not None and _has_conv(nxt):
                break  # a norm in front of the next convolution is that block's
            members.append(units[i][1])
            i += 1
        blocks.append(ConvBlock(name, members, units[i][1] if i < len(units) else None))
    return blocks


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first ``nn.Conv2d`` in registration order (the first layer a picture meets), or None."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def no_convolution_message(name: str) -> str:
    """The one line for a network without convolutions."""
    return (f"the model {name} has no convolution layers, so there are no filters, feature maps or Grad-CAM "
            f"maps to show; inspect works with convolutional models (see `minivision models`), and this run's "
            f"report shows its predictions and mistakes")


def require_conv(model: nn.Module, name: str) -> list[ConvBlock]:
    """``conv_blocks(model)``; raises MinivisionError (``no_convolution_message``) when there are none."""
    blocks = conv_blocks(model)
    if not blocks:
        raise MinivisionError(no_convolution_message(name))
    return blocks


# ---------------------------------------------------------------------------------------------- compute

def block_outputs(model: nn.Module, x: torch.Tensor, blocks: list[ConvBlock]) -> list[torch.Tensor]:
    """Each block's output for preprocessed input ``x`` (float N x C x H x W): float32 N x C_b x h_b x w_b,
    detached, on the CPU. Forward hooks, removed afterwards; the first call of a module counts."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for i, b in enumerate(blocks):
        def keep(value, i=i):
            seen.setdefault(i, value)
        if b.after is not None:
            handles.append(b.after.register_forward_pre_hook(lambda m, args, keep=keep: keep(args[0])))
        else:
            handles.append(b.modules[-1].register_forward_hook(lambda m, args, out, keep=keep: keep(out)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [seen[i].detach().float().cpu().contiguous() for i in range(len(blocks))]


def grad_cam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, block: ConvBlock, *,
             rectify: bool = True, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Grad-CAM maps of ``block`` for preprocessed input ``x`` (float N x C x H x W) and class indices
    ``targets`` (int64 N): float32 N x h x w, or N x H x W with ``size`` (H, W) (bilinear). ``rectify``:
    the paper's ReLU (maps >= 0); without it the signed map, whose sum over the block's h x w positions
    is y_c - bias_c for a network with global average pooling and a linear head. Computed in fp32 in
    eval mode by Captum's ``LayerGradCam``; the model's weights and mode are left as they were."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer = block.after if block.after is not None else block.modules[-1]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            attr = LayerGradCam(model, layer).attribute(x.float(), target=targets.tolist(),
                                                        attribute_to_layer_input=block.after is not None,
                                                        relu_attributions=rectify)
            if size is not None:
                attr = LayerAttribution.interpolate(attr, tuple(size), interpolate_mode="bilinear")
    finally:
        model.train(was_training)
    out = attr.detach().float().cpu()[:, 0]
    return out.clamp_min(0) if rectify else out  # bilinear resizing keeps >= 0; the clamp only removes -0.0


@dataclass
class Inspection:
    """What ``inspect_pictures`` found for one picture. ``picture``: uint8 C x H x W (the model's input
    after the conversion); ``probs``: float32 K (softmax of logits / T, T the run's calibration);
    ``cams``: [(class index, float32 H x W Grad-CAM map >= 0)] for the top classes, best first;
    ``blocks``: [(name, float32 C_b x h_b x w_b output)] per convolution block; ``filters``: the first
    convolution's weights, float32 out x in x kh x kw."""

    picture: torch.Tensor
    probs: torch.Tensor
    cams: list[tuple[int, torch.Tensor]]
    blocks: list[tuple[str, torch.Tensor]]
    filters: torch.Tensor
    label: int | None = None  # the true class, when known (the report's test pictures)
    extra: dict[str, Any] = field(default_factory=dict)


def inspect_pictures(lm: Any, x: torch.Tensor, *, top: int = TOP_CLASSES, labels: torch.Tensor | None = None,
                     device: str = "cpu", maps: bool = True) -> list[Inspection]:
    """Inspect uint8 pictures ``x`` (N x C x H x W, at the model's size) with a loaded run ``lm``
    (``runfiles.LoadedModel``). ``top``: classes with a Grad-CAM map (at most K). ``maps``: False skips the
    feature maps (the report needs only Grad-CAM). Raises MinivisionError for a network without
    convolutions. The model's weights are not changed."""
    from .inference import pick_device

    blocks = require_conv(lm.model, lm.name)
    dev = pick_device(device)
    model = lm.model.to(dev)
    xin = lm.preprocess(x.to(dev))
    with torch.no_grad():
        was = model.training
        model.eval()
        logits = model(xin).float()
        model.train(was)
    probs = torch.softmax(logits / lm.temperature, 1).cpu()
    k = max(1, min(top, probs.shape[1]))
    order = probs.topk(k, dim=1).indices
    cams = grad_cam(model, xin.repeat_interleave(k, 0), order.flatten().to(dev), blocks[-1],
                    size=tuple(x.shape[-2:])).view(len(x), k, *x.shape[-2:])
    outputs = block_outputs(model, xin, blocks) if maps else []
    conv = first_conv(model)
    filters = conv.weight.detach().float().cpu() if conv is not None else torch.empty(0)
    out = []
    for i in range(len(x)):
        out.append(Inspection(x[i].cpu(), probs[i], [(int(order[i, j]), cams[i, j]) for j in range(k)],
                              [(b.name, o[i]) for b, o in zip(blocks, outputs, strict=True)] if maps else [], filters,
                              None if labels is None else int(labels[i])))
    return out


# ---------------------------------------------------------------------------------------------- drawing

def _grey(picture: torch.Tensor):
    """uint8 C x H x W -> H x W (grey) or H x W x 3 numpy for imshow."""
    a = picture.numpy()
    return a[0] if a.shape[0] == 1 else a[:3].transpose(1, 2, 0)


def _show_picture(ax, picture: torch.Tensor) -> None:
    img = _grey(picture)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _show_cam(ax, picture: torch.Tensor, cam: torch.Tensor) -> float:
    """The picture in grey with the map over it (jet, half transparent), scaled to its own maximum;
    returns that maximum (0: no positive evidence)."""
    a = picture.float().mean(0).numpy()
    ax.imshow(a, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    peak = float(cam.max())
    if peak > 0:
        ax.imshow((cam / peak).numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    return peak


def _no_evidence(ax) -> None:
    """The line on a Grad-CAM panel whose map is zero everywhere (no channel raised the class's score)."""
    ax.text(0.5, 0.05, "no evidence for it", transform=ax.transAxes, ha="center", fontsize=8, color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "linewidth": 0})


def _short(name: str, n: int = 22) -> str:
    name = str(name).replace("$", r"\$")
    return name if len(name) <= n else name[:n - 1] + "\u2026"


def filter_mosaic(weights: torch.Tensor, per_row: int = 16):
    """The first convolution's filters as one picture: float32 out x in x kh x kw -> numpy (rows x cols)
    in [-1, 1] (each filter over its own largest |weight|, for a diverging colour map) or, for 3 input
    channels, rows x cols x 3 in [0, 1] (each filter stretched to its own range); 1-pixel gaps are NaN
    (grey) or 1 (white). At most ``MAX_FILTERS`` filters; other channel counts show their mean."""
    import numpy as np

    w = weights[:MAX_FILTERS].float()
    n, c, kh, kw = w.shape
    rgb = c == 3
    if rgb:
        lo = w.amin((1, 2, 3), keepdim=True)
        hi = w.amax((1, 2, 3), keepdim=True)
        tiles = ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()
    else:
        m = w.mean(1)
        tiles = (m / m.abs().amax((1, 2), keepdim=True).clamp_min(1e-12)).numpy()
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    shape = (rows * (kh + 1) - 1, cols * (kw + 1) - 1) + ((3,) if rgb else ())
    out = np.full(shape, 1.0 if rgb else np.nan, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        out[r * (kh + 1):r * (kh + 1) + kh, col * (kw + 1):col * (kw + 1) + kw] = tiles[i]
    return out


def strongest_channels(maps: torch.Tensor, n: int = STRONGEST) -> torch.Tensor:
    """Indices of the ``n`` channels of ``maps`` (C x h x w) with the highest mean activation, strongest first."""
    return maps.mean((1, 2)).topk(min(n, maps.shape[0])).indices


def map_mosaic(maps: torch.Tensor, channels: torch.Tensor):
    """The chosen channels of ``maps`` (C x h x w) side by side with 1-pixel NaN gaps: numpy h x (n(w+1)-1)."""
    import numpy as np

    h, w = maps.shape[1:]
    out = np.full((h, len(channels) * (w + 1) - 1), np.nan, dtype=np.float32)
    for j, c in enumerate(channels.tolist()):
        out[:, j * (w + 1):j * (w + 1) + w] = maps[c].numpy()
    return out


def draw_inspection(ins: Inspection, classes: list[str], title: str = "", photo: Any = None) -> Any:
    """One figure (matplotlib ``Figure``) for one picture: the photo (when given), what the model saw,
    Grad-CAM over it for the top classes, the scores; the first layer's filters; the strongest feature
    maps of each convolution block, one row per block."""
    import numpy as np

    from .report import style

    rows = 1 + (1 if ins.filters.numel() else 0) + len(ins.blocks)
    heights = [3.0] + ([1.6] if ins.filters.numel() else []) + [1.45] * len(ins.blocks)
    n_top = (1 if photo is not None else 0) + 1 + len(ins.cams)
    # about 2.1 inches a picture, so captions of 10-point text (up to ~20 characters a line) stay apart at --top 5;
    # the header (inches): the title's line, then room for the first row's three-line captions
    width, header = max(14.0, 2.1 * n_top + 4.6), 1.25
    height = sum(heights) + header
    fig = style.new_figure(width, height)
    grid = fig.add_gridspec(rows, 1, height_ratios=heights, left=0.03, right=0.98, top=1 - header / height,
                            bottom=0.02, hspace=0.55)
    # a spacer column before the scores: their class names (up to 22 characters) are drawn to its left
    top = grid[0].subgridspec(1, n_top + 2, width_ratios=[1] * n_top + [0.75, 1.4], wspace=0.25)
    col = 0
    if photo is not None:
        ax = fig.add_subplot(top[0, col])
        thumb = photo.copy()
        thumb.thumbnail((256, 256))
        arr = np.asarray(thumb)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("the picture", fontsize=10)
        col += 1
    ax = fig.add_subplot(top[0, col])
    _show_picture(ax, ins.picture)
    h, w = ins.picture.shape[-2:]
    ax.set_title(f"what the model saw\n({w} x {h},\nafter the conversion)", fontsize=10)
    col += 1
    for c, cam in ins.cams:
        ax = fig.add_subplot(top[0, col])
        peak = _show_cam(ax, ins.picture, cam)
        ax.set_title(f"Grad-CAM: {_short(classes[c], 16)}\n{float(ins.probs[c]):.1%}", fontsize=10)
        if peak == 0:
            _no_evidence(ax)
        col += 1
    ax = fig.add_subplot(top[0, col + 1])
    k = min(MAX_SCORES, len(classes))
    order = ins.probs.topk(k).indices.tolist()[::-1]
    scores = [float(ins.probs[i]) for i in order]
    colors = [style.RIGHT if i == order[-1] else "#c7c7c7" for i in order]
    if ins.label is not None:
        colors = [style.WRONG if (i == order[-1] and i != ins.label) else c for i, c in zip(order, colors, strict=True)]
    ax.barh(range(k), scores, color=colors)
    names = [_short(classes[i]) + (" (true)" if i == ins.label else "") for i in order]
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1], ["0%", "50%", "100%"], fontsize=8)
    for i, s in enumerate(scores):
        inside = s > 0.7
        ax.text(s - 0.02 if inside else s + 0.02, i, f"{s:.1%}", va="center", ha="right" if inside else "left",
                color="white" if inside else "black", fontsize=7)
    ax.set_title("softmax scores" + (f" (top {k})" if k < len(classes) else "")
                 + ("\nof the picture alone" if ins.extra.get("tta") else ""), fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    r = 1
    if ins.filters.numel():
        ax = fig.add_subplot(grid[r])
        mosaic = filter_mosaic(ins.filters)
        out_c, in_c, kh, kw = ins.filters.shape
        if mosaic.ndim == 3:
            ax.imshow(mosaic, interpolation="nearest")
            how = "colour: each filter stretched to its own range"
        else:
            ax.imshow(np.ma.masked_invalid(mosaic), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            how = "red: positive weights, blue: negative" + (f"; mean of {in_c} input channels" if in_c > 1 else "")
        shown = min(out_c, MAX_FILTERS)
        ax.set_title(f"first layer's filters: {shown} of {out_c}, {kh} x {kw} ({how})", fontsize=10, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_anchor("W")
        r += 1
    for name, maps in ins.blocks:
        ax = fig.add_subplot(grid[r])
        chans = strongest_channels(maps)
        mosaic = map_mosaic(maps, chans)
        vals = mosaic[~np.isnan(mosaic)]
        ax.imshow(np.ma.masked_invalid(mosaic), cmap="viridis", vmin=float(vals.min()), vmax=float(vals.max()) or 1,
                  interpolation="nearest")
        c, hh, ww = maps.shape
        ax.set_title(f"block {name}: {c} channels of {ww} x {hh}; the {len(chans)} strongest (channel numbers below, "
                     "one colour scale)", fontsize=10, loc="left")
        ax.set_xticks([j * (ww + 1) + (ww - 1) / 2 for j in range(len(chans))], [str(int(i)) for i in chans],
                      fontsize=8)
        ax.tick_params(length=0)
        ax.set_yticks([])
        ax.set_anchor("W")
        r += 1
    if title:
        fig.suptitle(title.replace("$", r"\$"), fontsize=12, x=0.03, ha="left", y=1 - 0.15 / height, va="top")
    return fig


def report_figure(items: list[tuple[str, Inspection]], classes: list[str], title: str) -> Any:
    """The report's picture: per class a row of up to two (picture, Grad-CAM of the predicted class) pairs,
    ``items`` as (class-row key, inspection), right answers in green and wrong ones in red."""
    from .report import style
    from .report.fonts import isolate

    rows: dict[int, list[Inspection]] = {}
    for _, ins in items:
        rows.setdefault(int(ins.label), []).append(ins)
    keys = sorted(rows)
    per = max(len(v) for v in rows.values()) if rows else 1
    # the header (inches): the two-line title, then the first row's two-line captions below it
    header = 1.45
    height = 2.3 * len(keys) + header + 0.15
    fig = style.new_figure(2.2 * 2 * per + 0.4, height)
    grid = fig.add_gridspec(max(len(keys), 1), 2 * per, left=0.02, right=0.98, top=1 - header / height,
                            bottom=0.02, hspace=0.65, wspace=0.1)
    for r, key in enumerate(keys):
        for j, ins in enumerate(rows[key]):
            pred = int(ins.probs.argmax())
            right = pred == ins.label
            color = style.RIGHT if right else style.WRONG
            ax = fig.add_subplot(grid[r, 2 * j])
            _show_picture(ax, ins.picture)
            ax.set_title(f"true: {isolate(_short(classes[ins.label], 16))}\npred: {isolate(_short(classes[pred], 12))} "
                         f"{float(ins.probs[pred]):.0%}", fontsize=9, color=color)
            ax = fig.add_subplot(grid[r, 2 * j + 1])
            cam = next(c for i, c in ins.cams if i == pred)
            if _show_cam(ax, ins.picture, cam) == 0:
                _no_evidence(ax)
            ax.set_title(f"Grad-CAM:\n{_short(classes[pred], 16)}", fontsize=9, color=color)
    fig.suptitle(title.replace("$", r"\$"), fontsize=11, y=1 - 0.12 / height, va="top")
    return fig


# ---------------------------------------------------------------------------------------------- commands

def _free_name(folder: Path, stem: str, taken: set[str]) -> Path:
    """``stem.png``, else ``stem-2.png``, ...: never a file already in ``folder`` (``predict._free_name``)."""
    from .predict import _free_name as free

    return free(folder, stem, taken)


def inspect_files(lm: Any, paths: list[str], out: str | Path, *, top: int = TOP_CLASSES, device: str = "cpu",
                  background: str | None = None, log: Callable[[str], None] = print) -> tuple[list[Path], list[str]]:
    """For each picture file (folders and globs expanded), ``out/<stem>.png`` (``draw_inspection``); never
    overwrites a file (``stem-2.png``...). Returns (saved paths, one-line errors of the files that could not
    be read). Raises MinivisionError for a model without convolutions, before reading any picture."""
    from .data.images import open_image
    from .data.rules import expand_paths
    from .report import style

    require_conv(lm.model, lm.name)
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinivisionError(f"cannot create folder {folder}: {e.strerror or e}") from None
    errors, saved, taken = [], [], set()
    for path in expand_paths(paths):
        try:
            photo = open_image(path, min_side=lm.preprocess.photo.decode_side)
            x = lm.preprocess.image_to_uint8(photo, background)
        except MinivisionError as e:
            errors.append(str(e) if str(e).startswith(path) else f"{path}: {e}")
            continue
        except OSError as e:
            errors.append(f"{path}: cannot read: {e.strerror or e}")
            continue
        ins = inspect_pictures(lm, x.unsqueeze(0), top=top, device=device)[0]
        answer = own_answer(lm, photo, ins, device, background)
        title = f"{Path(path).name}: {answer} ({lm.name}, {lm.path.name})"
        target = _free_name(folder, Path(path).stem, taken)
        saved.append(style.save_figure(draw_inspection(ins, lm.classes, title, photo=photo), target))
        log(f"{path}: {answer} -> {target}")
    return saved, errors


def own_answer(lm: Any, photo: Any, ins: Inspection, device: str = "cpu", background: str | None = None) -> str:
    """The model's answer for a picture (a PIL image) as ``predict`` gives it: "label 93.1%", then for a model
    that answers with test-time augmentation (model.json's ``tta``) "(flip TTA; the picture alone: label 88.0%)",
    since the Grad-CAM maps and the score chart are of the picture alone (``ins.probs``), and "[not sure:
    reason]" when the answer is unsure. Sets ``ins.extra["tta"]`` to the view set for the figure's captions."""
    from .predict import predict_images

    r = predict_images(lm, [photo], top_k=1, device=device, background=background)[0]
    if "error" in r:  # read once already: not expected
        raise MinivisionError(str(r["error"]))
    text = f"{r['label']} {r['score']:.1%}"
    if r.get("plain") is not None:
        ins.extra["tta"] = r.get("tta")
        text += f" ({r.get('tta')} TTA; the picture alone: {r['plain']['label']} {r['plain']['score']:.1%})"
    if r.get("unsure"):
        text += f" [not sure: {r['reason']}]"
    return text


def pick_examples(probs: torch.Tensor, y: torch.Tensor, per_class: int = 1) -> list[int]:
    """Indices of up to ``per_class`` right and ``per_class`` wrong pictures of each class (by true label):
    the right ones most confidently right, the wrong ones most confidently wrong; class by class."""
    pred = probs.argmax(1)
    conf = probs.max(1).values
    out: list[int] = []
    for c in range(probs.shape[1]):
        for want in (True, False):
            idx = ((y == c) & ((pred == y) == want)).nonzero().flatten()
            out += idx[conf[idx].argsort(descending=True)[:per_class]].tolist()
    return out


def inspect_report(run: str | Path, *, split: str | None = None, per_class: int = 1, device: str = "cpu",
                   log: Callable[[str], None] = print) -> Path:
    """``RUN/inspect.png``: a right and a wrong picture of each class of the run's test split (validation for
    data without one) with Grad-CAM of the predicted class, then the run's report rewritten with it (its
    "What the model looked at" section). Returns the picture's path."""
    from .evaluate import scoring_data, split_logits
    from .report import style
    from .report.run import report_for_model
    from .runfiles import load_model

    lm = load_model(run)
    require_conv(lm.model, lm.name)
    sd = scoring_data(lm, split=split)
    if len(sd.split) == 0:
        raise MinivisionError(f"{lm.path}: the {sd.split_name} split is empty: no pictures to inspect")
    logits = split_logits(lm, sd.split, device=device, precision="fp32")
    probs = torch.softmax(logits / lm.temperature, 1)
    pick = pick_examples(probs, sd.split.y, per_class)
    x = sd.split.x[pick]
    items = []
    for i in range(0, len(pick), 64):
        batch = inspect_pictures(lm, x[i:i + 64], top=1, labels=sd.split.y[pick][i:i + 64], device=device,
                                 maps=False)
        items += [(str(j), ins) for j, ins in enumerate(batch)]
    right = sum(int(ins.probs.argmax()) == ins.label for _, ins in items)
    title = (f"Where the model looked: {right} right and {len(items) - right} wrong {sd.split_name} pictures\n"
             f"(Grad-CAM of the predicted class; red: strongest)")
    path = style.save_figure(report_figure(items, lm.classes, title), lm.path / "inspect.png")
    log(f"saved {path}")
    report_for_model(lm, sd.dataset, sd.split_name, sd.split, logits, log=log, by="minivision inspect")
    return path
