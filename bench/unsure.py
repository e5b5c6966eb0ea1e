"""Unsure answers and calibration of a trained Fashion-MNIST run, measured.

For a run folder: three out-of-distribution scores (the Mahalanobis distance on unit-length penultimate
features, the one the model uses; Lee et al.'s plain Mahalanobis distance; the energy score of Liu et al.
2020), on the Fashion-MNIST test split (in distribution) against CIFAR-10 test pictures made grey 28 x 28,
blank pictures, uniform and Gaussian noise, and simple drawings (lines, circles, rectangles, smileys, white
on black as Fashion-MNIST draws its items): AUROC of each (in distribution = negative, out of distribution
= positive); the share of each set the model marks unsure (trust.judge, all its rules); on the test split,
the share marked unsure and top-1 accuracy among the confident and the unsure pictures; ECE before and
after temperature scaling on the test split.

    OMP_NUM_THREADS=1 python3 bench/unsure.py RUN [RUN ...] [--cifar N_PER_CLASS] [--json FILE]

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


def measure(run: str, sets: dict[str, torch.Tensor]) -> dict:
    lm = load_model(run)
    dev = pick_device("cpu")
    test = dataset_for(lm, split="test").test
    ds = dataset_for(lm)
    if lm.trust is None:  # an older run: fit in memory on its validation split
        cal, unsure, stats = trust.fit_for_model(lm.model, lm.preprocess, ds.train, ds.val, len(lm.classes), device=dev)
        lm.meta.update(calibration=cal, unsure=unsure)
        lm.trust = stats
    t = lm.temperature
    # for comparison: Lee et al.'s Mahalanobis distance on the features as they are (not scaled to unit length)
    idx = trust.stats_subset(len(ds.train))
    f_train, _ = predict_features(lm.model, lm.preprocess, ds.train.x[idx], device=dev)
    f_train = f_train.double()
    means = torch.stack([f_train[ds.train.y[idx] == k].mean(0) for k in range(len(lm.classes))])
    centred = f_train - means[ds.train.y[idx]]
    cov = centred.T @ centred / len(centred)
    precision = torch.linalg.pinv(cov + 1e-6 * float(cov.diagonal().mean()) * torch.eye(len(cov), dtype=torch.float64),
                                  hermitian=True)

    def plain_score(f: torch.Tensor) -> torch.Tensor:
        d = f.double()[:, None, :] - means[None]
        return torch.einsum("nkd,de,nke->nk", d, precision, d).min(1).values

    def scores(x: torch.Tensor) -> dict:
        f, logits = predict_features(lm.model, lm.preprocess, x, device=dev)
        probs = torch.softmax(logits / t, 1)
        verdicts = trust.judge(probs.max(1).values, lm.trust.score(f), blank_pictures(x), lm.meta, EMPTY_NOTE,
                               noise_pictures(x))
        return {"maha": lm.trust.score(f), "plain": plain_score(f), "energy": trust.energy(logits), "logits": logits,
                "unsure": torch.tensor([u for u, _ in verdicts])}

    ind = scores(test.x)
    correct = ind["logits"].argmax(1) == test.y
    sure = ~ind["unsure"]
    out = {"run": run, "model": lm.name, "test_accuracy": float(correct.float().mean()),
           "temperature": t, "calibration_validation": lm.meta["calibration"], "unsure_entry": lm.meta["unsure"],
           "test": {"n": len(test.y), "unsure_share": float(ind["unsure"].float().mean()),
                    "accuracy_confident": float(correct[sure].float().mean()) if bool(sure.any()) else None,
                    "accuracy_unsure": float(correct[~sure].float().mean()) if bool((~sure).any()) else None,
                    "ece_before": trust.ece(torch.softmax(ind["logits"].double(), 1), test.y),
                    "ece_after": trust.ece(torch.softmax(ind["logits"].double() / t, 1), test.y),
                    "before": trust.direction(torch.softmax(ind["logits"].double(), 1), test.y),
                    "after": trust.direction(torch.softmax(ind["logits"].double() / t, 1), test.y)},
           "ood": {}}
    for name, x in sets.items():
        o = scores(x)
        out["ood"][name] = {"n": len(x), "auroc_mahalanobis": auroc(ind["maha"], o["maha"]),
                            "auroc_mahalanobis_plain": auroc(ind["plain"], o["plain"]),
                            "auroc_energy": auroc(ind["energy"], o["energy"]),
                            "unsure_share": float(o["unsure"].float().mean())}
    return out


def table(results: list[dict]) -> str:
    lines = ["| run (model, test top-1) | set | n | AUROC Mahalanobis, unit-length features (used) "
             "| AUROC Mahalanobis, plain | AUROC energy | marked unsure |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        head = f"{Path(r['run']).name} ({r['model']}, {r['test_accuracy']:.2%})"
        te = r["test"]
        lines.append(f"| {head} | Fashion-MNIST test | {te['n']:,} | - | - | - | {te['unsure_share']:.1%} |")
        for name, o in r["ood"].items():
            lines.append(f"| {head} | {name} | {o['n']:,} | {o['auroc_mahalanobis']:.4f} "
                         f"| {o['auroc_mahalanobis_plain']:.4f} | {o['auroc_energy']:.4f} | {o['unsure_share']:.1%} |")
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
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    load_dataset("fashion-mnist", test_only=True)  # fail early when the data is missing
    sets = {"CIFAR-10 grey": cifar_grey(Path(a.cifar_tar), a.cifar), "blank": blanks(),
            "uniform noise": noise(500, "uniform", 1), "Gaussian noise": noise(500, "gaussian", 2),
            "drawings": drawings(400, 3)}
    results = [measure(run, sets) for run in a.runs]
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
