"""Run an exported model (``minivision export RUN`` -> ``model.onnx``) on onnxruntime, without PyTorch.

``minivision predict FILE.onnx``, ``evaluate FILE.onnx`` and ``serve FILE.onnx`` come here. They give the
answers the run itself gives, by the same code wherever it can be shared: the picture conversion
(``photo.PictureConversion`` from the export's ``model_json``), the data readers (``data.load_dataset``
inside ``data.dataset.numpy_arrays()``: numpy arrays, no torch), the choice of data to score
(``evaluate.scoring_data``), and the empty, noise, unsure and calibration rules and evaluate's figures
(``scores.py``). Only running the network differs: onnxruntime's CPUExecutionProvider on the graph's
uint8 input ``pixels`` (N x C x H x W, normalised inside the graph) and its outputs ``logits`` (N x K)
and ``features`` (N x F, the penultimate features of the out-of-distribution check).

The export's contract (export.py writes it): the ONNX metadata property ``minivision`` holds JSON with
``format`` "minivision-onnx", ``format_version`` 1, ``classes``, ``model_json`` (the run's model.json:
preprocess, architecture, calibration, unsure, dataset...), ``weights_sha256``, ``input``, ``outputs``,
``precision`` and ``trust_file`` (``FILE.trust.safetensors`` beside the export: the class means and
precision matrix of the unsure check, read with ``safetensors.numpy``). The graph answers for one view of the
pictures; test-time augmentation (model.json's ``tta``: "none", "flip" or "flip+shift", ``scores.TTA_VIEWS``)
is done here, as ``inference.predict_logits`` does it: each view is a picture of its own (``scores.view_np``)
run through the graph, and the views' calibrated softmaxes are averaged.

What an export cannot do the same way says so in one line: ``--show`` (the figures need the run folder)
and a validation split drawn with PyTorch's generator.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MinivisionError, Note
from .fileio import sha256_file
from .scores import (
    EMPTY_NOTE,
    TTA_VIEWS,
    blank_arrays,
    empty_reason,
    judge,
    mahalanobis_score,
    noise_arrays,
    noise_image,
    softmax,
    temperature_of,
    tta_mode,
    uses_log_norm,
    view_np,
)
from .scores import answers as _answers

FORMAT = "minivision-onnx"
FORMAT_VERSION = 1
METADATA_KEY = "minivision"  # the ONNX metadata_props key holding the JSON above
INPUT_NAME, LOGITS, FEATURES = "pixels", "logits", "features"
# Pictures per onnxruntime call. Why 128: smaller batches keep each layer's activations in the CPU's caches;
# measured on the 10,000 Fashion-MNIST test pictures (a default mvnet-t run, 1 intra-op thread, 2-core AMD
# EPYC, load average ~7): fp32 1.16 / 1.23 / 1.34 s at 64 / 128 / 256 (2 threads: 2.09 s at 1,024, 1.51 s at
# 128), int8 2.29 / 2.14 / 2.24 s at 64 / 128 / 256 (bench/export.py times batch 1 and 256 for every precision).
BATCH = 128


def is_onnx(path: str | Path) -> bool:
    """``path`` names an ONNX file (by its suffix, any case): predict, evaluate and serve run it here."""
    return str(path).lower().endswith(".onnx")


@dataclass
class OnnxModel:
    """An export ready to run: the onnxruntime session and what the run's ``LoadedModel`` offers its readers.

    ``path``: the folder holding the export (as ``LoadedModel.path`` is the run folder); ``file``: the .onnx
    file; ``meta``: the run's model.json (``model_json``); ``info``: the export's own metadata; ``trust``:
    (class means float32 (K, F), precision float32 (F, F)) or None."""

    session: Any
    file: Path
    info: dict[str, Any]
    meta: dict[str, Any]
    classes: list[str]
    preprocess: Any  # preprocess.Preprocess
    trust: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def path(self) -> Path:
        return self.file.absolute().parent

    @property
    def name(self) -> str:
        """The network's name (model.json's architecture)."""
        return str((self.meta.get("architecture") or {}).get("name", "onnx"))

    @property
    def temperature(self) -> float:
        """T of model.json's ``calibration``: scores are softmax(logits / T); 1.0 when absent."""
        return temperature_of(self.meta)

    @property
    def weights_sha256(self) -> str:
        return str(self.info.get("weights_sha256") or "")

    def num_parameters(self) -> int | None:
        """The numbers in the graph's initializers (its weights; an int8 export's scales and zero points too), or
        None without the ``onnx`` package to read them."""
        try:
            import onnx
        except ImportError:
            return None
        graph = onnx.load(str(self.file), load_external_data=False).graph
        return int(sum(int(np.prod(t.dims, dtype=np.int64)) for t in graph.initializer))

    def outputs(self, x: np.ndarray, batch_size: int = BATCH) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits float32 (N, K), features float32 (N, F) or None when the graph has no ``features``) for
        uint8 pictures ``x`` (N, C, H, W) at the model's size; no temperature, no TTA."""
        have = {o.name for o in self.session.get_outputs()}
        names = [LOGITS] + ([FEATURES] if FEATURES in have else [])
        k = len(self.classes)
        logits, feats = [], []
        for i in range(0, len(x), batch_size):
            out = self.session.run(names, {INPUT_NAME: np.ascontiguousarray(x[i:i + batch_size])})
            logits.append(np.asarray(out[0], dtype=np.float32))
            if len(out) > 1:
                feats.append(np.asarray(out[1], dtype=np.float32).reshape(len(out[1]), -1))
        if not logits:
            return np.empty((0, k), np.float32), (np.empty((0, 0), np.float32) if len(names) > 1 else None)
        return np.concatenate(logits), (np.concatenate(feats) if feats else None)

    def ood(self, features: np.ndarray | None) -> np.ndarray | None:
        """Out-of-distribution scores (N,) of ``features`` (``scores.mahalanobis_score``), None without the
        trust file or the features."""
        if self.trust is None or features is None:
            return None
        return mahalanobis_score(features, *self.trust, log_norm=bool(uses_log_norm(self.meta)))

    def view_probs(self, x: np.ndarray, mode: str, temperature: float = 1.0,
                   logits: np.ndarray | None = None) -> np.ndarray:
        """float32 (N, K): the mean over the test-time views ``scores.TTA_VIEWS[mode]`` of softmax(view logits /
        ``temperature``) for uint8 pictures ``x`` (N, C, H, W), in the views' order and with the arithmetic of
        ``inference.predict_logits`` (a float32 sum, then divided by the number of views): softmax of that
        function's result, within float rounding. ``logits``: the pictures' own logits, float32 (N, K), when
        already at hand (they stand for the unmoved view). ``mode``: one of ``scores.TTA_MODES`` (KeyError for
        another; ``scores.tta_mode`` checks a user's value)."""
        total: np.ndarray | None = None
        for v in TTA_VIEWS[mode]:
            own = logits is not None and v == (False, 0, 0)
            p = softmax(logits if own else self.outputs(view_np(x, v))[0], temperature)
            total = p if total is None else np.add(total, p, out=total)
        assert total is not None  # every view set has a view
        n = len(TTA_VIEWS[mode])
        return total if n == 1 else total / np.float32(n)


