"""Unsure answers and calibration of a trained run, measured.

For a run folder: out-of-distribution scores on its own test split (in distribution) against pictures
unlike it, as AUROC (in distribution = negative, out of distribution = positive): the Mahalanobis distance
on unit-length penultimate features with their log length as one more coordinate (the one a model fitted
now uses), the same on unit-length features alone (the score before the size term), Lee et al.'s plain
Mahalanobis distance, and the energy score of Liu et al. 2020. Each Mahalanobis variant is fitted here on the
same training pictures as ``trust.fit_for_model`` takes, and "flagged" is the share of a set beyond that
score's own threshold (95% of the validation split kept). Also the share of each set the model marks unsure
with the rules it was saved with (trust.judge, all of them); on the test split, the share marked unsure and
top-1 accuracy among the confident and the unsure pictures; ECE before and after temperature scaling.

The sets, made at the model's size and channels: for a grey model CIFAR-10 test pictures made grey, for a
colour model Fashion-MNIST test pictures in three equal channels; blank pictures, uniform and Gaussian
noise, simple drawings (lines, circles, rectangles, smileys, white on black); and any ``--ood NAME=FOLDER``
(its image files, resized).

    OMP_NUM_THREADS=1 python3 bench/unsure.py RUN [RUN ...] [--cifar N_PER_CLASS] [--ood NAME=DIR] [--json FILE]

CIFAR-10 comes from the JPEG folder archive ``--cifar-tar`` (default ../shared/datasets/cifar10-jpg.tar.gz),
its ``test/`` pictures, the first N per class in archive order. A run trained before trust.py existed is
calibrated here first (on its validation split, in memory; nothing is written).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from minivision import trust
from minivision.data import load_dataset
from minivision.evaluate import dataset_for
from minivision.inference import EMPTY_NOTE, blank_pictures, noise_pictures, pick_device, predict_features
from minivision.runfiles import load_model

HERE = Path(__file__).resolve().parent
CIFAR_TAR = HERE.parent.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


# ---------------------------------------------------------------------------------------------- the pictures

def cifar_grey(path: Path, per_class: int, size: int = 28) -> torch.Tensor:
    """uint8 (N, 1, size, size): CIFAR-10 test JPEGs, grey (PIL's ITU-R 601-2 luma), resized (Lanczos)."""
    counts: dict[str, int] = {}
    out = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] != "test":
                continue
            if counts.get(parts[2], 0) >= per_class:
                continue
            counts[parts[2]] = counts.get(parts[2], 0) + 1
            img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("L")
            out.append(np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8))
            if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                break
    return torch.from_numpy(np.stack(out))[:, None]


def blanks(size: int = 28) -> torch.Tensor:
    """uint8 (9, 1, size, size): one grey level each, 0 to 255."""
    return torch.tensor([0, 16, 32, 64, 96, 128, 192, 224, 255], dtype=torch.uint8)[:, None, None, None].expand(
        -1, 1, size, size).clone()


