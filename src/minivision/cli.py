"""The ``minivision`` command: train, evaluate, predict, calibrate, show, embed, compare, models, summary, bench, serve,
export, inspect, lr-find.

Every argument is checked for type and range; unknown flags and names get a "did you mean";
problems a user can fix print one ``error:`` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import re
import signal
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .config import DEVICES, add_train_arguments
from .errors import MinivisionError
from .errors import Note as MinivisionNote


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and "did you mean" for unknown flags and choices.

    Unknown flags are collected by the top-level parser (argparse hands a subcommand's leftovers up), so
    ``parse_args`` looks at the subcommand that was used and suggests only its flags; every unknown
    argument is named, with a suggestion where one is close."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self._unrecognized(extras, getattr(ns, "command", None))
        return ns

    def _unrecognized(self, extras: list[str], command: str | None) -> None:
        parser: argparse.ArgumentParser = self
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                parser = action.choices[command]
        names = {s.lstrip("-"): s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        named = []
        for arg in extras:
            flag = arg.split("=", 1)[0]
            close = (difflib.get_close_matches(flag.lstrip("-"), list(names), n=1)
                     if flag.startswith("--") and len(flag) > 2 else [])
            named.append(f"{arg} (did you mean {names[close[0]]}?)" if close else arg)
        parser.error(f"unrecognized arguments: {' '.join(named)} (see {parser.prog} -h)")

    def error(self, message: str) -> None:  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        self.exit(2, f"error: {self.prog}: {message}\n")


def _number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {text}")
        if hi is not None and (value >= hi if hi_open else value > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {text}")
        return value
    return parse


def _model_and_split(p: argparse.ArgumentParser) -> None:
    """A saved model and the data split it is run on (evaluate, embed)."""
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--data", help="dataset (default: the one the model was trained on); other data is matched to "
                                  "the model's classes by name")
    p.add_argument("--data-dir")
    p.add_argument("--test-data")
    p.add_argument("--split", choices=["test", "val", "train"],
                   help="default: test, or val for a model whose data had no test split (as its report); other "
                        "data (--data) without split folders is scored whole")
    p.add_argument("--device", choices=DEVICES, default="auto")


TTA_CHOICES = ("none", "flip", "flip+shift")  # scores.TTA_MODES (not imported here: the parser stays light)


def _tta_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--tta [MODE]`` of predict and evaluate: absent, the model's own; alone, flip; or a mode."""
    p.add_argument("--tta", nargs="?", const="flip", default=None, choices=("auto", *TTA_CHOICES), metavar="MODE",
                   help=f"test-time augmentation: {what}. MODE: flip (the picture and its mirror image), "
                        "flip+shift (those two, each also moved by one pixel up, down, left and right: 10 views), "
                        "none (the picture alone) or auto (the model's own). "
                        "Default: the model's own setting, chosen when it was trained (train --tta); "
                        "--tta alone means flip")