def default_threads() -> int:
    """onnxruntime's intra-op threads when none are asked for: the CPUs this process may run on
    (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing), less the other work running on them now,
    at least 1 (as ``make -l`` holds back jobs on a loaded machine).

    "Running now" is the kernel's count of runnable tasks (the fourth field of /proc/loadavg, less this
    process), the smallest of three readings, so a passing task does not count. Where /proc is missing it is
    the 1-minute load average. Why not the load average everywhere: it also counts tasks that wait without using
    a CPU, and it trails by a minute; on a virtual machine measured here it stayed at 1.1-1.2 with both CPUs idle,
    which cost a thread on an idle machine.

    Why not always every core: on a shared machine a second thread mostly waits for a core, and each layer
    waits for its slowest thread. Measured (10,000 Fashion-MNIST test pictures at batch 128, a default mvnet-t
    export, 2-core AMD EPYC): load average ~7, fp32 1.23 s with 1 thread, 1.42 s with 2; int8 2.14 s and
    3.40 s. Idle: fp32 1.04 s with 1 thread, 0.66 s with 2. On an idle machine this is every CPU,
    onnxruntime's own default."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    busy = running_elsewhere()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows has no load average
            busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def running_elsewhere(path: str = "/proc/loadavg", readings: int = 3) -> int | None:
    """Tasks runnable now besides this one: the smallest of ``readings`` reads of the ``R/T`` field of
    ``path`` (Linux's /proc/loadavg; R counts the reading process too), less 1. None where the file is missing
    or not in that form."""
    seen = []
    for _ in range(readings):
        try:
            with open(path, encoding="ascii") as f:
                field = f.read().split()[3]
            seen.append(int(field.split("/")[0]))
        except (OSError, IndexError, ValueError):
            return None
    return max(0, min(seen) - 1)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1][:300] if text else type(e).__name__


def load_onnx(path: str | Path, *, threads: int | None = None) -> OnnxModel:
    """Open an export for inference on onnxruntime's CPUExecutionProvider (``threads``: its intra-op threads,
    None for ``default_threads()``; idle threads sleep, they do not spin).

    Raises MinivisionError (one line) when the file is missing or not a readable ONNX model, when onnxruntime
    is not installed, when the file is not a minivision export (no ``minivision`` metadata, or another
    format or a newer version of it), when its input is not the uint8 N x C x H x W picture its
    ``model_json`` describes, or when its trust file is damaged. A trust file named but absent is a
    ``Note``: the answers then skip the out-of-distribution check."""
    from .preprocess import Preprocess

    file = Path(path)
    if not file.is_file():
        raise MinivisionError(f"{file}: no such file" if not file.exists() else f"{file}: not a file")
    try:
        import onnxruntime as ort
    except ImportError:
        raise MinivisionError("running an .onnx export needs onnxruntime (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are for developers
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fused, NCHWc convolutions
    options.intra_op_num_threads = int(threads) if threads else default_threads()
    # Idle pool threads sleep instead of spinning: a spinning thread takes a core from the thread doing the work
    # whenever the machine is shared (measured: 10,000 Fashion-MNIST pictures, 2 threads, load ~7: 2.47 s
    # spinning, 1.63 s not).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for damaged files
        raise MinivisionError(f"{file}: not a readable ONNX model ({_first_line(e)})") from None
    props = session.get_modelmeta().custom_metadata_map or {}
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise MinivisionError(f"{file}: not a minivision export: its ONNX metadata has no {METADATA_KEY!r} entry "
                              "(class names, picture conversion); make one with `minivision export RUN`")
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as e:
        raise MinivisionError(f"{file}: the {METADATA_KEY!r} metadata is not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise MinivisionError(f"{file}: the {METADATA_KEY!r} metadata is not a {FORMAT} description")
    try:
        version = int(info.get("format_version", 0))
    except (TypeError, ValueError):
        version = -1
    if version > FORMAT_VERSION:
        raise MinivisionError(f"{file}: written by a newer minivision (export format {info.get('format_version')}); "
                              "upgrade minivision")
    if version < 1:
        raise MinivisionError(f"{file}: the {METADATA_KEY!r} metadata has no valid format_version")
    meta = info.get("model_json")
    missing = [k for k, ok in (("classes", isinstance(info.get("classes"), list) and info.get("classes")),
                               ("model_json", isinstance(meta, dict)),
                               ("model_json.preprocess", isinstance(meta, dict)
                                and isinstance(meta.get("preprocess"), dict))) if not ok]
    if missing:
        raise MinivisionError(f"{file}: the {METADATA_KEY!r} metadata has no {missing[0]}")
    classes = [str(c) for c in info["classes"]]
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    pre = Preprocess.from_dict(meta["preprocess"], dataset_name=dataset.get("name"))
    _check_graph(session, file, pre, len(classes))
    trust = _read_trust(file, info, meta)
    if trust is not None and FEATURES not in {o.name for o in session.get_outputs()}:
        warnings.warn(f"{file.name} has no {FEATURES!r} output: its answers skip the out-of-distribution check",
                      Note, stacklevel=2)
        trust = None
    return OnnxModel(session, file, info, meta, classes, pre, trust)


def _check_graph(session: Any, file: Path, pre: Any, k: int) -> None:
    inputs, outputs = session.get_inputs(), {o.name: o for o in session.get_outputs()}
    want = [pre.channels, *pre.size]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise MinivisionError(f"{file}: expected one input named {INPUT_NAME!r}, the graph has "
                              f"{', '.join(repr(i.name) for i in inputs) or 'none'}")
    if inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4 or [
            d if isinstance(d, int) else None for d in inputs[0].shape[1:]] != want:
        raise MinivisionError(f"{file}: its input is {inputs[0].type} {inputs[0].shape}; the model's pictures are "
                              f"uint8 N x {want[0]} x {want[1]} x {want[2]}")
    if LOGITS not in outputs:
        raise MinivisionError(f"{file}: the graph has no {LOGITS!r} output")
    width = outputs[LOGITS].shape[-1] if outputs[LOGITS].shape else None
    if isinstance(width, int) and width != k:
        raise MinivisionError(f"{file}: {width} logits, but its metadata names {k} classes")


def _read_trust(file: Path, info: dict[str, Any], meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The unsure check's class means and precision matrix from the export's ``trust_file``; None (with a
    ``Note`` where the model has the check) when the file is missing, is not the one whose sha256 the export
    records (``trust_sha256``), or holds statistics of a score this version does not know."""
    name = info.get("trust_file")
    needed = isinstance(meta.get("unsure"), dict) and meta["unsure"].get("ood_threshold") is not None
    if not name:
        if needed:
            warnings.warn("this export carries no unsure statistics (trust file): its answers skip the "
                          "out-of-distribution check", Note, stacklevel=3)
        return None
    # FILE.trust.safetensors beside the file first (a renamed export keeps its own), then the recorded name
    # beside it, only when its sha256 matches the recorded one (a renamed copy must not take another's).
    own, where = file.with_name(file.name + ".trust.safetensors"), file.parent / Path(str(name)).name
    sha = info.get("trust_sha256")
    again = "export the run again to get both files"
    if not own.is_file():
        if not where.is_file() or (sha and sha256_file(where) != sha):
            if needed:
                warnings.warn(f"{own.name} is missing beside {file.name}"
                              + (f" ({where.name} is another export's)" if where.is_file() else "")
                              + f": answers skip the out-of-distribution check ({again})", Note, stacklevel=3)
            return None
        warnings.warn(f"using {where.name} (the name recorded in {file.name}"
                      + (")" if sha else "; no checksum recorded to check it against)"), Note, stacklevel=3)
    else:
        where = own
    from safetensors.numpy import load_file

    try:
        t = load_file(str(where))
        means, precision = t["means"].astype(np.float32), t["precision"].astype(np.float32)
    except KeyError as e:
        raise MinivisionError(f"{where}: no {e.args[0]!r} tensor in it ({again})") from None
    except Exception as e:  # safetensors' own error types for a damaged header or data
        raise MinivisionError(f"{where}: not a readable safetensors file ({_first_line(e)}; {again})") from None
    if means.ndim != 2 or precision.shape != (means.shape[1],) * 2:
        raise MinivisionError(f"{where}: class means {means.shape} and precision {precision.shape} do not fit "
                              f"({again})")
    if where == own and sha and sha256_file(own) != sha:  # readable, but copied in from another export
        warnings.warn(f"{own.name} is not the file {file.name} records (another export's?): answers skip the "
                      f"out-of-distribution check ({again})", Note, stacklevel=3)
        return None
    if uses_log_norm(meta) is None:  # statistics for a score this version does not know
        warnings.warn(f"{file.name}: its unsure check uses a score this minivision does not know "
                      f"({(meta.get('unsure') or {}).get('score')!r}): answers skip the out-of-distribution check",
                      Note, stacklevel=3)
        return None
    return means, precision


