"""minivision: train, compare, explain, export and serve image classifiers for small images.

    import minivision as mv
    ds = mv.load_dataset("fashion-mnist")            # .train / .val / .test / .classes
    clf = mv.Classifier(model="cnn2", epochs=3).fit("fashion-mnist")
    clf.evaluate()["accuracy"]
    mv.load("runs/train").predict(["my-photo.jpg"])
    mv.plot_confusion(clf.confusion_matrix(), clf.classes_, ax=ax)   # any plot: optional Axes in

The API names are imported on first use, so ``python -m minivision --help`` (and a ``--budget``
clock that starts in ``cli.main``) do not wait ~1.5 s for PyTorch to import.
"""

from typing import Any

from .errors import DataError, MinivisionError

__version__ = "0.1.0"

_LAZY = {
    "Classifier": "api", "load": "api", "load_dataset": "api", "Listener": "listeners",
    # pictures: each takes an optional matplotlib Axes and returns the Figure
    "plot_history": "report.history", "plot_confusion": "report.plots", "plot_calibration": "report.plots",
    "plot_class_counts": "report.plots", "image_grid": "report.plots", "plot_embedding": "embed",
    "plot_comparison": "compare",
    # data for notebooks
    "metrics_from_logits": "metrics", "project": "embed", "compare_runs": "compare",
    "train_and_compare": "compare", "show_dataset": "show",
}

__all__ = [*_LAZY, "MinivisionError", "DataError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minivision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
