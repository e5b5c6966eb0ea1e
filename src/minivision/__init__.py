"""minivision: train, compare, explain, export and serve image classifiers for small images.

    import minivision as mv
    ds = mv.load_dataset("fashion-mnist")            # .train / .val / .test / .classes
    clf = mv.Classifier(model="cnn2", epochs=3).fit("fashion-mnist")
    clf.evaluate()["accuracy"]
    mv.load("runs/train").predict(["my-photo.jpg"])

The API names are imported on first use, so ``python -m minivision --help`` (and a ``--budget``
clock that starts in ``cli.main``) do not wait ~1.5 s for PyTorch to import.
"""

from typing import Any

from .errors import DataError, MinivisionError

__version__ = "0.1.0"

__all__ = ["Classifier", "load", "load_dataset", "MinivisionError", "DataError", "__version__"]

_LAZY = {"Classifier": "api", "load": "api", "load_dataset": "api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minivision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