# ----------------------------------------------------------------------------------------------- predict

def predict_images(om: OnnxModel, images: list[Any], *, top_k: int = 5, names: list[str] | None = None,
                   tta: bool | str | None = None, inputs: bool = False, background: str | None = None,
                   device: str = "cpu") -> list[dict[str, Any]]:
    """``predict.predict_images`` for an export: paths, bytes or PIL images -> one answer each (path, label,
    index, score, top_k, unsure, reason; ``empty``/``note`` for an empty picture; ``plain``, the answer of the
    picture alone, when test-time augmentation is used; ``input``, the uint8 (C, H, W) numpy array the model
    saw, with ``inputs``), or path, error.

    The same conversion (``om.preprocess.photo.convert``), calibrated scores softmax(logits / T), test-time
    augmentation and verdicts (``scores.judge``) as the run's own ``predict``. ``tta``: the view set
    (``scores.tta_mode``): None or "auto" for the model's own (model.json's ``tta``, "none" when it has none),
    "none", "flip" or "flip+shift", True for "flip", False for "none"; see ``answer_batch``. Raises
    MinivisionError (one line) for a bad ``top_k``, ``background`` or ``tta``, before any picture is read.
    ``device``: taken for the CLI's sake; an export runs on the CPU (``check_cli_options``)."""
    from .data.images import open_image
    from .photo import BACKGROUNDS

    if top_k < 1:
        raise MinivisionError(f"--top-k must be >= 1, got {top_k}")
    mode = tta_mode(tta, om.meta)
    if background not in (None, *BACKGROUNDS):
        raise MinivisionError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    results: list[dict[str, Any]] = []
    arrays, where, noisy = [], [], []
    for i, item in enumerate(images):
        name = names[i] if names else (str(item) if isinstance(item, (str, Path)) else f"image {i}")
        try:
            img = item if hasattr(item, "convert") else open_image(item, min_side=om.preprocess.photo.decode_side)
            x = om.preprocess.photo.convert(img, background)
            arrays.append(x)
            where.append(len(results))
            why = empty_reason(img, x)
            results.append({"path": name, **({"empty": True, "note": why} if why else {})})
            noisy.append(noise_image(img))
        except MinivisionError as e:
            results.append({"path": name, "error": str(e).removeprefix(f"{name}: ")})
        except OSError as e:
            results.append({"path": name, "error": f"cannot read: {e.strerror or e}"})
    if arrays:
        batch = np.stack(arrays)
        empty = np.array([bool(results[r].get("empty")) for r in where])
        scored = answer_batch(om, batch, top_k, tta=mode, empty=empty, noise=np.array(noisy, dtype=bool))
        for j, (r, row) in enumerate(zip(where, scored, strict=True)):
            if inputs:
                results[r]["input"] = arrays[j]
            results[r].update(row)
            if results[r].get("note") and results[r]["reason"] == EMPTY_NOTE:  # which kind of empty it is
                results[r]["reason"] = results[r]["note"]
    return results