def noise(n: int, kind: str, seed: int, size: int = 28) -> torch.Tensor:
    """uint8 (n, 1, size, size): uniform 0-255, or Gaussian (mean 128, sd 64, clipped)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return (128 + 64 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 255).to(torch.uint8)


def drawings(n: int, seed: int, size: int = 28) -> torch.Tensor:
    """uint8 (n, 1, size, size): white strokes on black, cycling lines, circles, rectangles and smileys at
    random places and widths."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(img)
        w = int(rng.integers(1, 4))
        a, b = rng.integers(2, size // 2, 2), rng.integers(size // 2, size - 2, 2)
        kind = i % 4
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                d.line([tuple(rng.integers(0, size, 2)), tuple(rng.integers(0, size, 2))], fill=255, width=w)
        elif kind == 1:
            d.ellipse([*a, *b], outline=255, width=w)
        elif kind == 2:
            d.rectangle([*a, *b], outline=255, width=w)
        else:
            c, r = size / 2 + rng.uniform(-3, 3), rng.uniform(8, 12)
            d.ellipse([c - r, c - r, c + r, c + r], outline=255, width=w)
            d.ellipse([c - r / 2 - 1, c - r / 3 - 1, c - r / 2 + 1, c - r / 3 + 1], fill=255)
            d.ellipse([c + r / 2 - 1, c - r / 3 - 1, c + r / 2 + 1, c - r / 3 + 1], fill=255)
            d.arc([c - r / 2, c - r / 3, c + r / 2, c + r / 2], 20, 160, fill=255, width=w)
        out.append(np.asarray(img, dtype=np.uint8))
    return torch.from_numpy(np.stack(out))[:, None]


# ---------------------------------------------------------------------------------------------- scoring

def auroc(negative: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher for ``positive``: the Mann-Whitney U
    statistic over both counts, ties counted half."""
    s = torch.cat([negative, positive]).double()
    ranks = torch.empty_like(s)
    order = s.argsort()
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average ranks of ties
    uniq, inverse = torch.unique(s, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def as_model_input(x: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """uint8 pictures (N, C, H, W) at ``size`` (bilinear) with ``channels`` (grey made three equal channels, colour
    made grey by ITU-R 601-2 luma)."""
    x = x.float()
    if tuple(x.shape[2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and channels == 1:
        x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:])
    return x.round().clamp(0, 255).to(torch.uint8).contiguous()


def folder_pictures(path: Path, limit: int = 3000) -> torch.Tensor:
    """uint8 (N, 3, h, w): the image files under ``path`` (sorted, at most ``limit``), RGB, at the first one's size."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
    out, size = [], None
    for f in files[:limit]:
        img = Image.open(f).convert("RGB")
        size = size or img.size
        out.append(np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8).transpose(2, 0, 1))
    if not out:
        raise SystemExit(f"{path}: no image files")
    return torch.from_numpy(np.stack(out))


def measure(run: str, sets: dict[str, torch.Tensor]) -> dict:
    lm = load_model(run)
    dev = pick_device("cpu")
    ds = dataset_for(lm)
    test = dataset_for(lm, split="test").test
    if lm.trust is None:  # an older run: fit in memory on its validation split
        cal, unsure, stats = trust.fit_for_model(lm.model, lm.preprocess, ds.train, ds.val, len(lm.classes), device=dev)
        lm.meta.update(calibration=cal, unsure=unsure)
        lm.trust = stats
    t = lm.temperature
    idx = trust.stats_subset(len(ds.train))
    f_train, _ = predict_features(lm.model, lm.preprocess, ds.train.x[idx], device=dev)
    y_train = ds.train.y[idx]
    f_val, _ = predict_features(lm.model, lm.preprocess, ds.val.x, device=dev)
    # the two unit-length scores, fitted as trust.fit_for_model fits them, each with its own 95% threshold
    fitted = {"lognorm": trust.Mahalanobis.fit(f_train, y_train, len(lm.classes), log_norm=True),
              "unit": trust.Mahalanobis.fit(f_train, y_train, len(lm.classes), log_norm=False)}
    limits = {k: float(torch.quantile(m.score(f_val).double(), trust.OOD_KEEP)) for k, m in fitted.items()}
    # for comparison: Lee et al.'s Mahalanobis distance on the features as they are (not scaled to unit length)
    f_train = f_train.double()
    means = torch.stack([f_train[y_train == k].mean(0) for k in range(len(lm.classes))])
    centred = f_train - means[y_train]
    cov = centred.T @ centred / len(centred)
    precision = torch.linalg.pinv(cov + 1e-6 * float(cov.diagonal().mean()) * torch.eye(len(cov), dtype=torch.float64),
                                  hermitian=True)

    def plain_score(f: torch.Tensor) -> torch.Tensor:
        d = f.double()[:, None, :] - means[None]
        return torch.einsum("nkd,de,nke->nk", d, precision, d).min(1).values

    def scores(x: torch.Tensor) -> dict:
        x = as_model_input(x, lm.preprocess.channels, tuple(lm.preprocess.size))
        f, logits = predict_features(lm.model, lm.preprocess, x, device=dev)
        probs = torch.softmax(logits / t, 1)
        verdicts = trust.judge(probs.max(1).values, lm.trust.score(f), blank_pictures(x), lm.meta, EMPTY_NOTE,
                               noise_pictures(x))
        out = {"plain": plain_score(f), "energy": trust.energy(logits), "logits": logits,
               "unsure": torch.tensor([u for u, _ in verdicts])}
        for k, m in fitted.items():
            out[k] = m.score(f)
            out[f"{k}_flagged"] = float((out[k] > limits[k]).float().mean())
        return out

    ind = scores(test.x)
    correct = ind["logits"].argmax(1) == test.y
    sure = ~ind["unsure"]
    out = {"run": run, "model": lm.name, "dataset": ds.name, "test_accuracy": float(correct.float().mean()),
           "stem": (lm.meta.get("architecture") or {}).get("kwargs", {}).get("stem"),
           "temperature": t, "calibration_validation": lm.meta["calibration"], "unsure_entry": lm.meta["unsure"],
           "test": {"n": len(test.y), "unsure_share": float(ind["unsure"].float().mean()),
                    "flagged_lognorm": ind["lognorm_flagged"], "flagged_unit": ind["unit_flagged"],
                    "accuracy_confident": float(correct[sure].float().mean()) if bool(sure.any()) else None,
                    "accuracy_unsure": float(correct[~sure].float().mean()) if bool((~sure).any()) else None,
                    "ece_before": trust.ece(torch.softmax(ind["logits"].double(), 1), test.y),
                    "ece_after": trust.ece(torch.softmax(ind["logits"].double() / t, 1), test.y),
                    "before": trust.direction(torch.softmax(ind["logits"].double(), 1), test.y),
                    "after": trust.direction(torch.softmax(ind["logits"].double() / t, 1), test.y)},
           "ood": {}}
    for name, x in sets.items():
        if name.startswith("grey:") and lm.preprocess.channels != 1 or name.startswith("colour:") and \
                lm.preprocess.channels == 1:
            continue
        o = scores(x)
        out["ood"][name.split(":", 1)[-1]] = {
            "n": len(x), "auroc_lognorm": auroc(ind["lognorm"], o["lognorm"]),
            "auroc_unit": auroc(ind["unit"], o["unit"]), "auroc_mahalanobis_plain": auroc(ind["plain"], o["plain"]),
            "auroc_energy": auroc(ind["energy"], o["energy"]), "flagged_lognorm": o["lognorm_flagged"],
            "flagged_unit": o["unit_flagged"], "unsure_share": float(o["unsure"].float().mean())}
    return out


def table(results: list[dict]) -> str:
    lines = ["| run (model, stem, test top-1) | set | n | AUROC: unit length + log length (used) | AUROC: unit length "
             "| AUROC: plain | AUROC: energy | flagged: unit + log length / unit | marked unsure |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        head = f"{Path(r['run']).name} ({r['model']}, {r.get('stem') or '-'}, {r['test_accuracy']:.2%})"
        te = r["test"]
        lines.append(f"| {head} | {r['dataset']} test | {te['n']:,} | - | - | - | - | {te['flagged_lognorm']:.1%} / "
                     f"{te['flagged_unit']:.1%} | {te['unsure_share']:.1%} |")
        for name, o in r["ood"].items():
            lines.append(f"| {head} | {name} | {o['n']:,} | {o['auroc_lognorm']:.4f} | {o['auroc_unit']:.4f} "
                         f"| {o['auroc_mahalanobis_plain']:.4f} | {o['auroc_energy']:.4f} | "
                         f"{o['flagged_lognorm']:.1%} / {o['flagged_unit']:.1%} | {o['unsure_share']:.1%} |")
    lines += ["", "| run | T | ECE test before | ECE test after | top-1 confident | top-1 unsure |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        te = r["test"]
        lines.append(f"| {Path(r['run']).name} ({r['model']}) | {r['temperature']:.3f} | {te['ece_before']:.2%} "
                     f"({te['before']}) | {te['ece_after']:.2%} ({te['after']}) | {te['accuracy_confident']:.2%} | "
                     f"{te['accuracy_unsure']:.2%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--cifar", type=int, default=300, help="CIFAR-10 test pictures per class (default 300)")
    p.add_argument("--cifar-tar", default=str(CIFAR_TAR))
    p.add_argument("--ood", action="append", default=[], metavar="NAME=FOLDER",
                   help="also these pictures as a set unlike the training pictures (repeatable)")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    fm = load_dataset("fashion-mnist", test_only=True)  # fail early when the data is missing
    sets = {"grey:CIFAR-10 grey": cifar_grey(Path(a.cifar_tar), a.cifar), "grey:blank": blanks(),
            "grey:uniform noise": noise(500, "uniform", 1), "grey:Gaussian noise": noise(500, "gaussian", 2),
            "grey:drawings": drawings(400, 3),
            # colour models (32 x 32 here): made at that size, so no resizing smooths the noise
            "colour:Fashion-MNIST, three equal channels": fm.test.x[:2000], "colour:blank": blanks(32),
            "colour:uniform noise, three equal channels": noise(500, "uniform", 1, 32),
            "colour:uniform noise, each channel": torch.randint(0, 256, (500, 3, 32, 32), dtype=torch.uint8,
                                                                generator=torch.Generator().manual_seed(4)),
            "colour:Gaussian noise, three equal channels": noise(500, "gaussian", 2, 32),
            "colour:drawings": drawings(400, 3, 32)}
    for item in a.ood:
        name, _, folder = item.partition("=")
        sets[name] = folder_pictures(Path(folder))
    results = [measure(run, sets) for run in a.runs]
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