def _tta_alone(argv: list[str]) -> list[str]:
    """``argv`` with a ``--tta`` of predict or evaluate that is followed by a path (a file or folder that exists,
    or a name with a dot, a slash or a wildcard) rather than a mode written ``--tta=flip``, so
    ``predict RUN --tta photo.png`` reads the photo as it did before ``--tta`` took a mode; anything else after
    ``--tta`` is a mode, checked by the parser ("did you mean 'flip'?")."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in ("predict", "evaluate"):
        return argv
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--":
            break
        after = out[i + 1]
        if arg == "--tta" and after not in ("auto", *TTA_CHOICES) and (
                any(c in after for c in "./\\*?[") or Path(after).exists()):
            out[i] = "--tta=flip"
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minivision", description="Train, evaluate and use image classifiers for small images.")
    p.add_argument("--version", action="version", version=f"minivision {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model; writes a run folder (runs/train, runs/train2, ...)")
    add_train_arguments(t, _number)  # one flag per training setting, from config.SETTINGS
    t.add_argument("--resume", metavar="RUN",
                   help="continue an interrupted run, or extend a finished one with --epochs")
    t.add_argument("--json", action="store_true", help="the final metrics as one JSON object on stdout "
                                                           "(the progress lines go to stderr)")

    e = sub.add_parser("evaluate", help="accuracy, loss, per-class accuracy and confusion matrix of a model")
    _model_and_split(e)
    _tta_argument(e, "also the accuracy when each answer comes from several views of the picture")
    e.add_argument("--report", action="store_true",
                   help="(re)write the run folder's report: confusion matrices, per_class.csv, mistakes, "
                        "predictions, calibration, report.html")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")

    pr = sub.add_parser("predict", help="classify image files, folders or globs (photos are converted the way "
                                        "the training images were made), or every row of a pixel CSV file")
    pr.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder, its model.json, or an exported .onnx file "
                                                           "(run on onnxruntime, without PyTorch)")
    pr.add_argument("paths", nargs="+", metavar="PATH")
    pr.add_argument("--top-k", type=_number(int, 1), default=3)
    pr.add_argument("--device", choices=DEVICES, default="auto")
    _tta_argument(pr, "answer from several views of each picture (the answer of the picture alone is "
                      "shown beside)")
    po = pr.add_mutually_exclusive_group()
    po.add_argument("--json", action="store_true", help="one JSON list on stdout")
    po.add_argument("--csv", metavar="FILE", help="also write path,label,score and the top-k labels and scores here")
    pr.add_argument("--show", metavar="DIR", help="for each photo, a PNG of the photo, what the model saw and its "
                                                  "top-k (DIR is created; existing files are kept)")
    pr.add_argument("--background", choices=["auto", "light", "dark"],
                    help="the photo's background, for Fashion-MNIST-style models (default: the model's setting, "
                         "auto: detected from the corners; a light background is negated)")

    ca = sub.add_parser("calibrate", help="fit the temperature of a run's scores and its unsure-answer thresholds "
                                          "on its validation split (for runs trained without them)")
    ca.add_argument("model", metavar="RUN_OR_MODEL")
    ca.add_argument("--data", help="the dataset the model was trained on (default: as recorded in the run)")
    ca.add_argument("--data-dir")
    ca.add_argument("--test-data")
    ca.add_argument("--device", choices=DEVICES, default="auto")
    ca.add_argument("--json", action="store_true", help="the calibration and unsure entries as one JSON object")

    sh = sub.add_parser("show", help="a grid of sample images with their class names, and the class counts")
    sh.add_argument("data", metavar="DATA", nargs="?", default="fashion-mnist",
                    help="fashion-mnist (default), mnist, cifar10, a CSV file or an image folder")
    sh.add_argument("--data-dir")
    sh.add_argument("--test-data")
    sh.add_argument("--split", choices=["train", "test", "val"], default="train")
    sh.add_argument("--n", type=_number(int, 1, 400), default=40, help="images in the grid (default 40: 4 x 10)")
    sh.add_argument("--seed", type=_number(int, 0), default=0, help="which random images")
    sh.add_argument("--out", default="runs", help="parent folder of the show folder (default runs)")

    em = sub.add_parser("embed", help="2-D map of the model's features (PCA, t-SNE, UMAP); TensorBoard projector files")
    _model_and_split(em)
    em.add_argument("--method", default="pca", help="pca (default), tsne or umap")
    em.add_argument("--n", type=_number(int, 3), default=2000, help="images, a stratified sample (default 2000)")
    em.add_argument("--projector", metavar="DIR",
                    help="write TensorBoard Embedding Projector files here (then: tensorboard --logdir DIR)")
    em.add_argument("--out", metavar="FILE", help="the scatter PNG (default RUN/embedding_METHOD_SPLIT.png)")
    em.add_argument("--seed", type=_number(int, 0), default=0)

    c = sub.add_parser("compare", help="compare runs, or train several models the same way and compare them")
    c.add_argument("runs", nargs="*", metavar="RUN", help="run folders to compare")
    c.add_argument("--models", help="comma list of models to train and compare, e.g. softmax,mlp,cnn1,cnn3,cnn4; "
                                    "one model with a comma list for one setting (--batch-size 32,128,512, "
                                    "--epochs 5,10,40, --lr ...) trains it once per value")
    c.add_argument("--data", default=None, help="dataset for --models (default fashion-mnist)")
    c.add_argument("--data-dir")
    c.add_argument("--test-data")
    c.add_argument("--device", choices=DEVICES, default="auto")
    c.add_argument("--out", default="runs", help="parent folder of the compare folder (default runs)")
    c.add_argument("--name", default="compare", help="compare folder name (default compare; never overwritten)")
    c.add_argument("--json", action="store_true", help="the rows as one JSON list on stdout")
    from .config import add_setting_arguments

    add_setting_arguments(c)  # --epochs, --budget, --seed and every training setting: a value or a sweep

    m = sub.add_parser("models", help="list the registered models")
    m.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'cnn*'")
    m.add_argument("--json", action="store_true")
    m.add_argument("--pretrained", action="store_true",
                   help="list the pretrained backbones (for train --pretrained NAME) and their cards")

    s = sub.add_parser("summary", help="Keras-style layer table of a model name or a run")
    s.add_argument("model", metavar="MODEL_OR_RUN")
    s.add_argument("--input", default="1x28x28", help="CxHxW for a model name (default 1x28x28)")
    s.add_argument("--classes", type=_number(int, 2), default=10)

    b = sub.add_parser("bench", help="speed and accuracy on this machine: the default command, evaluate, budget "
                                     "runs, peak memory, the Keras tutorial CNN against TensorFlow, CIFAR-10")
    b.add_argument("--rows", help="comma list of default, evaluate, budget3m, cnn2, memory, cifar-softmax (the "
                                  "default set), budget30m, cifar15m, cifar30m (15-30 minutes each), or all")
    b.add_argument("--seeds", default="3", help="number of seeds (3 = seeds 0,1,2) or a list like 0,1,2")
    b.add_argument("--out", help="keep the run folders here (default: a temporary folder, deleted)")
    b.add_argument("--cifar", help="CIFAR-10 as a JPEG folder with train/<class>/ and test/<class>/, or an archive "
                                   "of one (.tar.gz, .tgz, .tar, .zip; unpacked once into the cache); without it "
                                   "the CIFAR-10 rows are skipped")
    b.add_argument("--peer-python", help="python of a venv with tensorflow-cpu, the cnn2 row's speed peer "
                                         "(default $MINIVISION_PEER_PYTHON; without one the peer is skipped)")
    b.add_argument("--peer-script", help="the peer's Keras script (keras_peer.py), run by --peer-python")
    b.add_argument("--verbose", action="store_true", help="echo the runs' own output")
    b.add_argument("--json", action="store_true", help="the rows as one JSON object on stdout")

    sv = sub.add_parser("serve", help="HTTP API and web page for a trained model (POST /predict, /docs)")
    sv.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder, its model.json, or an exported .onnx file")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                        "only; 0.0.0.0 for every interface)")
    sv.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="default 8000; 0 = any free port")
    sv.add_argument("--max-body-mb", type=_number(float, 0, 1024, lo_open=True), default=10.0,
                    help="largest request body in MB (default 10): bigger ones get 413")
    sv.add_argument("--max-files", type=_number(int, 1, 1024), default=16, help="images per request (default 16)")
    sv.add_argument("--top-k", type=_number(int, 1), default=3, help="classes per image when a request does not say")
    sv.add_argument("--threads", type=_number(int, 1, 256), help="torch threads (default: half the cores, 1 to 4)")
    sv.add_argument("--device", choices=DEVICES, default="auto")
    sv.add_argument("--access-log", action="store_true", help="log every request")
    sv.add_argument("--jobs", metavar="DIR", default=None,
                    help="also serve the training-jobs API (POST /models ...), keeping its state (a database, "
                         "the uploaded pictures, the trained models) in DIR; off by default, and then serve "
                         "writes nothing")

    ex = sub.add_parser("export", help="write a run's model as ONNX (fp32 or int8) or TorchScript, checked against "
                                       "PyTorch on the run's test pictures")
    ex.add_argument("model", metavar="RUN")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="default onnx")
    ex.add_argument("--int8", action="store_true", help="static int8 quantization (ONNX only), calibrated on a few "
                                                        "hundred training pictures; refused if it loses over 1 point "
                                                        "of accuracy")
    ex.add_argument("--out", metavar="FILE", help="default RUN/export/model.onnx (model.int8.onnx, "
                                                  "model.torchscript), then model2.onnx, ...; never overwritten")
    ex.add_argument("--json", action="store_true", help="the sidecar (description and parity figures) as one JSON "
                                                        "object on stdout")

    ins = sub.add_parser("inspect", help="what a convolutional model sees in a picture: the picture after the "
                                         "conversion, first-layer filters, feature maps, Grad-CAM, scores")
    ins.add_argument("model", metavar="RUN", help="a run folder (or its model.json)")
    ins.add_argument("paths", nargs="*", metavar="PICTURE",
                     help="picture files, folders or globs: one PNG each; none: a right and a wrong picture of each "
                          "class (from --split) with Grad-CAM, as RUN/inspect.png and a section of the run's report")
    ins.add_argument("--out", metavar="DIR", help="folder of the PNGs (default RUN/inspect; existing files are kept)")
    ins.add_argument("--top", type=_number(int, 1, 10), default=3, help="classes with a Grad-CAM map (default 3)")
    ins.add_argument("--split", choices=["test", "val", "train"],
                     help="without pictures: the split the examples come from (default test, else val)")
    ins.add_argument("--background", choices=["auto", "light", "dark"],
                     help="the photo's background, for Fashion-MNIST-style models (as predict)")
    ins.add_argument("--device", choices=DEVICES, default="auto")

    lf = sub.add_parser("lr-find", help="learning-rate range test: the loss against an exponentially rising rate, "
                                        "the plot and a suggested rate as a ready train command")
    from .lr_find import END_LR, LR_FIND_SETTINGS, START_LR, STEPS

    add_train_arguments(lf, _number, only=LR_FIND_SETTINGS)
    lf.add_argument("--steps", dest="find_steps", type=_number(int, 10, 10_000), default=STEPS,
                    help=f"most optimizer steps of the sweep (default {STEPS}; it stops when the loss blows up)")
    lf.add_argument("--start-lr", type=_number(float, 0, lo_open=True), default=START_LR,
                    help=f"first rate (default {START_LR:g})")
    lf.add_argument("--end-lr", type=_number(float, 0, lo_open=True), default=END_LR,
                    help=f"last rate (default {END_LR:g})")

    tu = sub.add_parser("tune", help="hyperparameter search (Optuna): trains trials in a tune folder and prints "
                                     "the best settings as a train command")
    from .tune import add_tune_arguments

    add_tune_arguments(tu, _number)
    return p


# ----------------------------------------------------------------------------- commands

def _json(obj) -> str:
    """Strict JSON (what a browser's JSON.parse accepts): NaN and infinities become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), allow_nan=False)


def cmd_train(a: argparse.Namespace) -> int:
    from . import distributed
    from .config import TrainConfig, config_from, given_settings

    nproc = distributed.processes_wanted(a.nproc, a.resume)
    if nproc > 1 and not distributed.in_worker():  # start N processes that each run this command
        if a.batch_size is not None:
            distributed.check_global_batch(int(a.batch_size), nproc)
        return distributed.launch(getattr(a, "argv", sys.argv[1:]), nproc, time.time() - (time.monotonic() - a.started))
    from .train import fit

    given = given_settings(a)
    if given.get("budget") is not None:
        from .budget import parse_duration

        given["budget"] = parse_duration(given["budget"])
    import contextlib

    # with --json, stdout carries the one JSON object; the progress lines go to stderr
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        if a.resume:
            result = fit(TrainConfig(), resume=a.resume, resume_changes=given, started=a.started)
        else:
            result = fit(config_from(given), started=a.started)
    if result.interrupted:
        return 130
    if not distributed.current().is_main:  # rank 0 reports
        return 0
    summary = {"run": str(result.run_dir), **result.test}
    if a.json:
        print(_json(summary))
    elif result.test and "test_accuracy_tta" in result.test:  # the model answers with test-time augmentation
        print(f"test accuracy {result.test['test_accuracy_tta']:.2%} with {result.test['tta']} TTA "
              f"({result.test['test_accuracy']:.2%} without; {result.test['test_n']:,} images) "
              f"· run saved to {result.run_dir}")
    elif result.test:
        print(f"test accuracy {result.test['test_accuracy']:.2%} (loss {result.test['test_loss']:.4f}, "
              f"{result.test['test_n']:,} images) · run saved to {result.run_dir}")
    else:
        import math

        scored = [r for r in result.history if not math.isnan(r.get("val_accuracy", math.nan))]
        best = max(scored, key=lambda r: (r["val_accuracy"], -r["val_loss"])) if scored else None
        val = (f"validation accuracy {best['val_accuracy']:.2%} (best epoch {best['epoch']}); " if best
               else "no validation split; ")
        print(f"{val}no test split · run saved to {result.run_dir}")
    if result.test and (note := guessing_note(result.test["test_accuracy"], len(result.classes),
                                              result.history)) is not None:
        print(note, file=sys.stderr)  # also with --json: stdout keeps the one JSON line
    return 0


def guessing_note(accuracy: float, num_classes: int, history: list[dict]) -> str | None:
    """One line when a training's test top-1 ``accuracy`` (a fraction) is under 1.5 x chance (1 / ``num_classes``):
    the network learned next to nothing, most often because the budget or the epochs held too few steps
    (``history``: the epochs trained, with their ``seconds``). None otherwise."""
    if num_classes < 2 or accuracy >= 1.5 / num_classes:
        return None
    seconds = sum(float(r.get("seconds", 0.0)) for r in history)
    return (f"note: {accuracy:.1%} is about what guessing gets with {num_classes} classes "
            f"({1 / num_classes:.1%}): the network learned next to nothing in {seconds:.0f} s of training; "
            f"give it more time (--budget, --epochs) or check that the labels match the pictures")


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import format_metrics
    from .onnx_runtime import is_onnx

    if is_onnx(a.model):  # an export: onnxruntime, no torch
        from .onnx_runtime import evaluate_command

        lm, sd, metrics = evaluate_command(a)
    else:
        lm, sd, metrics = _evaluate_run(a)
    if a.json:
        print(_json({**metrics, "split": sd.split_name, "model": str(getattr(lm, "file", lm.path)), "notes": sd.notes}))
    else:
        where = "all images" if sd.split_name == "all" else sd.split_name
        print(format_metrics(metrics, lm.classes, f"{getattr(lm, 'file', lm.path)} on {sd.dataset.name} {where}"))
    return 0


def _evaluate_run(a: argparse.Namespace):
    from .evaluate import only_present, scoring_data, split_outputs, trust_metrics, tta_figures, tta_notes, tta_scores
    from .metrics import metrics_from_logits
    from .runfiles import load_model
    from .scores import tta_mode

    lm = load_model(a.model)
    mode = tta_mode(a.tta, lm.meta)  # --tta as given, else the model's own
    sd = scoring_data(lm, a.data, a.data_dir, a.test_data, split=a.split)
    for note in sd.notes:  # the dataset's own notes come with their "note: " already
        print(f"note: {note.removeprefix('note: ')}", file=sys.stderr)
    ds, split = sd.dataset, sd.split
    logits, features = split_outputs(lm, split, device=a.device)
    metrics = metrics_from_logits(logits, split.y, lm.classes)
    metrics.update(trust_metrics(lm, split, logits, device=a.device, features=features))
    tta_logits = None
    if mode != "none":
        for note in tta_notes(lm.meta, ds.name, lm.path, mode=mode):
            print(f"note: {note}", file=sys.stderr)
        tta_logits, extra = tta_scores(lm, split, mode, device=a.device, plain=logits)
        metrics.update(tta_figures(metrics, metrics_from_logits(tta_logits, split.y, lm.classes), mode), **extra)
    metrics = only_present(metrics, sd.match, lm.classes)
    if a.report:
        from .report.run import report_for_model

        report_for_model(lm, ds, sd.split_name, split, logits, tta_logits, log=lambda m: print(m, file=sys.stderr),
                         tta_mode=mode)
    return lm, sd, metrics


def cmd_predict(a: argparse.Namespace) -> int:
    from .data.rules import expand_paths, is_pixel_csv
    from .onnx_runtime import is_onnx
    from .scores import tta_mode, write_csv

    if is_onnx(a.model):  # an export: onnxruntime, no torch
        from .onnx_runtime import check_cli_options, predict_images, predict_pixel_csv
        from .onnx_runtime import load_onnx as load_model

        check_cli_options(a)
    else:
        from .predict import predict_images, predict_pixel_csv
        from .runfiles import load_model

    lm = load_model(a.model)
    mode = tta_mode(a.tta, lm.meta)  # --tta as given, else the model's own
    if mode != "none":
        from .evaluate import tta_notes

        for note in tta_notes(lm.meta, run_dir=None if is_onnx(a.model) else lm.path, mode=mode):
            print(f"note: {note}", file=sys.stderr)
    if a.background is not None and lm.preprocess.photo.method != "zalando":
        print(f"note: --background has no effect: this model resizes photos ({lm.preprocess.photo.method}), "
              "it does not trim or negate them", file=sys.stderr)
    results: list[dict] = []
    pictures: list[str] = []
    for item in [*a.paths, None]:  # in the order given: pictures in runs, each pixel CSV row by row
        if item is not None and not is_pixel_csv(item):
            pictures.append(item)
            continue
        if pictures:
            results += predict_images(lm, expand_paths(pictures), top_k=a.top_k, device=a.device, tta=a.tta,
                                      inputs=a.show is not None, background=a.background)
            pictures = []
        if item is not None:
            rows = predict_pixel_csv(lm, item, top_k=a.top_k, device=a.device, tta=a.tta)
            print(f"note: {item}: {len(rows):,} pictures, one per row, predicted in file order", file=sys.stderr)
            results += rows
    shown = []
    if a.show is not None:
        from .predict import save_shows

        shown = save_shows(results, a.show)
    for r in results:
        r.pop("input", None)
    ok = any("error" not in r for r in results)
    if a.json:
        print(_json(results))
        return 0 if ok else 1
    for r in results:
        if "error" in r:
            print(f"{r['path']}: error: {r['error']}")
        else:
            rest = ", ".join(f"{t['label']} {t['score']:.1%}" for t in r["top_k"][1:])
            plain = (f"  [{mode} TTA; plain: {r['plain']['label']} {r['plain']['score']:.1%}]" if "plain" in r
                     else "")
            note = f"  [note: {r['note']}]" if "note" in r and r["note"] != r.get("reason") else ""
            unsure = f"  [not sure: {r['reason']}]" if r.get("unsure") else ""
            print(f"{r['path']}: {r['label']} {r['score']:.1%}" + (f"  ({rest})" if rest else "") + plain + note
                  + unsure)
    if a.csv:
        print(f"saved {write_csv(results, a.csv, top_k=min(a.top_k, len(lm.classes)), views=mode != 'none')}",
              file=sys.stderr)
    if shown:
        print(f"saved {len(shown)} picture(s) to {a.show}", file=sys.stderr)
    return 0 if ok else 1


def cmd_calibrate(a: argparse.Namespace) -> int:
    from .fileio import read_json
    from .runfiles import resolve_model_path
    from .trust import OOD_SCORE_UNIT, calibrate_run, describe

    before = None  # the unsure check's score before: a run fitted with the unit-length one is told what changed
    with contextlib.suppress(MinivisionError, OSError, AttributeError):
        before = (read_json(resolve_model_path(a.model) / "model.json").get("unsure") or {}).get("score")
    run, cal, unsure = calibrate_run(a.model, a.data, a.data_dir, a.test_data, device=a.device)
    notes = (["the out-of-distribution check now weighs the size of the model's features as well as their "
              "direction (it weighed their direction only before)"] if before == OOD_SCORE_UNIT else [])
    if a.json:
        print(_json({"run": str(run), "calibration": cal, "unsure": unsure, "notes": notes}))
        return 0
    print(f"{run}, on {cal['n']:,} validation images: {describe(cal)}")
    print(f"unsure when the top score is below {unsure['confidence_threshold']:.1%}, or farther from the training "
          f"pictures than {unsure['ood_keep']:.0%} of the validation images are; saved to model.json")
    for note in notes:
        print(note)
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .show import show_dataset

    show_dataset(a.data, data_dir=a.data_dir, test_data=a.test_data, split=a.split, n=a.n, seed=a.seed, out=a.out)
    return 0


def _default_split(a: argparse.Namespace, lm) -> str:
    """``--split`` as given; else test, or val for a model trained on data without a test split (the split
    its report scored)."""
    if a.split is not None:
        return a.split
    if a.data is None and "test_accuracy" not in (lm.meta.get("metrics") or {}):
        print("note: the model's data has no test split; scoring its validation split", file=sys.stderr)
        return "val"
    return "test"


def cmd_embed(a: argparse.Namespace) -> int:
    from .embed import embed_run
    from .runfiles import load_model

    a.split = _default_split(a, load_model(a.model))

    embed_run(a.model, data=a.data, data_dir=a.data_dir, test_data=a.test_data, split=a.split, method=a.method,
              n=a.n, projector=a.projector, out=a.out, seed=a.seed, device=a.device)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from . import compare

    if a.models and a.runs:
        raise MinivisionError("give run folders or --models, not both")
    if not a.models and not a.runs:
        raise MinivisionError("give run folders to compare, or --models a,b,c to train and compare")
    settings = compare.given_values(a)
    if not a.models:
        extra = [f for f in ("data", "data_dir", "test_data") if getattr(a, f) is not None] + list(settings)
        if extra:
            raise MinivisionError(f"--{extra[0].replace('_', '-')} goes with --models (run folders keep their own)")
        from .fileio import new_run_dir

        rows = compare.compare_runs(a.runs)
        files = compare.write_comparison(rows, new_run_dir(a.out, a.name))
    else:
        models = [m.strip() for m in a.models.split(",") if m.strip()]
        log = (lambda m: print(m, file=sys.stderr)) if a.json else print
        _, rows = compare.train_and_compare(models, data=a.data or "fashion-mnist", data_dir=a.data_dir,
                                            test_data=a.test_data, out=a.out, name=a.name, device=a.device, log=log,
                                            **settings)
        if a.json:
            print(_json(rows))
        return 0  # train_and_compare printed the table and the files
    if a.json:
        print(_json(rows))
    else:
        print(compare.format_table(rows))
        print("saved " + ", ".join(str(p) for p in files.values()))
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from .models import count_parameters, create_model, list_models, model_info

    if getattr(a, "pretrained", False):
        from .pretrained import backbone_rows, format_backbones

        rows = backbone_rows(a.pattern)
        print(_json(rows) if a.json else format_backbones(rows))
        return 0
    rows = []
    for name in list_models(a.pattern):
        info = model_info(name)
        params = count_parameters(create_model(name, in_channels=1, image_size=(28, 28), num_classes=10))
        rows.append({"name": name, "parameters": params, "description": info.description,
                     "defaults": info.defaults})
    if not rows:
        raise MinivisionError(f"no model matches {a.pattern!r}")
    if a.json:
        print(_json(rows))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'params*':>9}  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['parameters']:>9,}  {r['description']}")
    print("* for 1x28x28 input and 10 classes; every model adapts to the dataset")
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    from .models import create_model, format_summary, summarize

    if Path(a.model).exists():
        from .runfiles import load_model

        lm = load_model(a.model)
        model, shape, title = lm.model, (lm.preprocess.channels, *lm.preprocess.size), f"{lm.name} ({lm.path})"
    else:
        try:
            shape = tuple(int(v) for v in a.input.lower().split("x"))
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError
        except ValueError:
            raise MinivisionError(f"--input must look like 1x28x28 (CxHxW), got {a.input!r}") from None
        from .models.mvnet import scratch_options

        kwargs = scratch_options(a.model, shape[0], shape[1:])  # what train builds from scratch for such pictures
        title = f"{a.model} (with the whitening stem train gives it for colour pictures)" if kwargs else a.model
        model = create_model(a.model, in_channels=shape[0], image_size=shape[1:], num_classes=a.classes, **kwargs)
    print(f"Model: {title}")
    print(format_summary(summarize(model, shape)))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from . import benchmark

    rows, seeds = benchmark.select_rows(a.rows), benchmark.parse_seeds(a.seeds)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="minivision-bench-"))
    bench = benchmark.Bench(seeds=seeds, out=out, peer_python=a.peer_python, cifar=a.cifar, echo=a.verbose,
                            peer_script=Path(a.peer_script) if a.peer_script else None)
    try:
        results = benchmark.run_rows(bench, rows)
    finally:
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)
    print(_json({"rows": results}) if a.json else benchmark.render_table(results))
    return 0 if all(r["status"] != "failed" for r in results) else 1


