"""minivision inspect: convolution blocks of every registered model, Grad-CAM's invariants (non-negative,
the picture's size, the CAM identity on a global-average-pooling net), one PNG per picture never
overwritten, the report's section, and one-line errors (missing file, not a picture, no convolutions)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from minivision.cli import main
from minivision.config import TrainConfig
from minivision.inspect_model import (
    Inspection,
    block_outputs,
    conv_blocks,
    draw_inspection,
    filter_mosaic,
    first_conv,
    grad_cam,
    inspect_pictures,
    pick_examples,
    report_figure,
    strongest_channels,
)
from minivision.models import ClassifierNet, create_model, list_models
from minivision.runfiles import load_model

from .conftest import needs_fashion_mnist, synthetic_images, write_pixel_csv

NO_CONV = {"softmax", "mlp"}


def _model(name: str) -> nn.Module:
    kw = {"input_size": 32} if name == "efficientnet-lite0" else {}
    torch.manual_seed(0)
    return create_model(name, in_channels=1, image_size=(28, 28), num_classes=10, **kw).eval()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_has_blocks_or_none_and_grad_cam_keeps_its_invariants(name):
    model = _model(name)
    blocks = conv_blocks(model)
    if name in NO_CONV:
        assert blocks == [] and first_conv(model) is None
        return
    assert blocks, name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 1, 28, 28)
    cams = grad_cam(model, x, torch.tensor([0, 3, 9]), blocks[-1], size=(28, 28))
    assert cams.shape == (3, 28, 28) and cams.dtype == torch.float32
    assert torch.isfinite(cams).all() and (cams >= 0).all()
    raw = grad_cam(model, x, torch.tensor([0, 3, 9]), blocks[-1], rectify=False)
    outs = block_outputs(model, x, blocks)
    assert raw.shape == (3, *outs[-1].shape[-2:])  # one value per position of the last block's maps
    assert torch.equal(grad_cam(model, x, torch.tensor([0, 3, 9]), blocks[-1]), raw.clamp_min(0))
    assert len(outs) == len(blocks) and all(o.ndim == 4 and len(o) == 3 for o in outs)
    assert not model.training  # the mode and every weight as they were
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class GapNet(ClassifierNet):
    """conv -> ReLU -> global average pool -> linear: Grad-CAM's map sums to logit - bias (the CAM identity)."""

    classifier_name = "head"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(6, 4)

    def forward_features(self, x):
        return self.flatten(self.pool(self.act(self.conv(x))))

    def forward_head(self, features):
        return self.head(features)


def test_grad_cam_is_the_papers_map_and_sums_to_the_logit_without_bias():
    torch.manual_seed(1)
    net = GapNet().eval()
    x = torch.randn(2, 1, 12, 12)
    (block,) = conv_blocks(net)
    assert block.after is net.pool  # read as the input of the pooling: after the ReLU
    target = torch.tensor([1, 2])
    raw = grad_cam(net, x, target, block, rectify=False)
    logits = net(x)
    want = logits[torch.arange(2), target] - net.head.bias[target]
    assert torch.allclose(raw.sum((1, 2)), want.detach(), atol=1e-5)
    a = net.act(net.conv(x)).detach().requires_grad_(True)  # by hand: alpha_k = mean of d y_c / d A_k
    y = net.head(net.flatten(net.pool(a)))[torch.arange(2), target].sum()
    (g,) = torch.autograd.grad(y, a)
    by_hand = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    assert torch.allclose(grad_cam(net, x, target, block), by_hand.detach(), atol=1e-6)
    big = grad_cam(net, x, target, block, size=(12, 12))
    assert big.shape == (2, 12, 12) and (big >= 0).all() and float(big.max()) > 0


def test_a_batch_norm_in_front_of_a_convolution_belongs_to_its_block():
    blocks = conv_blocks(_model("cnn2-bn"))
    assert [b.name for b in blocks] == ["conv2d", "conv2d_1"]
    assert isinstance(blocks[0].after, nn.BatchNorm2d)  # the second block's norm reads the first one's output


def test_mosaics_strongest_channels_and_examples():
    w = torch.randn(20, 1, 3, 3)
    m = filter_mosaic(w, per_row=16)
    assert m.shape == (2 * 4 - 1, 16 * 4 - 1) and np.nanmax(np.abs(m)) == pytest.approx(1.0)
    assert filter_mosaic(torch.randn(5, 3, 3, 3)).shape == (3, 5 * 4 - 1, 3)
    maps = torch.zeros(5, 2, 2)
    maps[3] += 2
    maps[1] += 1
    assert strongest_channels(maps, 2).tolist() == [3, 1]
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    y = torch.tensor([0, 0, 0, 1])
    assert pick_examples(probs, y) == [0, 2, 3]  # class 0: the surest right one, its wrong one; class 1: right


