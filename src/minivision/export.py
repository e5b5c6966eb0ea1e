"""Export a trained run to a file that runs without minivision: ONNX (fp32 or int8) or TorchScript.

The exported graph takes what the model itself takes, the picture after minivision's picture
conversion and before normalisation, and does the rest inside, so a caller cannot get the scaling,
the mean/std or the channel order wrong (the most reported fault of exported classifiers):

    pixels    uint8   N x C x H x W   (N dynamic; C, H, W the model's input: model.json's preprocess)
    logits    float32 N x K           (raw: before the temperature in model.json's ``calibration``)
    features  float32 N x F           (the penultimate features, ``forward_features``, as trust.py uses them)

A fine-tuned EfficientNet-Lite0 keeps its input adapter (grey to 3 channels, resize, the backbone's
mean/std) inside its network, so it is inside the export too. The file carries its description in
the ONNX metadata (key ``minivision``: a JSON object, see ``describe``), and a sidecar ``FILE.json``
says the same plus the parity figures. A run with ``trust.safetensors`` gets a copy beside the file,
``FILE.trust.safetensors``.

The graph answers for one view of the pictures. A model that answers with test-time augmentation
(model.json's ``tta``: "flip" or "flip+shift", ``scores.TTA_VIEWS``) keeps that in the metadata's
``model_json``; ``onnx_runtime`` (``minivision predict/evaluate/serve FILE.onnx``) reads it and averages the
views' calibrated softmaxes as the run does. Another reader of the file gets the picture alone's logits
unless it does the same (run each view through the graph, average softmax(logits / T)).

Every export is checked before it is kept (parity): the file is run (onnxruntime's CPU provider, or
the loaded TorchScript module) on the run's test split, and compared with PyTorch on the same uint8
batches. An fp32 export that agrees on fewer than ``MIN_AGREEMENT`` of the top-1 answers is refused;
an int8 export that loses more than ``MAX_INT8_LOSS`` of accuracy is refused. A refused export
leaves no file. Exports are never overwritten: the default name counts up as run folders do
(``model.onnx``, ``model2.onnx``, ...), a name given with ``--out`` that exists is refused.

Our own code here is only the product's part: the wrapper, the metadata and the parity rule. The
export is ``torch.onnx.export`` (the torch.export-based exporter, ``dynamo=True``: the legacy
TorchScript-based one is deprecated in torch 2.9+ and says it will be removed; tried on cnn1 with torch
2.13, both passed the checker and matched PyTorch's logits within 2.4e-6, the torch.export-based graph
with 9 nodes and no Constant nodes against 11; it also exports every registered network, guarded by the
slow test in tests/test_export.py), the check is ``onnx.checker``, the runtime onnxruntime, and int8 is
``onnxruntime.quantization.quantize_static``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import MinivisionError
from .fileio import atomic_path, sha256_file, unfinished, write_json
from .runfiles import LoadedModel, int8_dot_product, load_model

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "minivision-onnx"  # the metadata's ``format`` (TorchScript files say minivision-torchscript)
EXPORT_FORMAT_VERSION = 1
METADATA_KEY = "minivision"
# opset 18: the first with Resize's antialias (EfficientNet-Lite0's input adapter shrinks with it); older
# runtimes than 18 are rare (onnxruntime has run it since 1.14)
OPSET = 18
INPUT_NAME, OUTPUT_NAMES = "pixels", ("logits", "features")
MIN_AGREEMENT = 0.999   # fp32 top-1 agreement with PyTorch below this: the export is refused
MAX_INT8_LOSS = 0.01    # int8: accuracy more than 1 point below PyTorch's is refused
PARITY_PICTURES = 2000  # the comparison is topped up to this many real pictures (or all there are), seeded
PARITY_SEED = 0
CALIBRATION_PICTURES = 300  # int8 calibration: this many training pictures, seeded
CALIBRATION_SEED = 0
BATCH = 256


# ------------------------------------------------------------------------------------ the graph

class ExportedNet(nn.Module):
    """uint8 pixels (N, C, H, W) -> (logits float32 (N, K), features float32 (N, F)).

    Does what ``Preprocess.__call__`` does (x / 255, then (x - mean) / std when the run has them), in the
    same order, then the network's ``forward_features`` and ``forward_head``."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.normalise = bool(mean)
        c = len(mean) or 1
        self.register_buffer("mean", torch.tensor(mean or [0.0], dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0], dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.to(torch.float32) / 255.0
        if self.normalise:
            x = (x - self.mean) / self.std
        f = self.model.forward_features(x)
        return self.model.forward_head(f).float(), f.float().flatten(1)


def wrap(lm: LoadedModel) -> ExportedNet:
    """The run's network (a copy, in NCHW memory format and eval mode) inside ``ExportedNet``."""
    model = copy.deepcopy(lm.model).cpu().float().to(memory_format=torch.contiguous_format).eval()
    return ExportedNet(model, list(lm.preprocess.mean), list(lm.preprocess.std)).eval()


def input_shape(lm: LoadedModel) -> tuple[int, int, int]:
    """(C, H, W) of ``pixels``: the picture after the run's picture conversion."""
    return (lm.preprocess.channels, *lm.preprocess.size)


# ------------------------------------------------------------------------------------ metadata

def describe(lm: LoadedModel, precision: str, fmt: str = "onnx") -> dict[str, Any]:
    """The export's description, stored as JSON under the metadata key ``minivision`` and in the sidecar:
    ``format`` (minivision-onnx or minivision-torchscript), ``format_version``, ``minivision_version``,
    ``classes``, ``model_json`` (the run's model.json verbatim: picture conversion, architecture,
    calibration, unsure thresholds, ``tta``, the test-time views its answers average; absent: "none"),
    ``weights_sha256`` (of the run's model.safetensors), ``input``,
    ``outputs``, ``precision`` (fp32 or int8) and ``trust_file`` (the copied statistics' file name, or None)."""
    from .fileio import read_json

    c, h, w = input_shape(lm)
    return {"format": EXPORT_FORMAT if fmt == "onnx" else "minivision-torchscript",
            "format_version": EXPORT_FORMAT_VERSION, "minivision_version": __version__,
            "classes": list(lm.classes), "model_json": read_json(lm.path / "model.json"),
            "weights_sha256": sha256_file(lm.path / "model.safetensors"),
            "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "shape": [None, c, h, w]},
            "outputs": list(OUTPUT_NAMES), "precision": precision, "trust_file": None}


def set_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` into the ONNX file's ``metadata_props``: ``minivision`` (the whole JSON), and
    ``classes`` (a JSON list) and ``minivision_version`` as keys of their own. What the exporter notes on each
    node (the Python stack and module names it came from: paths of this machine) and the intermediate shapes
    (``value_info``: the runtime infers them) are left out: a fifth of a small model's file."""
    import onnx

    mp = onnx.load(str(path))
    del mp.metadata_props[:]
    for node in mp.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del mp.graph.value_info[:]
    for key, value in ((METADATA_KEY, json.dumps(meta)), ("classes", json.dumps(meta["classes"])),
                       ("minivision_version", meta["minivision_version"])):
        entry = mp.metadata_props.add()
        entry.key, entry.value = key, value
    mp.producer_name, mp.producer_version = "minivision", __version__
    onnx.save(mp, str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``minivision`` metadata of an exported ONNX file (``describe``'s dict). Raises MinivisionError
    when the file is not ONNX or carries none."""
    import onnx

    try:
        mp = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in mp.metadata_props}
        return json.loads(props[METADATA_KEY])
    except KeyError:
        raise MinivisionError(f"{path}: an ONNX file without minivision's metadata") from None
    except Exception as e:  # protobuf's DecodeError, OSError, JSON errors
        raise MinivisionError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0] if str(e) else e})") from None


# ------------------------------------------------------------------------------------ writing the file

@contextlib.contextmanager
def _quiet() -> Any:
    """torch.onnx's chatter kept from the user: its progress lines on stdout, its logger's notes about
    optional packages (torchvision's operators), and library warnings that concern torch's own code."""
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]  # onnxruntime.quantization logs on the root
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)  # torch's internal API deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def exporter_cause(e: BaseException) -> str:
    """The line that says why an exporter failed: the first line of the innermost error it was raised from
    (``torch.onnx.export`` wraps the real cause in a generic "Failed to export the model ... step 1/3"), without
    terminal colour codes, at most 300 characters. Raises KeyboardInterrupt when the chain holds one: a Ctrl-C
    that the exporter turned into its own error type is still an interruption, not a network it cannot export."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and all(cur is not c for c in chain):
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(c, KeyboardInterrupt) or type(c).__name__ == "KeyboardInterrupt" for c in chain):
        raise KeyboardInterrupt
    inner = chain[-1]
    lines = [ln.strip() for ln in _ANSI.sub("", str(inner)).splitlines() if ln.strip()]
    return (lines[0] if lines else type(inner).__name__)[:300]


def write_onnx(net: ExportedNet, shape: tuple[int, int, int], path: Path) -> None:
    """``torch.onnx.export`` of ``net`` to ``path`` (opset ``OPSET``, batch dimension dynamic), then
    ``onnx.checker.check_model`` with full shape inference. Raises MinivisionError with the exporter's
    first line when the network cannot be exported, or the checker's when the file is not valid."""
    import onnx

    example = torch.zeros((2, *shape), dtype=torch.uint8)
    try:
        with _quiet():
            program = torch.onnx.export(net, (example,), None, dynamo=True, opset_version=OPSET,
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1)}},
                                        verbose=False)
            program.save(str(path))
    except Exception as e:  # torch.export's and onnxscript's error types
        raise MinivisionError(f"this network cannot be exported to ONNX: {exporter_cause(e)}") from None
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise MinivisionError(f"the exported file does not pass the ONNX checker: {str(e).splitlines()[0]}") from None


def write_torchscript(net: ExportedNet, shape: tuple[int, int, int], path: Path, meta: dict[str, Any]) -> None:
    """``torch.jit.trace`` of ``net`` (uint8 in, normalisation inside), saved with ``meta`` as the extra
    file ``minivision.json`` (``torch.jit.load(path, _extra_files={"minivision.json": ""})`` reads it)."""
    example = torch.zeros((2, *shape), dtype=torch.uint8)
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(net, (example,), check_trace=True)
            torch.jit.save(traced, str(path), _extra_files={"minivision.json": json.dumps(meta)})
    except Exception as e:
        raise MinivisionError(f"this network cannot be traced to TorchScript: {exporter_cause(e)}") from None


# ------------------------------------------------------------------------------------ runners

def onnx_runner(path: Path) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """uint8 (N, C, H, W) -> (logits, features) from the ONNX file at ``path`` on onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.contiguous().numpy()})
        return torch.from_numpy(logits), torch.from_numpy(features)
    return run


def torchscript_runner(path: Path) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """As ``onnx_runner`` for a TorchScript file (``torch.jit.load``: TorchScript's own archive reader,
    which builds only TorchScript types, not Python's pickle)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # said once to the user by export_run
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            logits, features = module(x)
        return logits, features
    return run


# ------------------------------------------------------------------------------------ parity

def _seeded_pick(n: int, k: int, seed: int) -> torch.Tensor:
    """``k`` of ``range(n)`` (all when ``k >= n``), a seeded random pick, in order."""
    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def parity_pictures(lm: LoadedModel, log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                                  dict[str, Any]]:
    """(uint8 pictures (N, C, H, W), int64 labels (L,) of the first L pictures or None, where they came from)
    for the parity check.

    The first L pictures are the run's labelled held-out pictures: its test split, or its validation split
    when the data has no test split; the accuracies are figured on these only. When they are fewer than
    ``PARITY_PICTURES`` (2,000), the comparison is topped up to ``PARITY_PICTURES`` with a seeded pick
    (``PARITY_SEED``) of the run's other real pictures, validation first, then training, so the top-1
    agreement is never figured on fewer than min(2,000, all the run's pictures). When the run's data cannot
    be read here, ``PARITY_PICTURES`` seeded uniform-noise pictures (no labels: agreement and logit
    differences only), with a note through ``log``. ``source``: ``images`` (a phrase for the user), ``n``,
    ``labelled`` (L) and ``labelled_images`` (the held-out split's name)."""
    from .evaluate import dataset_for

    try:
        ds = dataset_for(lm, split="test")
        if ds.test is None or len(ds.test) < PARITY_PICTURES:
            ds = dataset_for(lm)  # the validation split the run was trained with, and its training split
        held, held_name = (ds.test, "test") if ds.test is not None and len(ds.test) else (ds.val, "validation")
        if held is not None and len(held):
            parts, said = [held.x], [f"{len(held):,} of the {held_name} split"]
            need = PARITY_PICTURES - len(held)
            for name in (("validation", "training") if held_name == "test" else ("training",)):
                split = ds.val if name == "validation" else ds.train
                if need <= 0 or split is None or not len(split):
                    continue
                idx = _seeded_pick(len(split), need, PARITY_SEED)
                parts.append(split.x[idx])
                said.append(f"{len(idx):,} of the {name} split" + (" (seeded pick)" if len(idx) < len(split) else ""))
                need -= len(idx)
            x = torch.cat(parts) if len(parts) > 1 else held.x
            return x, held.y, {"images": f"{ds.name}: " + " + ".join(said), "n": int(len(x)),
                               "labelled": int(len(held)), "labelled_images": f"{held_name} split"}
        reason = "its data has no test or validation split"
    except MinivisionError as e:
        reason = str(e)
    log(f"note: parity on {PARITY_PICTURES:,} seeded random pictures: the run's data cannot be read here ({reason})")
    g = torch.Generator().manual_seed(PARITY_SEED)
    x = torch.randint(0, 256, (PARITY_PICTURES, *input_shape(lm)), generator=g, dtype=torch.uint8)
    return x, None, {"images": "random pictures, seed 0 (the run's data could not be read)",
                     "n": PARITY_PICTURES, "labelled": 0, "labelled_images": None}


def reference_outputs(lm: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's (logits, features) for uint8 ``x`` as ``predict`` computes them (``predict_features``:
    the run's Preprocess, fp32, CPU)."""
    from .inference import predict_features

    features, logits = predict_features(lm.model, lm.preprocess, x, device=torch.device("cpu"), precision="fp32",
                                        batch_size=BATCH)
    return logits, features


def compare(run: Callable, x: torch.Tensor, y: torch.Tensor | None, ref_logits: torch.Tensor,
            source: dict[str, Any]) -> dict[str, Any]:
    """Parity figures of an exported file's ``run`` against PyTorch's ``ref_logits`` (N, K) on ``x``:
    ``n``, ``agreement`` (fraction of top-1 answers the same), ``max_abs_logit_diff``, ``accuracy_torch``
    and ``accuracy_export`` (fractions 0-1, on the first ``len(y)`` pictures, the labelled held-out ones;
    None without labels), and ``source``'s keys (where the pictures came from)."""
    out = []
    for i in range(0, len(x), BATCH):
        out.append(run(x[i:i + BATCH])[0].float())
    logits = torch.cat(out) if out else torch.empty(0, ref_logits.shape[1])
    if logits.shape != ref_logits.shape:
        raise MinivisionError(f"the exported file returns logits of shape {tuple(logits.shape)}, PyTorch "
                              f"{tuple(ref_logits.shape)}")
    a, b = ref_logits.argmax(1), logits.argmax(1)
    figures = {"n": int(len(x)), "agreement": float((a == b).double().mean()) if len(x) else float("nan"),
               "max_abs_logit_diff": float((logits - ref_logits).abs().max()) if len(x) else 0.0,
               "accuracy_torch": None, "accuracy_export": None, **source}
    figures["n"] = int(len(x))  # ``source`` names the pictures; the count is the one compared
    if y is not None and len(y):  # the labelled held-out pictures come first (``parity_pictures``)
        m = len(y)
        figures["accuracy_torch"] = float((a[:m] == y).double().mean())
        figures["accuracy_export"] = float((b[:m] == y).double().mean())
    return figures


def parity_line(p: dict[str, Any], label: str) -> str:
    """One line of parity figures for the user."""
    acc = (f"; accuracy {p['accuracy_export']:.2%} (PyTorch {p['accuracy_torch']:.2%}) on the "
           f"{p.get('labelled') or p['n']:,} pictures of the {p.get('labelled_images') or 'labelled pictures'}"
           if p.get("accuracy_torch") is not None else "")
    return (f"parity ({label} vs PyTorch, {p['n']:,} pictures: {p['images']}): top-1 agreement {p['agreement']:.2%}, "
            f"largest logit difference {p['max_abs_logit_diff']:.2g}{acc}")


# ------------------------------------------------------------------------------------ int8

def calibration_pictures(lm: LoadedModel, fallback: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """``CALIBRATION_PICTURES`` training pictures of the run's data (a seeded random pick), and what they were;
    the first of ``fallback`` (the parity pictures) when the training split cannot be read."""
    from .evaluate import dataset_for

    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    try:
        ds = dataset_for(lm)
        pool, where = ds.train.x, f"{ds.name} training split"
    except MinivisionError:
        pool, where = fallback, "the parity pictures (the run's training data could not be read)"
    idx = torch.randperm(len(pool), generator=g)[:CALIBRATION_PICTURES].sort().values
    return pool[idx], {"images": where, "n": int(len(idx)), "seed": CALIBRATION_SEED,
                       "pick": "torch.randperm(len(split), generator=manual_seed(seed))[:n]"}


def quantize_int8(fp32_path: Path, out_path: Path, pictures: torch.Tensor) -> None:
    """``onnxruntime.quantization.quantize_static`` of ``fp32_path`` into ``out_path``: QDQ format, int8
    per-channel weights (in 7-bit range, see below), int8 activations, calibrated (MinMax) on ``pictures``
    (uint8 (N, C, H, W)), after ``quant_pre_process`` (shape inference and graph optimisation, as onnxruntime's
    docs advise). The uint8 ``pixels`` input and its Cast stay as they are (only float tensors are
    quantized); checked after."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: pictures[i:i + 32].numpy()} for i in range(0, len(pictures), 32)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="minivision-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with _quiet():
            try:
                # symbolic shape inference fails on the exporter's graphs (onnxruntime 1.31: a shape it
                # cannot read); the ONNX shape inference and the graph optimisation (batch norm folded
                # into convolutions) still run
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            except Exception:  # the pre-processing is an optimisation: quantize the file as exported
                shutil.copyfile(fp32_path, prepared)
            # reduce_range: 7-bit weights. onnxruntime's docs: x86 CPUs with AVX2 or AVX-512 but without VNNI
            # can saturate in the int8 kernels; measured on this AVX2 machine (first 2,000 test pictures,
            # fp32 / 8-bit / 7-bit): cnn1 on CIFAR-10 53.2% / 32.6% / 53.4%, mvnet-t on Fashion-MNIST
            # 90.85% / 90.2% / 90.9%. A VNNI CPU gives the same answers or closer ones.
            quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QInt8)
    mp = onnx.load(str(out_path))
    elem = mp.graph.input[0].type.tensor_type.elem_type
    if mp.graph.input[0].name != INPUT_NAME or elem != onnx.TensorProto.UINT8:
        raise MinivisionError("quantization changed the input: the int8 file does not take uint8 pixels")
    if drop_unused_opsets(mp):
        onnx.save(mp, str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)


def drop_unused_opsets(mp: Any) -> bool:
    """Remove from the ONNX model ``mp`` (in place) the operator-set imports no node uses: onnxruntime's graph
    optimisation (``quant_pre_process``) declares every domain it knows (``com.microsoft.nchwc``,
    ``org.pytorch.aten``, ``ai.onnx.training``, ...) though the nodes use the standard one. The standard
    domain (``""``/``ai.onnx``) is always kept. Returns True when something was removed."""
    used = {n.domain or "" for n in mp.graph.node}
    for f in mp.functions:
        used.add(f.domain or "")
        used.update(n.domain or "" for n in f.node)
    keep = [o for o in mp.opset_import if (o.domain or "") in used | {"", "ai.onnx"}]
    if len(keep) == len(mp.opset_import):
        return False
    kept = [(o.domain, o.version) for o in keep]
    del mp.opset_import[:]
    for domain, version in kept:
        mp.opset_import.add(domain=domain, version=version)
    return True


# ------------------------------------------------------------------------------------ the command

@contextlib.contextmanager
def _new_file(path: Path, what: str | None = None) -> Any:
    """As ``fileio.atomic_path``, but the finished file is put in place with ``os.link``, which fails when
    ``path`` exists by then (another export took the name meanwhile) instead of replacing it. ``what`` names
    the file in the error when its folder refuses the temporary file (default ``path``)."""
    from .fileio import _UMASK, fsync_path

    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MinivisionError(f"cannot write {what or path}: {e.strerror or e} in the folder {path.parent}") from None
    os.fchmod(fd, 0o666 & ~_UMASK)  # the usual mode of a new file, as fileio's files get
    os.close(fd)
    tmp = Path(name)
    try:
        with unfinished(tmp):
            yield tmp
            fsync_path(tmp)
            os.link(tmp, path)
        fsync_path(path.parent, directory=True)
    except FileExistsError:
        raise MinivisionError(f"{path} appeared while exporting (another export?); it was left as it is, "
                              "export again") from None
    finally:
        tmp.unlink(missing_ok=True)


def make_folders(path: Path, what: str) -> list[Path]:
    """Create the missing folders above the file ``path``; returns those created, deepest first (for
    ``remove_folders`` when the export fails). Raises MinivisionError naming ``what`` (``--out FILE`` or the
    file) when a part of the path is a file, or a folder cannot be made (permission, read-only disk)."""
    missing, p = [], path.parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise MinivisionError(f"cannot write {what}: {p} is a file, not a folder")
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            made.insert(0, folder)
    except OSError as e:
        remove_folders(made)
        raise MinivisionError(f"cannot write {what}: cannot make the folder {folder} ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise MinivisionError(f"cannot write {what}: the folder {path.parent} is not writable")
    return made


def remove_folders(made: list[Path]) -> None:
    """Remove the folders ``make_folders`` created (deepest first), each only when it is still empty."""
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def default_name(fmt: str, int8: bool) -> str:
    return "model.torchscript" if fmt == "torchscript" else ("model.int8.onnx" if int8 else "model.onnx")


def companions(path: Path) -> tuple[Path, Path]:
    """(sidecar FILE.json, FILE.trust.safetensors) of an exported file."""
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".trust.safetensors")


def _taken(path: Path) -> bool:
    return path.exists() or any(p.exists() for p in companions(path))


def choose_path(lm: LoadedModel, fmt: str, int8: bool, out: str | os.PathLike | None) -> Path:
    """Where the export goes. Default: ``RUN/export/model.onnx`` (``model.int8.onnx``, ``model.torchscript``),
    or ``model2.onnx``, ``model3.onnx``, ... whichever is free first (as run folders count up). A path given
    as ``out`` that exists (or whose sidecar does) is refused: an export never replaces a file. So is an ONNX
    export's name that does not end in ``.onnx``: ``predict``, ``evaluate`` and ``serve`` know the file by it."""
    if out is not None:
        path = Path(out)
        if path.is_dir():
            raise MinivisionError(f"--out {path} is a folder; give a file name, e.g. {path / default_name(fmt, int8)}")
        if fmt == "onnx" and not path.name.lower().endswith(".onnx"):
            raise MinivisionError(f"--out {path}: an ONNX export's name must end in .onnx (predict, evaluate and "
                                  f"serve know the file by it), e.g. {path.with_name(path.name + '.onnx')}")
        if _taken(path):
            raise MinivisionError(f"--out {path} exists (or its sidecar does); exports are never overwritten: "
                                  "give another --out")
        return path
    stem, _, ext = default_name(fmt, int8).partition(".")
    n = 1
    while True:
        path = lm.path / "export" / (f"{stem}.{ext}" if n == 1 else f"{stem}{n}.{ext}")
        if not _taken(path):
            return path
        n += 1


def check_format(fmt: str, int8: bool) -> None:
    """MinivisionError (one line, with a did-you-mean) for an unknown format or ``--int8`` with TorchScript."""
    if fmt not in FORMATS:
        close = difflib.get_close_matches(str(fmt).lower(), FORMATS, n=1)
        raise MinivisionError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}"
                              + (f" (did you mean {close[0]!r}?)" if close else ""))
    if int8 and fmt != "onnx":
        raise MinivisionError("--int8 is for ONNX exports (onnxruntime quantizes them); drop --int8 or use "
                              "--format onnx")


def export_run(run: str | os.PathLike | LoadedModel, *, fmt: str = "onnx", int8: bool = False,
               out: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export a finished run (a folder, its model.json, or a loaded model) and check it; returns the sidecar's
    dict (``describe``'s keys, ``parity``, ``file``, ``bytes``, ``sha256``; int8 also ``calibration_set``,
    ``fp32_bytes`` and ``fp32_parity``).

    ``fmt``: ``onnx`` or ``torchscript``; ``int8``: static int8 quantization of the ONNX file; ``out``: the
    file (default ``choose_path``). The file appears only after it passed the checks (written to a temporary
    name and renamed); the sidecar ``FILE.json`` and, for a run with trust statistics,
    ``FILE.trust.safetensors`` beside it. Raises MinivisionError (one line) for a folder that is not a
    finished run, an unknown format, ``int8`` with TorchScript, an ``out`` that exists, a network that cannot
    be exported, an fp32 agreement below ``MIN_AGREEMENT`` or an int8 accuracy loss above ``MAX_INT8_LOSS``
    (both with their figures)."""
    check_format(fmt, int8)
    lm = run if isinstance(run, LoadedModel) else load_model(run)
    path = choose_path(lm, fmt, int8, out)
    meta = describe(lm, "int8" if int8 else "fp32", fmt)
    net = wrap(lm)
    shape = input_shape(lm)
    x, y, source = parity_pictures(lm, log)
    ref_logits, _ = reference_outputs(lm, x)
    sidecar, trust_path = companions(path)
    trust_source = lm.path / str((lm.meta.get("unsure") or {}).get("file") or "trust.safetensors")
    has_trust = lm.trust is not None and trust_source.is_file()
    if has_trust:
        meta["trust_file"] = trust_path.name
        meta["trust_sha256"] = sha256_file(trust_source)  # lets a renamed export check the recorded name's file
    what = f"--out {path}" if out is not None else str(path)
    with contextlib.ExitStack() as pending:  # what a stop (SIGTERM: fileio.remove_unfinished) takes away
        made = make_folders(path, what)
        for folder in reversed(made):
            pending.enter_context(unfinished(folder, "folder"))
        for part in (path, trust_path, sidecar):  # new files: choose_path found none of them
            pending.enter_context(unfinished(part))
        try:
            info = _write_checked(lm, fmt, int8, path, what, meta, net, shape, x, y, ref_logits, source, log)
        except BaseException:
            remove_folders(made)
            raise
        try:  # the companions after the file is in place: a refused or lost export leaves none
            if has_trust:
                with atomic_path(trust_path) as t:
                    shutil.copyfile(trust_source, t)
            write_json(sidecar, info)
        except BaseException:  # stopped or failed while writing them (Ctrl-C, a full disk): no half export
            for done in (sidecar, trust_path, path):
                done.unlink(missing_ok=True)
            remove_folders(made)
            raise
    log(f"exported {path} ({info['bytes']:,} bytes, {meta['precision']}); sidecar {sidecar.name}"
        + (f", trust statistics {trust_path.name}" if has_trust else ""))
    return {**info, "path": str(path)}


def _write_checked(lm: LoadedModel, fmt: str, int8: bool, path: Path, what: str, meta: dict[str, Any], net: ExportedNet,
                   shape: tuple[int, int, int], x: torch.Tensor, y: torch.Tensor | None, ref_logits: torch.Tensor,
                   source: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """``export_run``'s file: written, checked (parity) and put in place at ``path``; returns the sidecar's dict."""
    extra: dict[str, Any] = {}
    with _new_file(path, what) as tmp:
        if fmt == "torchscript":
            log("note: PyTorch marks TorchScript (torch.jit) deprecated; the ONNX export runs without PyTorch "
                "and is the one to keep using")
            write_torchscript(net, shape, tmp, meta)
            parity = compare(torchscript_runner(tmp), x, y, ref_logits, source)
            log(parity_line(parity, "TorchScript"))
            _check_fp32(parity, path)
        else:
            with tempfile.TemporaryDirectory(prefix="minivision-export-") as work, unfinished(work, "tree"):
                fp32 = Path(work) / "model.onnx" if int8 else tmp
                write_onnx(net, shape, fp32)
                set_onnx_metadata(fp32, {**meta, "precision": "fp32"} if int8 else meta)
                parity = compare(onnx_runner(fp32), x, y, ref_logits, source)
                log(parity_line(parity, "ONNX fp32"))
                _check_fp32(parity, path)
                if int8:
                    pictures, meta["calibration_set"] = calibration_pictures(lm, x)
                    quantize_int8(fp32, tmp, pictures)
                    set_onnx_metadata(tmp, meta)
                    extra = {"fp32_bytes": fp32.stat().st_size, "fp32_parity": parity}
                    parity = compare(onnx_runner(tmp), x, y, ref_logits, source)
                    log(parity_line(parity, "ONNX int8") + f"; {tmp.stat().st_size:,} bytes (the fp32 graph it was "
                        f"quantized from {extra['fp32_bytes']:,}; an fp32 export's file differs by its metadata)")
                    _check_int8(parity, path)
                    if int8_dot_product() is False:
                        log("note: this CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX): "
                            "expect the int8 file to be smaller than the fp32 one here, not faster")
        info = {**meta, "parity": parity, **extra, "file": path.name, "bytes": tmp.stat().st_size,
                "sha256": sha256_file(tmp)}
    return info


def _check_fp32(p: dict[str, Any], path: Path) -> None:
    if not p["agreement"] >= MIN_AGREEMENT:
        raise MinivisionError(f"export refused, not written to {path}: the file agrees with PyTorch on "
                              f"{p['agreement']:.2%} of {p['n']:,} top-1 answers (at least {MIN_AGREEMENT:.1%} "
                              f"needed), largest logit difference {p['max_abs_logit_diff']:.3g}")


def _check_int8(p: dict[str, Any], path: Path) -> None:
    if p["accuracy_torch"] is not None:
        loss = p["accuracy_torch"] - p["accuracy_export"]
        what = f"accuracy {p['accuracy_export']:.2%} vs PyTorch's {p['accuracy_torch']:.2%}"
    else:  # no labels: the answers that changed stand for the accuracy lost
        loss, what = 1.0 - p["agreement"], f"top-1 agreement {p['agreement']:.2%} (no labels)"
    if loss > MAX_INT8_LOSS:
        raise MinivisionError(f"int8 export refused, not written to {path}: {what}, more than "
                              f"{MAX_INT8_LOSS * 100:g} percentage point lost (agreement {p['agreement']:.2%}, "
                              f"largest logit difference {p['max_abs_logit_diff']:.3g}); use the fp32 export")
