"""The Python API, in scikit-learn terms: ``Classifier(...).fit(data)``, ``predict``, ``evaluate``.

    import minivision as mv
    clf = mv.Classifier(model="cnn2", epochs=3).fit("fashion-mnist")
    clf.evaluate()["accuracy"]; clf.predict(["shoe.jpg"]); clf.save("my-model")
    clf = mv.load("runs/train")
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .data.dataset import Dataset
from .errors import MinivisionError
from .fileio import fsync_path
from .runfiles import LoadedModel, load_model


class Classifier:
    """An image classifier. Settings are those of ``minivision train`` (see ``TrainConfig``).

    Fitted attributes end in ``_``: ``run_dir_``, ``classes_``, ``history_``, ``test_metrics_``.
    """

    def __init__(self, model: str | None = None, epochs: int | None = None, **settings: Any) -> None:
        self.model = model
        self.epochs = epochs
        self.settings = settings

    # -- training

    def fit(self, data: str | Dataset = "fashion-mnist", *, progress: bool | None = None,
            **overrides: Any) -> Classifier:
        """Train on a dataset name, CSV file, image folder or a ``Dataset`` from ``load_dataset``."""
        from .train import fit

        settings = {**self.settings, **overrides}
        name = data.name if isinstance(data, Dataset) else str(data)
        cfg = TrainConfig.from_dict({"model": self.model, "epochs": self.epochs, "data": name, **settings})
        result = fit(cfg, dataset=data if isinstance(data, Dataset) else None, progress=progress,
                     log=lambda msg: None if progress is False else print(msg))
        if result.interrupted:
            raise MinivisionError(f"training interrupted; resume with minivision train --resume {result.run_dir}")
        self._set_loaded(load_model(result.run_dir))
        self._dataset_ = data if isinstance(data, Dataset) else None
        self.history_ = result.history
        self.test_metrics_ = result.test
        return self

    def _set_loaded(self, lm: LoadedModel) -> None:
        self.loaded_ = lm
        self.run_dir_ = lm.path
        self.classes_ = list(lm.classes)
        self.preprocess_ = lm.preprocess
        self.model = lm.name
        if not hasattr(self, "history_") and (lm.path / "results.csv").is_file():
            from .report.history import read_history

            self.history_ = read_history(lm.path / "results.csv")

    def _check_fitted(self) -> LoadedModel:
        if not hasattr(self, "loaded_"):
            raise MinivisionError("this Classifier is not fitted yet: call fit() or use minivision.load()")
        return self.loaded_

    # -- inference

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, K) for uint8 arrays (N, H, W) / (N, C, H, W), paths or PIL images."""
        from .predict import predict_images, proba_for_tensor

        lm = self._check_fitted()
        if isinstance(X, (np.ndarray, torch.Tensor)):
            return proba_for_tensor(lm, torch.as_tensor(X)).numpy()
        items = list(X) if isinstance(X, (list, tuple)) else [X]
        results = predict_images(lm, items, top_k=len(lm.classes))
        bad = [r for r in results if "error" in r]
        if bad:
            raise MinivisionError(f"{bad[0]['path']}: {bad[0]['error']}")
        out = np.zeros((len(results), len(lm.classes)), dtype=np.float32)
        for i, r in enumerate(results):
            for t in r["top_k"]:
                out[i, t["index"]] = t["score"]
        return out

    def predict(self, X: Any) -> list[str]:
        """Class names, one per image."""
        lm = self._check_fitted()
        return [lm.classes[i] for i in self.predict_proba(X).argmax(1)]

    def _dataset(self, data: str | Dataset | None, split: str) -> Dataset:
        from .evaluate import check_compatible, dataset_for

        lm = self._check_fitted()
        if isinstance(data, Dataset):
            check_compatible(lm, data)
            return data
        if data is None and getattr(self, "_dataset_", None) is not None:
            return self._dataset_
        return dataset_for(lm, data, split=split)

    def evaluate(self, data: str | Dataset | None = None, split: str = "test", tta: bool = False) -> dict[str, Any]:
        """accuracy, loss, n, per_class, confusion, classes (precision/recall/F1), most_confused, ece,
        calibration on a split (default: the training dataset's test); ``tta`` adds tta_accuracy/tta_loss."""
        from .evaluate import evaluate_split
        from .inference import split_for

        return evaluate_split(self._check_fitted(), split_for(self._dataset(data, split), split), tta=tta)

    def confusion_matrix(self, data: str | Dataset | None = None, split: str = "test") -> np.ndarray:
        """(K, K) counts, rows true class, columns predicted (``classes_`` order)."""
        return np.array(self.evaluate(data, split)["confusion"], dtype=np.int64)

    def report(self, data: str | Dataset | None = None, split: str = "test", tta: bool = False,
               log: Any = None) -> dict[str, Any]:
        """Write the run folder's report (as ``minivision evaluate --report``); returns metrics, tta_metrics,
        calibration and the paths of the files."""
        from .evaluate import split_logits
        from .inference import split_for
        from .report.run import report_for_model

        lm = self._check_fitted()
        ds = self._dataset(data, split)
        s = split_for(ds, split)
        tta_logits = split_logits(lm, s, tta=True) if tta else None
        return report_for_model(lm, ds, split, s, split_logits(lm, s), tta_logits,
                                log=log or (lambda m: None))

    def features(self, X: Any) -> np.ndarray:
        """Penultimate-layer features (N, D) of uint8 images (N, C, H, W) / (N, H, W)."""
        from .embed import penultimate_features

        x = torch.as_tensor(X)
        return penultimate_features(self._check_fitted(), x.unsqueeze(1) if x.ndim == 3 else x)

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

    def __repr__(self) -> str:
        fitted = f", run_dir_={str(self.run_dir_)!r}" if hasattr(self, "run_dir_") else ""
        return f"Classifier(model={self.model!r}, epochs={self.epochs!r}{fitted})"


def load(path: str | Path) -> Classifier:
    """A fitted ``Classifier`` from a run folder, model.json or model.safetensors."""
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
