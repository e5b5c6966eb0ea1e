"""What test-time augmentation adds to a trained run, view set by view set.

For each run folder, the test split (as ``minivision evaluate RUN`` scores it) through the network
once per view, then top-1 accuracy of the averaged softmax probabilities (fastai's and minivision's
rule, ``inference.predict_logits``) for these view sets:

- ``plain``: the image as it is;
- ``flip``: the image and its horizontal mirror (what ``--tta`` does);
- ``flip+shift1``: those two, each also moved by one pixel in each of the four directions, the
  border copied outwards (airbench's translate TTA moves by one pixel too): 10 views;
- ``shift1``: the image and its four one-pixel moves, no mirror (for runs trained without flips).

    python3 bench/tta.py RUN [RUN ...]

Views are scored in batches of 500, fp32, on the CPU. Run it alone: it times nothing, but the
network passes take a while on two cores.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (N, C, H, W) moved by (dy, dx) pixels, the border row/column repeated (replicate padding)."""
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    h, w = x.shape[2], x.shape[3]
    big = F.pad(x, pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return big[:, :, top:top + h, left:left + w]


@torch.inference_mode()
def view_probs(model, pre, x: torch.Tensor, batch: int = 500) -> dict[str, torch.Tensor]:
    """Softmax probabilities (N, K) of every view: 'id', 'flip', 'id+dy,dx', 'flip+dy,dx'."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(x), batch):
        xb = pre(x[i:i + batch])
        for mirror in (False, True):
            base = xb.flip(3) if mirror else xb
            name = "flip" if mirror else "id"
            out.setdefault(name, []).append(model(base).float().softmax(1))
            for dy, dx in SHIFTS:
                out.setdefault(f"{name}{dy:+d},{dx:+d}", []).append(
                    model(shifted(base, dy, dx).contiguous(memory_format=torch.channels_last)).float().softmax(1))
    return {k: torch.cat(v) for k, v in out.items()}


def accuracies(probs: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    shifts = [f"{dy:+d},{dx:+d}" for dy, dx in SHIFTS]
    sets = {"plain": ["id"], "flip": ["id", "flip"],
            "flip+shift1": ["id", "flip"] + [f"{m}{s}" for m in ("id", "flip") for s in shifts],
            "shift1": ["id"] + [f"id{s}" for s in shifts]}
    return {name: float((torch.stack([probs[v] for v in views]).mean(0).argmax(1) == y).float().mean())
            for name, views in sets.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders")
    a = p.parse_args(argv)

    from minivision.errors import MinivisionError
    from minivision.evaluate import scoring_data
    from minivision.runfiles import load_model

    torch.manual_seed(0)
    for run in a.runs:
        try:
            lm = load_model(run)
            sd = scoring_data(lm)
        except MinivisionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        augment = (lm.meta.get("augment") or {}).get("spec")
        probs = view_probs(lm.model, lm.preprocess, sd.split.x)
        acc = accuracies(probs, sd.split.y)
        plain = acc["plain"]
        shown = ", ".join(f"{k} {v:.2%} ({(v - plain) * 100:+.2f})" if k != "plain" else f"{k} {v:.2%}"
                          for k, v in acc.items())
        print(f"{run} ({sd.dataset.name} {sd.split_name}, {len(sd.split.y):,} images; augment {augment!r}): {shown}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
