"""minivision: train, compare, explain, export and serve image classifiers for small images.

    import minivision as mv
    ds = mv.load_dataset("fashion-mnist")            # .train / .val / .test / .classes
    clf = mv.Classifier(model="cnn2", epochs=3).fit("fashion-mnist")
    clf.evaluate()["accuracy"]
    mv.load("runs/train").predict(["my-photo.jpg"])
"""

__version__ = "0.1.0"

from .api import Classifier, load  # noqa: E402, I001
from .api import load_dataset  # noqa: E402
from .errors import DataError, MinivisionError  # noqa: E402

__all__ = ["Classifier", "load", "load_dataset", "MinivisionError", "DataError", "__version__"]