# ----------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on synthetic pictures: cnn2 (convolutions) and mlp (none)."""
    from minivision.train import fit

    out = tmp_path_factory.mktemp("inspect-runs")
    x, y = synthetic_images(136, classes=4)
    write_pixel_csv(out / "train.csv", x[:96, 0], y[:96])
    write_pixel_csv(out / "test.csv", x[96:, 0], y[96:])
    made = {}
    for model in ("cnn2", "mlp"):
        cfg = TrainConfig(data=str(out / "train.csv"), test_data=str(out / "test.csv"), model=model, steps=3,
                          batch_size=32, val_split=0.25, out=str(out), name=model)
        made[model] = fit(cfg, progress=False, log=lambda m: None).run_dir
    return made


def _pictures(folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate(((40, 30), (28, 28))):
        a = rng.integers(0, 40, size=size[::-1], dtype=np.uint8)
        a[5:20, 8:20] = 220
        Image.fromarray(a).save(folder / f"pic{i}.png")
        paths.append(folder / f"pic{i}.png")
    return paths


def test_inspect_writes_one_png_per_picture_and_never_overwrites(runs, tmp_path, capsys):
    pics = _pictures(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["inspect", str(runs["cnn2"]), *map(str, pics), "--out", str(out), "--top", "2"]) == 0
    first = sorted(p.name for p in out.iterdir())
    assert first == ["pic0.png", "pic1.png"]
    stamp = (out / "pic0.png").read_bytes()
    assert main(["inspect", str(runs["cnn2"]), str(pics[0]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pic0-2.png", "pic0.png", "pic1.png"]
    assert (out / "pic0.png").read_bytes() == stamp
    with Image.open(out / "pic0.png") as im:
        assert im.format == "PNG" and im.width >= 1000
    capsys.readouterr()


def test_inspection_of_a_picture_holds_what_the_png_draws(runs):
    lm = load_model(runs["cnn2"])
    x = torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8)
    found = inspect_pictures(lm, x, top=3)
    for ins in found:
        assert [c for c, _ in ins.cams] == ins.probs.topk(3).indices.tolist()  # the top classes, best first
        assert all(cam.shape == (28, 28) and (cam >= 0).all() for _, cam in ins.cams)
        assert float(ins.probs.sum()) == pytest.approx(1.0, abs=1e-5)
        assert [name for name, _ in ins.blocks] == ["conv2d", "conv2d_1"]
        assert [tuple(m.shape) for _, m in ins.blocks] == [(16, 26, 26), (64, 11, 11)]
        assert tuple(ins.filters.shape) == (16, 1, 3, 3)
    fig = draw_inspection(found[0], lm.classes, "title")
    assert len(fig.axes) == 1 + 3 + 1 + 1 + 2  # picture, 3 maps, scores; filters; 2 blocks


def test_inspect_run_without_pictures_adds_the_report_section(runs, capsys):
    run = runs["cnn2"]
    assert main(["inspect", str(run)]) == 0
    assert (run / "inspect.png").is_file()
    page = (run / "report.html").read_text(encoding="utf-8")
    assert '<section id="inspect">' in page and "What the model looked at" in page
    assert "written by `minivision inspect`" in page
    assert "test picture of each class" not in page and "from the split named in the picture" in page


def _title_boxes(fig) -> list[tuple[str, object]]:
    """(text, window extent in pixels) of the figure's title and every axes title, drawn by Agg's renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = [fig._suptitle] if fig._suptitle is not None else []
    texts += [t for ax in fig.axes for t in (ax.title, ax._left_title, ax._right_title)]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]


def _overlapping(fig) -> list[tuple[str, str]]:
    boxes = _title_boxes(fig)
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def _made_up(top: int, label: int | None = None, seed: int = 0) -> Inspection:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(10, generator=g) * 2, 0)
    return Inspection(torch.randint(0, 255, (1, 28, 28), dtype=torch.uint8, generator=g), probs,
                      [(int(c), torch.rand(28, 28, generator=g)) for c in probs.topk(top).indices],
                      [("conv2d", torch.rand(16, 26, 26, generator=g)),
                       ("conv2d_1", torch.rand(64, 11, 11, generator=g))],
                      torch.randn(16, 1, 3, 3, generator=g), label)


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("top", [1, 3, 5, 10])
def test_the_title_and_first_row_captions_of_a_picture_s_figure_do_not_overlap(top):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    fig = draw_inspection(_made_up(top), FASHION, "photo.jpg: Ankle boot 93.1% (cnn2, train)", photo=photo)
    boxes = _title_boxes(fig)
    assert any(text.startswith("what the model saw") for text, _ in boxes) and len(boxes) >= 4 + top
    assert _overlapping(fig) == []


def test_the_report_figure_s_two_line_title_clears_the_first_row_captions():
    items = [(str(c), _made_up(1, c, seed=2 * c + k)) for c in range(10) for k in range(2)]
    title = ("Where the model looked: 12 right and 8 wrong validation pictures\n"
             "(Grad-CAM of the predicted class; red: strongest)")
    fig = report_figure(items, FASHION, title)
    assert _overlapping(fig) == []
    few = report_figure(items[:2], FASHION, title)  # one class row: the header is the largest part of the figure
    assert _overlapping(few) == []


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_bad_inputs_are_one_line(runs, tmp_path, capsys):
    line = _one_line_error(capsys, ["inspect", str(runs["cnn2"]), str(tmp_path / "missing.png"), "--out",
                                    str(tmp_path / "o")])
    assert "missing.png" in line
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    not_a_picture = _one_line_error(capsys, ["inspect", str(runs["cnn2"]), str(text), "--out", str(tmp_path / "o")])
    assert "notes.png" in not_a_picture
    line = _one_line_error(capsys, ["inspect", str(runs["mlp"]), str(text)])
    assert re.search(r"mlp has no convolution layers", line)
    _one_line_error(capsys, ["inspect", str(runs["mlp"])])
    _one_line_error(capsys, ["inspect", str(tmp_path / "no-run"), str(text)])
    good = _pictures(tmp_path / "in")[0]  # one good, one bad: the good one is drawn, the bad one is one line, rc 1
    assert main(["inspect", str(runs["cnn2"]), str(good), str(text), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [ln for ln in err if ln.startswith("error:")] == [not_a_picture] and "Traceback" not in "".join(err)
    assert (tmp_path / "o2" / "pic0.png").is_file()


@needs_fashion_mnist
def test_inspect_a_real_fashion_mnist_run(small_fashion_run, tmp_path, capsys):
    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    trouser = int((ds.test.y == 1).nonzero()[0])
    Image.fromarray(ds.test.x[trouser, 0].numpy()).save(tmp_path / "trouser.png")
    assert main(["inspect", str(small_fashion_run), str(tmp_path / "trouser.png"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "trouser.png").is_file()
    lm = load_model(small_fashion_run)
    ins = inspect_pictures(lm, ds.test.x[trouser:trouser + 1])[0]
    assert lm.classes[int(ins.probs.argmax())] == "Trouser"
    cam = ins.cams[0][1]
    assert cam.shape == (28, 28) and (cam >= 0).all() and float(cam.max()) > 0  # evidence for its answer somewhere


def test_a_model_answering_with_tta_is_titled_with_the_answer_predict_gives(runs, tmp_path):
    """The figure's title and the log line give the model's own answer (its TTA views, as ``predict``) and the
    picture alone's score beside it, since the maps and the score chart are of the picture alone."""
    import json
    import shutil

    import minivision as mv
    from minivision.fileio import write_json
    from minivision.inspect_model import inspect_files

    run = tmp_path / "run"
    shutil.copytree(runs["cnn2"], run)
    meta = json.loads((run / "model.json").read_text())
    meta["tta"] = "flip"
    write_json(run / "model.json", meta)
    pics = _pictures(tmp_path / "in")
    lines: list[str] = []
    inspect_files(load_model(run), [str(pics[0])], tmp_path / "out", log=lines.append)
    want = mv.load(run).predict_details(str(pics[0]))[0]
    alone = mv.load(run).predict_details(str(pics[0]), tta="none")[0]
    assert len(lines) == 1 and lines[0].startswith(
        f"{pics[0]}: {want['label']} {want['score']:.1%} (flip TTA; the picture alone: "
        f"{alone['label']} {alone['score']:.1%})"), (lines, want, alone)
    assert ("[not sure: " in lines[0]) == want["unsure"] and (not want["unsure"] or want["reason"] in lines[0])
    plain: list[str] = []
    inspect_files(load_model(runs["cnn2"]), [str(pics[0])], tmp_path / "out2", log=plain.append)
    assert "TTA" not in plain[0]