def cmd_serve(a: argparse.Namespace) -> int:
    from .serve.app import serve

    jobs = None if a.jobs is None or a.jobs.lower() == "none" else Path(a.jobs)
    serve(a.model, a.host, a.port, max_body_mb=a.max_body_mb, max_files=a.max_files, top_k=a.top_k,
          threads=a.threads, device=a.device, access_log=a.access_log, jobs_dir=jobs,
          log=lambda m: print(m, flush=True))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import export_run

    log = (lambda m: print(m, file=sys.stderr)) if a.json else print
    info = export_run(a.model, fmt=a.format, int8=a.int8, out=a.out, log=log)
    if a.json:
        print(_json(info))
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from .inspect_model import inspect_files, inspect_report

    if not a.paths:
        if a.out is not None or a.background is not None:
            raise MinivisionError("--out and --background go with pictures; without any, inspect writes "
                                  "RUN/inspect.png and the run's report")
        inspect_report(a.model, split=a.split, device=a.device, log=lambda m: print(m, file=sys.stderr))
        return 0
    if a.split is not None:
        raise MinivisionError("--split goes without pictures (the run's own examples)")
    from .runfiles import load_model

    lm = load_model(a.model)
    saved, errors = inspect_files(lm, a.paths, a.out or lm.path / "inspect", top=a.top, device=a.device,
                                  background=a.background)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if saved:
        print(f"saved {len(saved)} picture(s) to {saved[0].parent}", file=sys.stderr)
    return 0 if not errors else (1 if saved else 2)


