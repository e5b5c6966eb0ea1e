"""What a run folder holds and how it is read back: weights in safetensors, everything else JSON.

``model.safetensors`` + ``model.json`` describe themselves (architecture, classes, preprocessing,
versions), so evaluate, predict, serve and export need nothing but the folder. ``last.safetensors``
is the resume checkpoint: model and optimizer tensors plus the training progress as JSON in the
file's own metadata, so the two can never disagree.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import TrainConfig
from .errors import MinivisionError
from .fileio import load_tensors, read_json, save_tensors, write_json, write_text
from .preprocess import Preprocess

MODEL_FORMAT = "minivision-model"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    return {"minivision": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# the CPU features that decide convolution speed here: AVX2 (fp32), AVX-512, and bf16 / AMX (bf16 autocast)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# x86 instructions that make int8 matrix products fast (onnxruntime's and oneDNN's int8 kernels use them):
# AVX-512 VNNI, AVX-VNNI (the 256-bit form) and AMX's int8 tiles. Without one, int8 runs through AVX2's
# 16-bit multiply-adds and is seldom faster than fp32: measured on an AVX2-only AMD EPYC, the int8 export of
# mvnet-t ran at 0.68x and of mvnet at 0.93x the fp32 export's throughput (docs/BENCHMARKS.md, "Export").
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info() -> tuple[str, list[str] | None]:
    """(the CPU's model name, its feature flags) from /proc/cpuinfo; the flags are None where the file or
    its x86 ``flags`` line is missing (not Linux, or an ARM CPU), the name then ``platform.processor()``."""
    cpu, flags = platform.processor() or platform.machine(), None
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return cpu, None
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return (names[0] if names else cpu), flags


def int8_dot_product() -> bool | None:
    """True when this x86 CPU has one of ``INT8_FLAGS``, False when it has none, None when unknown."""
    flags = cpu_info()[1]
    return None if flags is None else any(f in flags for f in INT8_FLAGS)


def hardware(device: torch.device | None = None) -> dict[str, Any]:
    """What the run ran on: ``cpu`` (model name from /proc/cpuinfo, else platform.processor()),
    ``cpu_flags`` (those of CPU_FLAGS the CPU has, Linux only), ``cores`` (os.cpu_count()),
    ``threads`` (torch intra-op threads), ``os``, and ``gpu`` (the CUDA device's name) when ``device`` is CUDA."""
    import os

    cpu, have = cpu_info()
    flags = [f for f in CPU_FLAGS if f in (have or [])]
    out: dict[str, Any] = {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(),
                           "threads": torch.get_num_threads(), "os": platform.platform(terse=True)}
    if device is not None and device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


@dataclass
class LoadedModel:
    """A model ready for inference, with everything needed to feed it."""

    model: nn.Module
    preprocess: Preprocess
    classes: list[str]
    meta: dict[str, Any]
    path: Path  # the folder holding model.json
    trust: Any = None  # trust.Mahalanobis from trust.safetensors, None for a model without one

    @property
    def name(self) -> str:
        return str(self.meta["architecture"]["name"])

    @property
    def temperature(self) -> float:
        """T of model.json's ``calibration`` (trust.py): scores are softmax(logits / T); 1.0 when absent."""
        from .trust import temperature_of

        return temperature_of(self.meta)


def save_model(folder: Path, model: nn.Module, meta: dict[str, Any], weights_name: str = "model") -> None:
    """Write ``<weights_name>.safetensors`` and, for the main model, ``model.json``."""
    state = {k: v for k, v in model.state_dict().items()}
    save_tensors(folder / f"{weights_name}.safetensors", state, metadata={"format": MODEL_FORMAT})
    if weights_name == "model":
        write_json(folder / "model.json", {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, **meta})


def resolve_model_path(path: str | Path) -> Path:
    """A run folder, its model.json or its model.safetensors -> the folder."""
    from .listeners import run_state

    p = Path(path)
    if p.is_dir():
        if (p / "model.json").is_file():
            return p
        raise MinivisionError(run_state(p) or f"{p} is not a run folder (no model.json in it)")
    if p.is_file() and p.suffix in (".json", ".safetensors"):
        if (p.parent / "model.json").is_file():
            return p.parent
        raise MinivisionError(f"{p}: no model.json beside it")
    if not p.exists():
        raise MinivisionError(f"{p}: no such run folder or model file")
    raise MinivisionError(f"{p}: expected a run folder, model.json or model.safetensors")


def load_model(path: str | Path, weights: str = "model", device: str | torch.device = "cpu", *,
               trust: bool = True) -> LoadedModel:
    """A run folder (or its model.json / model.safetensors) loaded: the network in eval mode on ``device``, its
    preprocessing, classes, model.json and, with ``trust``, its unsure statistics (``trust.load_trust``; False
    leaves them unread, for ``calibrate``, which fits them again). Raises MinivisionError (one line) for a
    folder that is not a finished run, a malformed model.json, or weights that do not fit it."""
    from .models import create_model

    folder = resolve_model_path(path)
    meta = read_json(folder / "model.json")
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise MinivisionError(f"{folder / 'model.json'}: not a minivision model description")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise MinivisionError(f"{folder / 'model.json'}: written by a newer minivision (format "
                              f"{meta['format_version']}); upgrade minivision")
    try:
        arch = meta["architecture"]
        classes = [str(c) for c in meta["classes"]]
        model = create_model(arch["name"], in_channels=int(arch["in_channels"]),
                             image_size=tuple(arch["image_size"]), num_classes=int(arch["num_classes"]),
                             **arch.get("kwargs", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise MinivisionError(f"{folder / 'model.json'}: malformed architecture entry ({e})") from None
    state = load_tensors(folder / f"{weights}.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise MinivisionError(f"{folder}/{weights}.safetensors does not match model.json ({first})") from None
    model.to(device).to(memory_format=torch.channels_last).eval()  # as trained: 2x faster than NCHW on CPU
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    pre = Preprocess.from_dict(meta["preprocess"], dataset_name=dataset.get("name"))  # older files: no photo
    from .trust import load_trust

    return LoadedModel(model, pre, classes, meta, folder, load_trust(folder, meta) if trust else None)


# ---------------------------------------------------------------- start from another model's weights

@dataclass
class InitSource:
    """Weights to start a training from (``--init-from``): a run's model, or a bare weights file."""

    path: Path
    state: dict[str, torch.Tensor]
    architecture: dict[str, Any] | None = None  # model.json's entry; None for a bare weights file
    classes: list[str] | None = None
    preprocess: Preprocess | None = None


def read_init_source(path: str | Path) -> InitSource:
    """A run folder (or its model.json / model.safetensors): its weights, network, classes and
    preprocessing; any other ``.safetensors`` file: its tensors only (never a pickle). Raises
    MinivisionError when the path is neither."""
    p = Path(path)
    if p.is_dir() or p.name == "model.json" or (p.suffix == ".safetensors" and (p.parent / "model.json").is_file()):
        lm = load_model(p, weights=p.stem if p.suffix == ".safetensors" else "model")
        return InitSource(lm.path, {k: v.contiguous() for k, v in lm.model.state_dict().items()},
                          dict(lm.meta["architecture"]), list(lm.classes), lm.preprocess)
    if p.is_file() and p.suffix == ".safetensors":
        return InitSource(p, load_tensors(p))
    if not p.exists():
        raise MinivisionError(f"--init-from {p}: no such run folder or weights file")
    raise MinivisionError(f"--init-from {p}: expected a run folder, its model.json, or a .safetensors weights file")


def load_init_weights(model: nn.Module, source: InitSource, classes: list[str]) -> str:
    """Copy ``source``'s weights into ``model`` (a registered ``ClassifierNet`` built for ``classes``).

    The head is kept when the source was trained on the same classes in the same order (or, for a bare
    weights file, when its head has the same shape), else left as the freshly initialised head the
    model was built with: returns "kept" or "reset". Raises MinivisionError naming the first tensor
    that does not fit."""
    head = f"{model.classifier_name}."
    keep_head = (source.classes == list(classes) if source.classes is not None
                 else all(source.state.get(k) is not None and source.state[k].shape == v.shape
                          for k, v in model.state_dict().items() if k.startswith(head)))
    state = source.state if keep_head else {k: v for k, v in source.state.items() if not k.startswith(head)}
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise MinivisionError(f"--init-from {source.path}: these weights are for another network "
                                  f"(its weight {key!r} is not in this one)")
        if own[key].shape != value.shape:
            raise MinivisionError(f"--init-from {source.path}: weight {key!r} has shape {tuple(value.shape)}, "
                                  f"the model's is {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state and (keep_head or not k.startswith(head))]
    if missing:
        raise MinivisionError(f"--init-from {source.path}: no weight for {missing[0]!r} ({len(missing)} missing)")
    model.load_state_dict(state, strict=False)
    return "kept" if keep_head else "reset"


# ---------------------------------------------------------------- checkpoints (resume)

def save_checkpoint(path: Path, model: nn.Module, optimizer: Any, progress: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = val
            elif val is not None:
                tensors[f"optim.{idx}.{key}"] = torch.tensor(val)
    for name, val in progress.pop("rng", {}).items():
        tensors[f"rng.{name}"] = val
    meta = {"progress": json.dumps(progress), "param_groups": json.dumps(opt["param_groups"])}
    save_tensors(path, tensors, metadata=meta)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Return (model state, optimizer state dict, progress including its ``rng`` tensors)."""
    from safetensors import safe_open

    tensors = load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        progress = json.loads(meta["progress"])
        groups = json.loads(meta["param_groups"])
    except (KeyError, json.JSONDecodeError) as e:
        raise MinivisionError(f"{path}: not a minivision checkpoint ({e})") from None
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    progress["rng"] = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return model_state, {"state": opt_state, "param_groups": groups}, progress


# ---------------------------------------------------------------- the settings a run was trained with

def write_args(run_dir: Path, cfg: TrainConfig, comment: str | None = None) -> None:
    """``run_dir/args.yaml``: every resolved training setting, as ``minivision train`` used it; ``comment``
    (one line, e.g. which validation split was used) is written above them as a YAML comment."""
    import yaml

    head = f"# {' '.join(comment.split())}\n" if comment else ""
    write_text(run_dir / "args.yaml", head + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_args(run_dir: Path) -> TrainConfig:
    """The settings in ``run_dir/args.yaml`` (safe YAML; unknown keys refused); MinivisionError when the
    file is missing, not YAML, or not a mapping of known settings."""
    import yaml

    path = run_dir / "args.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MinivisionError(f"{run_dir} is not a run folder (no args.yaml)") from None
    except yaml.YAMLError as e:
        raise MinivisionError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MinivisionError(f"{path}: expected a mapping of settings")
    return TrainConfig.from_dict(data)
