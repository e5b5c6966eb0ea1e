"""What test-time augmentation adds to a trained run, view set by view set.

For each run folder, the test split (as ``minivision evaluate RUN`` scores it) through the network
once per view, then top-1 accuracy of the averaged softmax probabilities (fastai's and minivision's
rule, ``inference.predict_logits``) and the expected calibration error (15 bins) of that answer
calibrated with the model's temperature (fitted on the plain view of the validation split), for
these view sets:

- ``plain``: the image as it is;
- ``flip``: the image and its horizontal mirror (``--tta flip``);
- ``flip+shift1``: those two, each also moved by one pixel in each of the four directions, the
  border copied outwards (airbench's translate TTA moves by one pixel too): 10 views
  (``--tta flip+shift``);
- ``shift1``: the image and its four one-pixel moves, no mirror (for runs trained without flips).

    python3 bench/tta.py RUN [RUN ...]

Views are scored in batches of 500, fp32, on the CPU. Run it alone: it times nothing, but the
network passes take a while on two cores.
"""

from __future__ import annotations

import argparse
import sys

import torch

from minivision.scores import SHIFTS

SHIFT_VIEWS = ((False, 0, 0), *((False, dy, dx) for dy, dx in SHIFTS))  # "shift1": no mirror


def view_sets(logits: torch.Tensor, shift_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits (V, N, K) per view set: the product's (``scores.TTA_VIEWS``: none, flip, flip+shift; the view
    logits of "flip+shift" start with those of "none" and "flip") and "shift1"."""
    return {"plain": logits[:1], "flip": logits[:2], "flip+shift1": logits, "shift1": shift_logits}


@torch.inference_mode()
def one_view(model, pre, x: torch.Tensor, v: tuple[bool, int, int], batch: int = 500) -> torch.Tensor:
    """Logits (N, K) of one view (mirrored, dy, dx) of uint8 pictures ``x`` (N, C, H, W), fp32 on the CPU."""
    from minivision.inference import view

    model.eval()
    return torch.cat([model(view(pre(x[i:i + batch]), v).contiguous(memory_format=torch.channels_last)).float()
                      for i in range(0, len(x), batch)])


def figures(logits: torch.Tensor, y: torch.Tensor, temperature: float) -> dict[str, float]:
    """Top-1 accuracy and the ECE (15 bins) of the calibrated answer mean_v softmax(logits_v / T)."""
    from minivision.metrics import calibration

    probs = (logits.double() / temperature).softmax(2).mean(0)
    return {"acc": float((probs.argmax(1) == y).double().mean()), "ece": float(calibration(probs, y)["ece"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders")
    a = p.parse_args(argv)

    from minivision.errors import MinivisionError
    from minivision.evaluate import scoring_data
    from minivision.inference import view_logits
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
        dev = torch.device("cpu")
        logits = view_logits(lm.model, lm.preprocess, sd.split.x, "flip+shift", device=dev, batch_size=500)
        shift_logits = torch.stack([logits[0], *(one_view(lm.model, lm.preprocess, sd.split.x, v)
                                                 for v in SHIFT_VIEWS[1:])])
        t = lm.temperature
        rows = {k: figures(v, sd.split.y, t) for k, v in view_sets(logits, shift_logits).items()}
        plain = rows["plain"]["acc"]
        shown = ", ".join(f"{k} {r['acc']:.2%}" + (f" ({(r['acc'] - plain) * 100:+.2f})" if k != "plain" else "")
                          + f" ECE {r['ece']:.2%}" for k, r in rows.items())
        print(f"{run} ({sd.dataset.name} {sd.split_name}, {len(sd.split.y):,} images; augment {augment!r}; "
              f"T {t:.3f}): {shown}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
