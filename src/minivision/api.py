"""The Python API, in scikit-learn terms: ``Classifier(...).fit(data)``, ``predict``, ``evaluate``.

    import minivision as mv
    clf = mv.Classifier(model="cnn2", epochs=3).fit("fashion-mnist")
    clf.evaluate()["accuracy"]; clf.predict(["shoe.jpg"]); clf.save("my-model")
    clf.get_params(); clf.set_params(lr=0.01); sklearn.base.clone(clf)   # an unfitted copy
    clf = mv.load("runs/train")
"""

from __future__ import annotations

import difflib
import inspect
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import SETTINGS, TrainConfig, as_parameters, check_settings
from .data.dataset import Dataset
from .errors import MinivisionError
from .fileio import fsync_path
from .runfiles import LoadedModel, load_model
from .scores import tta_mode


class _InvalidParameter(MinivisionError, ValueError):
    """``set_params`` with an unknown name: a ValueError as scikit-learn raises, printed on one line."""


class Classifier:
    """An image classifier, with scikit-learn's estimator conventions.

    The parameters are the settings of ``minivision train`` (``TrainConfig``; ``None``: the model's
    recipe, then the global default), stored as given: no checks or logic until ``fit``.
    ``get_params``/``set_params`` and ``sklearn.base.clone`` work without importing scikit-learn here
    (``sklearn.base.BaseEstimator`` costs ~1.8 s of CPU to import after torch, for every user of the
    API). The data is ``fit``'s argument, with ``data_dir`` and ``test_data`` beside it. ``fit`` trains in
    this process: several processes are ``minivision train --nproc N`` (or torchrun), so ``nproc`` is not a
    parameter.

    ``extra`` holds the model builder's own options, as ``models.create_model`` takes them (mvnet: ``width``,
    ``depth``, ``stem``); an option set to None is the builder's default. An mvnet trained from scratch on
    colour pictures gets ``stem="whiten"`` unless ``extra`` names one (``models.mvnet.default_stem``). A
    pretrained backbone (``pretrained``) is built as it was trained, and ``extra`` does not apply to it (a
    note says so).

    ``tta`` is a training setting: the test-time augmentation the trained model answers with (written to
    model.json; ``auto``: flip for colour pictures trained with horizontal flips, else none). The ``tta`` of
    ``predict``, ``predict_proba``, ``predict_details``, ``evaluate`` and ``report`` overrides it for one call
    (None there: the model's own).

    Fitted attributes end in ``_``: ``model_`` (the network trained: the ``model`` asked for, or the one
    the budget or the default chose; ``model`` itself stays as given), ``run_dir_``, ``classes_``,
    ``preprocess_``, ``history_``, ``test_metrics_``, ``tta_`` (the test-time augmentation the fitted model
    answers with: "none", "flip" or "flip+shift"; ``set_params(tta=...)`` changes the next fit, not this
    one), ``loaded_`` (the ``LoadedModel``, whose ``.model`` is the torch module).
    """

    def __init__(self, model: str | None = None, epochs: int | None = None, *, init_from: str | None = None,
                 pretrained: str | None = None, freeze: bool = False, budget: float | str | None = None,
                 steps: int | None = None, batch_size: int | None = None, optimizer: str | None = None,
                 lr: float | None = None, momentum: float | None = None, nesterov: bool | None = None,
                 weight_decay: float | None = None, schedule: str | None = None,
                 label_smoothing: float | None = None, augment: str | None = None, tta: str = "auto",
                 normalize: str | None = None,
                 val_split: float | None = None, val_first: int | None = None, seed: int = 0,
                 device: str = "auto", precision: str = "auto", out: str = "runs", name: str = "train",
                 tensorboard: bool = False, imgsz: int | None = None, resize_mode: str = "letterbox",
                 class_weight: str = "none", sampler: str = "shuffle", patience: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.model = model
        self.epochs = epochs
        self.init_from = init_from
        self.pretrained = pretrained
        self.freeze = freeze
        self.budget = budget
        self.steps = steps
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.label_smoothing = label_smoothing
        self.augment = augment
        self.tta = tta
        self.normalize = normalize
        self.val_split = val_split
        self.val_first = val_first
        self.seed = seed
        self.device = device
        self.precision = precision
        self.out = out
        self.name = name
        self.tensorboard = tensorboard
        self.imgsz = imgsz
        self.resize_mode = resize_mode
        self.class_weight = class_weight
        self.sampler = sampler
        self.patience = patience
        self.extra = extra

    # -- parameters (scikit-learn's protocol)

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters as given to ``__init__`` (or ``set_params``); ``deep`` adds ``name__key`` entries
        for parameters that have ``get_params`` themselves, as scikit-learn does."""
        out: dict[str, Any] = {}
        for key in self._param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
            out[key] = value
        return out

    def set_params(self, **params: Any) -> Classifier:
        """Set parameters by name (``name__key`` reaches into a parameter that has ``set_params``);
        returns ``self``. An unknown name raises a ValueError (a MinivisionError) with a "did you mean"."""
        valid = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            head, sep, sub = key.partition("__")
            if head not in valid:
                hint = difflib.get_close_matches(head, valid, n=1)
                raise _InvalidParameter(f"Classifier has no parameter {head!r}"
                                        + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(valid)}"))
            if sep:
                nested.setdefault(head, {})[sub] = value
            else:
                setattr(self, head, value)
        for head, sub_params in nested.items():
            getattr(self, head).set_params(**sub_params)
        return self

    # -- training

    def fit(self, data: Any = "fashion-mnist", y: Any = None, *, data_dir: str | None = None,
            test_data: str | None = None, progress: bool | None = None,
            listeners: list[Any] | None = None) -> Classifier:
        """Train on a dataset name, CSV file, image folder, a ``Dataset`` from ``load_dataset``, or pictures and
        labels as arrays, ``fit(x_train, y_train)`` as in Keras; returns self.

        Arrays (``minivision.arrays``): pictures N x H x W, N x H x W x C or N x C x H x W, uint8 0-255 or
        float 0-1; labels ``y`` integers 0..K-1, class names or one-hot rows; a ``Note`` warning says what was
        assumed. ``data_dir``: the folder with a named dataset's files; ``test_data``: a second CSV file as the
        test split; ``listeners``: your own ``minivision.listeners.Listener`` objects (the training loop's
        events). Raises MinivisionError (one line) for data or settings it cannot take."""
        from .train import fit

        data = _training_data(data, y)
        settings = self.get_params(deep=False)
        if settings["extra"] is not None and not isinstance(settings["extra"], Mapping):
            raise MinivisionError(f"parameter extra must be a dict of the model builder's options (e.g. "
                                  f"{{'stem': 'conv'}}), got {type(settings['extra']).__name__} {settings['extra']!r}")
        # an option set to None is the builder's default, as a parameter left at None is
        settings["extra"] = {k: v for k, v in dict(settings["extra"] or {}).items() if v is not None}
        name = data.name if isinstance(data, Dataset) else str(data)
        # the settings' own rules, named as parameters ("parameter epochs must be an integer, got '3'")
        check_settings({k: v for k, v in settings.items() if v is not None and k in SETTINGS},
                       what="parameter", as_flags=False)
        cfg = TrainConfig.from_dict({**settings, "data": name, "data_dir": data_dir, "test_data": test_data})
        with as_parameters():  # errors name settings as parameters (pretrained=...), not flags
            result = fit(cfg, dataset=data if isinstance(data, Dataset) else None, progress=progress,
                         log=lambda msg: None if progress is False else print(msg), listeners=listeners)
        if result.interrupted:
            raise MinivisionError(f"training interrupted; resume with minivision train --resume {result.run_dir}")
        self._set_loaded(load_model(result.run_dir))
        self._dataset_ = data if isinstance(data, Dataset) else None
        if isinstance(data, Dataset) and data.name == "arrays" and data.val is None:
            from .data.split import make_val

            c = result.config  # the validation split training made (seeded): evaluate() scores it
            self._dataset_ = make_val(data, val_split=c.val_split, val_first=c.val_first, seed=c.seed)
        self.history_ = result.history
        self.test_metrics_ = result.test
        return self

    def _set_loaded(self, lm: LoadedModel) -> None:
        self.loaded_ = lm
        self.run_dir_ = lm.path
        self.classes_ = list(lm.classes)
        self.preprocess_ = lm.preprocess
        self.model_ = lm.name
        # the test-time augmentation its answers use: model.json's, as chosen at training (the parameter ``tta``
        # says how to choose it at the next fit, "auto" by default)
        self.tta_ = tta_mode(None, lm.meta)
        metrics = lm.meta.get("metrics") or {}
        self.test_metrics_ = {k: v for k, v in metrics.items() if k.startswith("test_")}
        if not hasattr(self, "history_") and (lm.path / "results.csv").is_file():
            from .report.history import read_history

            self.history_ = read_history(lm.path / "results.csv")

    def _check_fitted(self) -> LoadedModel:
        if not hasattr(self, "loaded_"):
            raise MinivisionError("this Classifier is not fitted yet: call fit() or use minivision.load()")
        return self.loaded_

    # -- inference

    def _images(self, X: Any) -> torch.Tensor:
        """uint8 (N, C, H, W) at the model's input from an array in any layout ``minivision.arrays`` takes;
        a ``Note`` says what was assumed and which pictures are empty."""
        from .arrays import images_from_array, note
        from .inference import blank_pictures

        lm = self._check_fitted()
        x, said = images_from_array(X, lm.preprocess.channels, tuple(lm.preprocess.size))
        if len(x) == 0:
            raise MinivisionError(f"no pictures: the array holds 0 pictures (shape {tuple(np.shape(X))})")
        if said:
            note(said)
        _note_empty([i for i, b in enumerate(blank_pictures(x).tolist()) if b])
        return x

    def predict_proba(self, X: Any, tta: bool | str | None = None) -> np.ndarray:
        """Class probabilities, float32 (N, K) in ``classes_`` order, for pictures: an array (N x H x W,
        N x H x W x C, N x C x H x W or one picture; uint8 0-255 or float 0-1: see ``minivision.arrays``),
        a path, a PIL image, or a list of paths or PIL images. Paths and PIL images go through the model's
        photo conversion, as ``minivision predict``; arrays are taken as the model's input. ``tta``: the
        test-time augmentation, None (default) the model's own (model.json's ``tta``), or "none", "flip",
        "flip+shift" (the mean of the views' probabilities). A ``Note`` warning says what was assumed and
        which pictures are empty. Raises MinivisionError (one line), also for an unknown ``tta``."""
        from .arrays import is_array
        from .predict import predict_images, proba_for_tensor

        lm = self._check_fitted()
        tta = tta_mode(tta, lm.meta)
        _note_tta(lm, tta)
        if is_array(X):
            return proba_for_tensor(lm, self._images(X), tta=tta).numpy()
        items = list(X) if isinstance(X, (list, tuple)) else [X]
        odd = [v for v in items if not isinstance(v, (str, Path, bytes)) and not hasattr(v, "convert")]
        if odd or not items:
            raise MinivisionError("predict takes pictures as an array (N x H x W, ...), file paths or PIL images; "
                                  f"got {type(odd[0]).__name__ if odd else 'an empty list'}")
        results = predict_images(lm, items, top_k=len(lm.classes), tta=tta)
        bad = [r for r in results if "error" in r]
        if bad:
            raise MinivisionError(f"{bad[0]['path']}: {bad[0]['error']}")
        _note_empty([i for i, r in enumerate(results) if r.get("empty")])
        out = np.zeros((len(results), len(lm.classes)), dtype=np.float32)
        for i, r in enumerate(results):
            for t in r["top_k"]:
                out[i, t["index"]] = t["score"]
        return out

    def predict_details(self, X: Any, top_k: int = 3, tta: bool | str | None = None) -> list[dict[str, Any]]:
        """One dict per picture (the pictures as ``predict_proba`` takes them), as ``minivision predict
        --json`` writes it: ``label``, ``index``, ``score`` (calibrated top-1 probability, 0-1), ``top_k``
        (``top_k`` dicts of label, index, score), ``unsure`` (bool) and ``reason`` (one sentence, or None when
        sure: an empty or noise picture, one unlike the training pictures, or a low top score; the rules
        are in ``minivision.trust``); ``path`` and ``note`` for paths and PIL images. ``tta`` as
        ``predict_proba`` (None: the model's own); with test-time augmentation the dict also holds ``plain``
        {label, index, score}, the answer of the picture alone. Raises MinivisionError (one line) for a
        picture that cannot be read, a ``top_k`` below 1 or an unknown ``tta``."""
        from .arrays import is_array
        from .predict import _top_k, predict_images

        lm = self._check_fitted()
        if top_k < 1:
            raise MinivisionError(f"top_k must be >= 1, got {top_k}")
        tta = tta_mode(tta, lm.meta)
        _note_tta(lm, tta)
        k = min(top_k, len(lm.classes))
        if is_array(X):
            return _top_k(lm, self._images(X), k, "auto", tta)
        items = list(X) if isinstance(X, (list, tuple)) else [X]
        if not items:
            raise MinivisionError("predict_details takes pictures as an array, file paths or PIL images; "
                                  "got an empty list")
        results = predict_images(lm, items, top_k=k, tta=tta)
        bad = [r for r in results if "error" in r]
        if bad:
            raise MinivisionError(f"{bad[0]['path']}: {bad[0]['error']}")
        return results

    def predict(self, X: Any, tta: bool | str | None = None) -> list[str]:
        """Class names, one per picture (the pictures and ``tta`` as ``predict_proba`` takes them: None, the
        model's own test-time augmentation)."""
        lm = self._check_fitted()
        return [lm.classes[i] for i in self.predict_proba(X, tta=tta).argmax(1)]

    def score(self, X: Any, y: Any = None, tta: bool | str | None = None) -> float:
        """Top-1 accuracy in [0, 1], scikit-learn's ``score``: of pictures ``X`` (as ``predict`` takes them)
        against labels ``y`` (indices into ``classes_`` or class names), or, without ``y``, of the data
        ``X`` names (a dataset, file or folder, as ``evaluate``). The answers scored are ``predict``'s: ``tta``
        as ``predict_proba``, None (default) the model's own test-time augmentation (``tta_``; the
        ``tta_accuracy`` of ``evaluate`` for a model that has one), "none" the picture alone.
        Raises MinivisionError (one line), also for an unknown ``tta``."""
        tta = tta_mode(tta, self._check_fitted().meta)  # checked before any data is read
        if y is None:
            if isinstance(X, (np.ndarray, torch.Tensor, list, tuple)):
                raise MinivisionError("score(X, y): give the labels y of the pictures X")
            m = self.evaluate(X, tta=tta)
            return float(m.get("tta_accuracy", m["accuracy"]))
        lm = self._check_fitted()
        pred = self.predict_proba(X, tta=tta).argmax(1)
        want = _label_indices(y, len(pred), lm.classes)
        return float((pred == want).mean())

    def _scoring(self, data: str | Dataset | None, split: str | None) -> Any:
        """``evaluate.ScoringData`` of ``data``: the training data (None, the ``Dataset`` given to ``fit``, or
        its name) as at training; any other data matched to ``classes_`` by name and scored whole when it
        has no split of its own."""
        from .evaluate import ScoringData, check_compatible, other_data, scoring_data
        from .inference import split_for

        lm = self._check_fitted()
        trained = getattr(self, "_dataset_", None)
        if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], (str, Path)):
            return self._scoring_arrays(*data, split)
        if data is not None and not isinstance(data, (str, Path, Dataset)):
            raise MinivisionError("evaluate takes a dataset name, a CSV file or image folder, a Dataset, or "
                                  f"pictures and labels as a tuple (x, y); got {type(data).__name__}")
        if isinstance(data, Dataset) and data is not trained:
            return other_data(lm, data, split)
        if data is None and trained is not None:
            data = trained
        if isinstance(data, Dataset):
            check_compatible(lm, data)
            split = split or ("test" if data.test is not None and len(data.test) else "val")  # as the docstring says
            return ScoringData(data, split, split_for(data, split), list(data.notes))
        return scoring_data(lm, data, split=split)

    def _scoring_arrays(self, X: Any, y: Any, split: str | None) -> Any:
        """``evaluate.ScoringData`` of pictures ``X`` and labels ``y`` given as arrays (Keras'
        ``validation_data=(x, y)``): every picture scored, labels parsed as ``score`` does."""
        from .data.dataset import Split
        from .evaluate import WHOLE, ScoringData

        if split not in (None, WHOLE, "test"):
            raise MinivisionError(f"split={split!r} does not apply to pictures given as (x, y): all of them are "
                                  "scored")
        lm = self._check_fitted()
        x = self._images(X)
        labels = torch.from_numpy(_label_indices(y, len(x), lm.classes))
        ds = Dataset("arrays", list(lm.classes), Split(x, labels), source="arrays given to evaluate")
        return ScoringData(ds, WHOLE, ds.train, [])

    def evaluate(self, data: str | Dataset | None = None, split: str | None = None,
                 tta: bool | str | None = None) -> dict[str, Any]:
        """accuracy, loss, n, per_class, confusion, classes (precision/recall/F1), most_confused, ece,
        calibration, split, notes: the figures of each picture alone. With test-time augmentation, also
        ``tta_accuracy``, ``tta_loss``, ``tta_change`` (with minus without, a fraction) and ``tta`` (the mode).
        ``tta``: None (default) the model's own (model.json's ``tta``, "none" when it has none); "none", "flip"
        (the picture and its mirror) or "flip+shift" (those and their one-pixel moves); True for "flip".

        ``data``: None (the training data), a dataset name, file or folder, a ``Dataset``, or pictures and labels
        as a tuple ``(x, y)`` (arrays as ``score`` takes them, all scored: ``split`` is ``all``). ``split``: None is
        the test split (the validation split for training data without one; for other data without a test
        split, every image: ``split`` is then ``all``). Data other than the training data is matched to
        ``classes_`` by name (order and case; a subset is scored on its classes, named in ``classes_scored``);
        ``notes`` says what was matched or assumed, each also given as a ``minivision.errors.Note`` warning.
        Raises MinivisionError (one line) for classes that do not match, with both lists, or an unknown ``tta``."""
        from .arrays import note
        from .evaluate import evaluate_split

        tta = tta_mode(tta, self._check_fitted().meta)  # checked before the data is read

        sd = self._scoring(data, split)
        for said in sd.notes:
            note(said)
        m = evaluate_split(self._check_fitted(), sd.split, tta=tta, match=sd.match)
        return {**m, "split": sd.split_name, "notes": list(sd.notes)}

    def confusion_matrix(self, data: str | Dataset | None = None, split: str | None = None) -> np.ndarray:
        """(K, K) counts, rows true class, columns predicted (``classes_`` order), of each picture alone (as
        ``evaluate``'s ``confusion``)."""
        return np.array(self.evaluate(data, split, tta="none")["confusion"], dtype=np.int64)

    def report(self, data: str | Dataset | None = None, split: str | None = None, tta: bool | str | None = None,
               log: Any = None) -> dict[str, Any]:
        """Write the run folder's report (as ``minivision evaluate --report``); returns metrics, tta_metrics
        (None without test-time augmentation), calibration and the paths of the files. ``tta`` as ``evaluate``
        (None: the model's own): with a mode other than "none" the report shows the accuracy with it, named.
        Raises MinivisionError (one line) as ``evaluate``."""
        from .evaluate import split_logits
        from .report.run import report_for_model

        lm = self._check_fitted()
        mode = tta_mode(tta, lm.meta)
        sd = self._scoring(data, split)
        tta_logits = split_logits(lm, sd.split, tta=mode) if mode != "none" else None
        return report_for_model(lm, sd.dataset, sd.split_name, sd.split, split_logits(lm, sd.split), tta_logits,
                                log=log or (lambda m: None), tta_mode=mode)

    def features(self, X: Any) -> np.ndarray:
        """Penultimate-layer features, float32 (N, D), of pictures as an array (the layouts and scales
        ``predict_proba`` takes)."""
        from .embed import penultimate_features

        return penultimate_features(self._check_fitted(), self._images(X))

    def embed(self, data: str | None = None, split: str = "test", method: str = "pca", n: int = 2000,
              projector: str | Path | None = None, **kw: Any) -> dict[str, Any]:
        """2-D projections of the features and raw pixels (and the scatter PNG); see ``minivision embed``."""
        from .embed import embed_run

        return embed_run(self._check_fitted().path, data=data, split=split, method=method, n=n, projector=projector,
                         log=kw.pop("log", lambda m: None), **kw)

    def save(self, path: str | Path) -> Path:
        """Copy the model (weights, model.json, history) to a new folder ``path``."""
        lm = self._check_fitted()
        dest = Path(path)
        if dest.exists():
            raise MinivisionError(f"{dest} already exists; choose a new folder")
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("model.safetensors", "model.json", "results.csv", "args.yaml"):
            if (lm.path / name).is_file():
                shutil.copy2(lm.path / name, tmp / name)
                fsync_path(tmp / name)
        tmp.rename(dest)
        fsync_path(dest.parent, directory=True)
        return dest

    def export(self, out: str | Path | None = None, format: str = "onnx", int8: bool = False, *,
               path: str | Path | None = None) -> dict[str, Any]:
        """Write the fitted model as ONNX (fp32, or int8 with ``int8=True``) or TorchScript (``format=
        "torchscript"``), checked against PyTorch on the run's test pictures; see ``minivision export``.

        ``out``: the file, as the command's ``--out`` (default ``RUN/export/model.onnx``, counting up; an
        existing file is refused); ``path`` is another name for it.
        Returns the sidecar's dict (description, ``parity`` figures, ``path``). The file takes uint8 pictures
        (N, C, H, W) as the model's picture conversion makes them and returns float32 ``logits`` (N, K) and
        ``features``. Raises MinivisionError as ``export.export_run`` says."""
        from .export import export_run

        if out is not None and path is not None and Path(out) != Path(path):
            raise MinivisionError("export: give the file as out= (path= is another name for it), not both")
        return export_run(self._check_fitted(), fmt=format, int8=int8, out=out if out is not None else path,
                          log=lambda m: None)

    def __repr__(self) -> str:
        """scikit-learn's style: the parameters that differ from their defaults (and where a fitted
        model lives)."""
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = [f"{k}={v!r}" for k, v in self.get_params(deep=False).items() if v != defaults[k]]
        if hasattr(self, "run_dir_"):
            shown.append(f"run_dir_={str(self.run_dir_)!r}")
        return f"Classifier({', '.join(shown)})"


def _note_tta(lm: LoadedModel, mode: str) -> None:
    """``evaluate.tta_notes`` for the view set an answer uses (a mirror asked of a model trained without flips,
    ...), each as a ``Note`` warning on the caller's line, as ``evaluate`` gives them."""
    if mode == "none":
        return
    from .arrays import note
    from .evaluate import tta_notes

    for said in tta_notes(lm.meta, run_dir=lm.path, mode=mode):
        note(said)


def _training_data(data: Any, y: Any) -> Any:
    """``fit``'s data: a name or path as given, a ``Dataset``, or a ``Dataset`` made of arrays and labels."""
    from .arrays import images_from_array, is_array, labels_from_array, note
    from .data.dataset import Split

    if is_array(data):
        if y is None:
            raise MinivisionError("fit(X, y): give the labels y of the pictures X")
        x, said = images_from_array(data)
        labels, classes, said_y = labels_from_array(y, len(x))
        if said or said_y:
            note("; ".join(s for s in (said, said_y) if s))
        return Dataset("arrays", classes, Split(x, labels), source="arrays given to fit")
    if y is not None:
        raise MinivisionError("fit(data, y): labels go with pictures given as an array; a dataset name, file or "
                              "folder has its own")
    if not isinstance(data, (str, Path, Dataset)):
        raise MinivisionError("fit takes a dataset name, a CSV file or image folder, a Dataset, or pictures and "
                              f"labels as arrays (fit(X, y)); got {type(data).__name__}")
    return data


def _label_indices(y: Any, n: int, classes: list[str]) -> np.ndarray:
    """``y`` as int64 indices into ``classes`` (N,): labels as ``fit`` takes them (``arrays.label_values``:
    integers, whole floats, one-hot rows, class names); names that differ from a class only in case,
    spacing or punctuation (``classmatch.name_key``) are matched with a note. Raises MinivisionError (one
    line) for an index out of range or a name that is not among ``classes``."""
    from .arrays import label_values, note
    from .classmatch import name_key

    a, said = label_values(y, n)
    if a.dtype == object:
        index = {c: i for i, c in enumerate(classes)}
        by_key: dict[str, list[int]] = {}
        for i, c in enumerate(classes):
            by_key.setdefault(name_key(c), []).append(i)
        loose = {v: by_key.get(name_key(v), []) for v in set(a.tolist()) - set(index)}
        unknown = sorted(v for v, hits in loose.items() if len(hits) != 1)
        if unknown:
            raise MinivisionError(f"labels {', '.join(map(repr, unknown[:5]))} are not among the model's classes "
                                  f"({', '.join(classes)})")
        index.update({v: hits[0] for v, hits in loose.items()})
        if loose:
            said = "; ".join(s for s in (said, "matched labels that differ from the class names in case, spacing "
                                         "or punctuation (" + ", ".join(f"{v} -> {classes[loose[v][0]]}"
                                                                        for v in sorted(loose)[:5]) + ")") if s)
        a = np.array([index[v] for v in a], dtype=np.int64)
    elif n and a.max() >= len(classes):
        raise MinivisionError(f"labels must be class indices 0-{len(classes) - 1} or class names; got {int(a.max())}")
    if said:
        note(said)
    return a


def _note_empty(empty: list[int]) -> None:
    """One ``Note`` naming the empty pictures (by position, from 0), as ``inference.blank_pictures`` finds them."""
    from .arrays import note

    if empty:
        which = ", ".join(str(i) for i in empty[:10]) + (", ..." if len(empty) > 10 else "")
        note(f"picture {which} is empty (one colour, or almost): its label is a guess" if len(empty) == 1 else
             f"pictures {which} are empty (one colour, or almost): their labels are guesses")


def load(path: str | Path) -> Classifier:
    """A fitted ``Classifier`` from a run folder, model.json or model.safetensors (``model`` and ``model_``:
    the network's name)."""
    lm = load_model(path)
    clf = Classifier(model=lm.name)
    clf._set_loaded(lm)
    return clf


def load_dataset(name_or_path: str = "fashion-mnist", data_dir: str | None = None, *,
                 test_data: str | None = None, val_split: float | None = 0.2, val_first: int | None = None,
                 seed: int = 0) -> Dataset:
    """A dataset with ``train``, ``val``, ``test`` splits and ``classes``, validation split as in training.

    ``val_split`` holds out a stratified, seeded fraction; ``val_first`` the first N images instead; a
    folder's own ``val/`` wins over both. Images are uint8 tensors (N, C, H, W), labels int64.
    """
    from .data import load_dataset as _load
    from .data.split import make_val

    ds = _load(name_or_path, data_dir=data_dir, test_data=test_data)
    return make_val(ds, val_split=None if val_first is not None else val_split, val_first=val_first, seed=seed)