def cmd_lr_find(a: argparse.Namespace) -> int:
    from .config import given_settings
    from .lr_find import lr_find_command

    _, _, command = lr_find_command(given_settings(a), steps=a.find_steps, start_lr=a.start_lr, end_lr=a.end_lr,
                                    log=lambda m: print(m, file=sys.stderr))
    print(command)
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    from .tune import command

    return command(a)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "show": cmd_show,
            "calibrate": cmd_calibrate, "embed": cmd_embed, "compare": cmd_compare, "models": cmd_models,
            "summary": cmd_summary, "bench": cmd_bench, "serve": cmd_serve,
            "export": cmd_export, "tune": cmd_tune, "inspect": cmd_inspect, "lr-find": cmd_lr_find}


_SHOWN: set[str] = set()


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning that reaches the command (ours: ``errors.Note``; a library's: Pillow's decompression-bomb
    warning, torch's, matplotlib's) becomes one ``note:`` line on stderr, each text once: no file name,
    line number or source line, which speak to developers, not users."""
    text = " ".join(str(message).split())
    if category.__name__ == "DecompressionBombWarning":
        m = re.search(r"\((\d+) pixels\)", text)
        text = (f"a picture is very large ({int(m.group(1)):,} pixels)" if m else "a picture is very large")
        text += ": decoding it takes long and much memory"
    elif not issubclass(category, MinivisionNote):
        text = re.split(r"(?<=[.!?]) ", text)[0].rstrip(".")  # a library's first sentence is the point
    if text not in _SHOWN:
        _SHOWN.add(text)
        print(f"note: {text}", file=sys.stderr)


# commands that handle SIGTERM themselves: train checkpoints at the next step, serve's server shuts down cleanly
OWN_SIGTERM = ("train", "serve", "tune", "bench")


def _stop(signum: int, frame: object) -> None:
    """SIGTERM: take away the writes in progress (``fileio.remove_unfinished``), say "interrupted" and end with
    130, at once. Raising KeyboardInterrupt here instead is not safe: the signal can arrive while Python code
    runs inside a native extension (onnx's module loading, under nanobind), which aborts on an exception."""
    import os

    from .fileio import remove_unfinished

    remove_unfinished()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, b"interrupted\n")
    os._exit(130)


@contextlib.contextmanager
def _terminate_as_interrupt(command: str):
    """SIGTERM (``kill PID``, a service manager or a batch queue stopping the command) ends it as Ctrl-C does:
    exit 130 with "interrupted", and no temporary file, half-written export or folder made for it left behind
    (the writes in progress, ``fileio.unfinished``). Python's default for SIGTERM ends the process with no
    cleanup. Commands in ``OWN_SIGTERM`` keep their own handling; so does a call from a thread other than the
    main one (where no handler can be set)."""
    old = None
    if command not in OWN_SIGTERM:
        with contextlib.suppress(ValueError):  # not the main thread
            old = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # a --budget counts from here (torch & co. are imported later)
    parser = build_parser()
    args = parser.parse_args(_tta_alone(list(sys.argv[1:] if argv is None else argv)))
    args.started = started
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what train --nproc N runs in each process
    if not args.command:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings(), _terminate_as_interrupt(args.command):
            _SHOWN.clear()  # each command says each note once
            warnings.showwarning = _warning_line
            return COMMANDS[args.command](args)
    except MinivisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # disk full, permission denied, ...: say what and where, no traceback
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