def answer_batch(om: OnnxModel, batch: np.ndarray, top_k: int, *, tta: bool | str | None = None,
                 empty: np.ndarray | None = None, noise: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per picture of uint8 ``batch`` (N, C, H, W) at the model's size: label, index, score, top_k, unsure,
    reason, from the calibrated scores softmax(logits / T) (T: model.json's ``calibration``).

    ``tta`` (``scores.tta_mode``; None: the model's own): with a view set other than "none" the scores are the
    mean of the views' calibrated softmaxes (``OnnxModel.view_probs``, as ``inference.predict_logits``), the
    verdicts are made on them, and ``plain`` {label, index, score} gives the answer of the picture alone.
    The out-of-distribution check scores the picture alone, as the run's ``predict`` does. ``empty``/``noise``:
    bool (N,), default ``scores.blank_arrays`` / ``noise_arrays`` of the batch. Raises MinivisionError (one
    line) for a bad ``tta``."""
    mode = tta_mode(tta, om.meta)
    logits, features = om.outputs(batch)
    t = om.temperature
    plain = softmax(logits, t)
    probs = plain if mode == "none" else om.view_probs(batch, mode, t, logits=logits)
    verdicts = judge(probs.max(1), om.ood(features), blank_arrays(batch) if empty is None else empty, om.meta,
                     EMPTY_NOTE, noise_arrays(batch) if noise is None else noise)
    return _answers(probs, om.classes, min(top_k, len(om.classes)), verdicts, None if mode == "none" else plain,
                    tta=mode)


def predict_pixel_csv(om: OnnxModel, path: str | Path, *, top_k: int = 5, tta: bool | str | None = None,
                      device: str = "cpu") -> list[dict[str, Any]]:
    """``predict.predict_pixel_csv`` for an export: every row of a pixel CSV, in file order (path ``FILE#ROW``,
    row, id when the file has an id column, then ``answer_batch``'s answer; ``tta`` as there, None: the
    model's own). Raises MinivisionError (one line) for a bad ``top_k`` or ``tta`` (before the file is read), a
    malformed file or pictures of another size."""
    from .data.csvfile import read_pixel_table
    from .data.dataset import numpy_arrays

    if top_k < 1:
        raise MinivisionError(f"--top-k must be >= 1, got {top_k}")
    mode = tta_mode(tta, om.meta)
    with numpy_arrays():
        table = read_pixel_table(path, need_labels=False)
    want = (om.preprocess.channels, *om.preprocess.size)
    if tuple(table.x.shape[1:]) != want:
        side = table.x.shape[-1]
        raise MinivisionError(f"{path}: its pictures are {side}x{side} grey (1x{side}x{side}), the model takes "
                              f"{want[0]}x{want[1]}x{want[2]}")
    results = []
    for i, scored in enumerate(answer_batch(om, table.x, top_k, tta=mode)):
        row: dict[str, Any] = {"path": f"{path}#{i + 1}", "row": i + 1}
        if table.ids is not None:
            row["id"] = table.ids[i]
        results.append({**row, **scored})
    return results


# ----------------------------------------------------------------------------------------------- evaluate

def evaluate(om: OnnxModel, data: str | None = None, data_dir: str | None = None, test_data: str | None = None,
             split: str | None = None, *, tta: bool | str | None = None) -> tuple[dict[str, Any], Any]:
    """``minivision evaluate`` of an export: (metrics, ``evaluate.ScoringData``). The data and split are chosen
    by ``evaluate.scoring_data``, read as numpy arrays; the metrics are ``evaluate``'s (accuracy, loss, n,
    per_class, confusion, classes, macro_f1, most_confused, ece, calibration, and the trust figures:
    temperature, calibrated, ece_before, confidence, unsure), all of the pictures alone.

    ``tta`` (``scores.tta_mode``; None: the model's own, model.json's ``tta``): with a view set other than
    "none", also ``evaluate.tta_figures`` (``tta``, the view set's name, ``tta_accuracy``, ``tta_loss``,
    ``tta_change``) of the mean of the views' softmaxes, uncalibrated (T = 1) as the run's evaluate figures them.
    Raises MinivisionError (one line) for a bad ``tta`` (before any data is read), as ``scoring_data`` does, and
    for a validation split drawn at random (it needs PyTorch's generator)."""
    from .data.dataset import numpy_arrays
    from .evaluate import is_training_data, only_present, scoring_data, tta_figures
    from .scores import calibration_np, direction_np, metrics_np, trust_metrics_np

    mode = tta_mode(tta, om.meta)
    try:
        with numpy_arrays():
            sd = scoring_data(om, data, data_dir, test_data, split=split)
    except MinivisionError as e:  # no test split, and a validation split only PyTorch's generator can draw again
        if not (is_training_data(om, data) and "test_accuracy" not in (om.meta.get("metrics") or {})
                and ("random generator" in str(e) or "has no test split" in str(e))):
            raise
        raise MinivisionError(f"{om.file.name}: the model's data has no test split, and its validation split "
                              "can only be drawn again from the run folder: score other labelled pictures with "
                              "--data FOLDER, or evaluate the run folder (minivision evaluate RUN)") from None
    x, y = np.asarray(sd.split.x), np.asarray(sd.split.y)
    logits, features = om.outputs(x)
    metrics = metrics_np(logits, y, om.classes)
    metrics.update(trust_metrics_np(om.meta, x, y, logits, om.ood(features)))
    if mode != "none" and len(y):
        views = [logits if v == (False, 0, 0) else om.outputs(view_np(x, v))[0] for v in TTA_VIEWS[mode]]
        with np.errstate(divide="ignore"):  # a probability that underflowed to 0: log 0 = -inf, as torch gives
            mean_logits = np.log(np.mean([softmax(z) for z in views], axis=0))
        metrics.update(tta_figures(metrics, metrics_np(mean_logits, y, om.classes), mode))
        # the answers' calibration: the mean of the views' softmax(logits / T), as the model answers
        answers = sum(softmax(z, om.temperature) for z in views) / np.float32(len(views))  # float32, as answered
        metrics["tta_ece"] = calibration_np(answers, y)["ece"]
        metrics["tta_confidence"] = direction_np(answers, y)
    return only_present(metrics, sd.match, om.classes), sd


# ----------------------------------------------------------------------------------------------- the CLI

def check_cli_options(a: Any) -> None:
    """What ``predict`` and ``evaluate`` of an export cannot do as the run does: one line each. ``--show`` and
    ``--report`` draw their figures from the run folder (MinivisionError); ``--device cuda`` is a note (an export
    runs on onnxruntime's CPU provider)."""
    if getattr(a, "show", None) is not None:
        raise MinivisionError("--show draws the run's figures: use the run folder (minivision predict RUN --show DIR)")
    if getattr(a, "report", False):
        raise MinivisionError("--report writes the run folder's report: use the run folder "
                              "(minivision evaluate RUN --report)")
    if getattr(a, "device", "auto") == "cuda":
        warnings.warn("an .onnx export runs on the CPU (onnxruntime); --device cuda has no effect", Note, stacklevel=2)


def evaluate_command(a: Any) -> tuple[OnnxModel, Any, dict[str, Any]]:
    """``minivision evaluate FILE.onnx``: (the export, ``evaluate.ScoringData``, the metrics), the data's notes
    printed on stderr as the run's evaluate prints them. ``a.tta``: ``--tta``'s value (None: the model's own;
    a mode; a bool from an older flag), see ``evaluate``. ``evaluate.tta_notes`` for the view set in use (a
    model trained without flips, digits) are printed whenever it mirrors the pictures, asked for or the model's
    own; not for "none"."""
    import sys

    check_cli_options(a)
    om = load_onnx(a.model)
    mode = tta_mode(getattr(a, "tta", None), om.meta)
    metrics, sd = evaluate(om, a.data, a.data_dir, a.test_data, split=a.split, tta=mode)
    for note in sd.notes:  # the dataset's own notes come with their "note: " already
        print(f"note: {note.removeprefix('note: ')}", file=sys.stderr)
    from .evaluate import tta_notes

    for note in tta_notes(om.meta, sd.dataset.name, mode=mode):  # none for a view set that does not mirror
        print(f"note: {note}", file=sys.stderr)
    return om, sd, metrics
