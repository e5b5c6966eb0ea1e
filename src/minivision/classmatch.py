"""Which of a model's classes a dataset's labels mean: classes are matched by name, not by position.

A model stores its class names in the order it was trained with (a folder's sorted folder names, a
CSV's labels, the order pictures were uploaded to the training-jobs API). Data scored by it later
(``evaluate --data``, ``Classifier.evaluate/score``) may list the same classes in another order, spell
them in another case or hold only some of them; matching by position would then score the wrong
classes without a word. One rule, used by every path that scores data other than the training data:

* the same names score the same, whatever their order;
* names that differ only in case, Unicode form or separators are matched, with a note: runs of
  spaces, ``_``, ``-``, ``/`` and other punctuation count as one separator, so a folder
  ``T-shirt_top`` (a folder name cannot hold ``/``) is Fashion-MNIST's ``T-shirt/top`` and
  ``ankle_boot`` is ``Ankle boot``; two data names that would become one model class are refused;
* data holding a subset of the model's classes is scored on those classes (its labels become the
  model's indices) and the metrics name the classes present, with a note;
* data without class names (labels that are numbers, from a CSV or IDX file) keeps positional
  meaning: label ``k`` is the model's class ``k``, unless the model's own classes are those numbers;
* anything else is refused with one line that shows both lists.

This is our own code because it is the product's rule, not image processing: there is no library
for it (scikit-learn's ``LabelEncoder`` maps labels to indices but knows nothing of a second list).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass

import numpy as np

from .data.dataset import Dataset, Split, as_array
from .errors import MinivisionError

_SHOWN = 12  # names shown per list in an error or a note before "... (N more)"


@dataclass(frozen=True)
class ClassMatch:
    """How a dataset's classes map onto a model's.

    ``index[i]`` is the model's class index of the data's class ``i``; ``notes`` are one-line remarks for
    the user (empty when the names are identical); ``present`` the model's class indices the data holds,
    sorted (all of them unless the data holds a subset)."""

    index: tuple[int, ...]
    notes: tuple[str, ...]
    present: tuple[int, ...]
    num_model_classes: int

    @property
    def is_identity(self) -> bool:
        return self.index == tuple(range(self.num_model_classes))

    @property
    def is_subset(self) -> bool:
        return len(self.present) < self.num_model_classes


def name_key(name: str) -> str:
    """The form in which two class names are compared: Unicode NFKC, case-folded, every run of
    characters that are not letters, digits or combining marks (spaces, ``_ - / . , : ( ) & +``: Unicode
    categories Z*, P*, S*, C*) replaced by one space, and trimmed. ``"T-shirt/top"``, ``"t-shirt_top"`` and
    ``"T shirt top"`` share the key ``"t shirt top"``. A name made only of separators keeps its own
    NFKC case-folded form so that it is never equal to the empty key of another."""
    norm = unicodedata.normalize("NFKC", str(name)).casefold()
    key = " ".join("".join(ch if _is_word_char(ch) else " " for ch in norm).split())
    return key or norm.strip()


def _is_word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LNM"  # letters, numbers, combining marks


_key = name_key


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def is_numbered(classes: list[str]) -> bool:
    """True when every class name is a whole number (``0``, ``7``, ``012``): labels from a CSV or IDX
    file, or folders named by number, which carry no names to match."""
    return bool(classes) and all(c.isdecimal() and c.isascii() for c in classes)


def match_classes(model_classes: list[str], data_classes: list[str], *, data_name: str = "the data") -> ClassMatch:
    """Match ``data_classes`` (a dataset's class names, in its label order) to ``model_classes``.

    Returns a ``ClassMatch`` whose ``index`` maps each data label to the model's class index.
    Raises MinivisionError (one line, both lists shown) when a data class has no counterpart in the
    model, or two data classes would become one model class. ``data_name`` names the data in messages."""
    model_classes, data_classes = [str(c) for c in model_classes], [str(c) for c in data_classes]
    k = len(model_classes)
    exact = {c: i for i, c in enumerate(model_classes)}
    keys: dict[str, list[int]] = {}
    for i, c in enumerate(model_classes):
        keys.setdefault(_key(c), []).append(i)
    notes: list[str] = []
    if all(c in exact for c in data_classes):
        index = [exact[c] for c in data_classes]
    elif is_numbered(data_classes) and not is_numbered(model_classes) \
            and all(int(c) < k for c in data_classes):
        index = [int(c) for c in data_classes]
        notes.append(f"{data_name} has numbered classes, taken as the model's class indices "
                     f"({', '.join(f'{c} = {model_classes[int(c)]}' for c in data_classes[:3])}"
                     f"{', ...' if len(data_classes) > 3 else ''})")
    else:
        index, unmatched, by_case = [], [], []
        for c in data_classes:
            hits = [exact[c]] if c in exact else keys.get(_key(c), [])
            if len(hits) != 1:
                unmatched.append(c)
                continue
            index.append(hits[0])
            if model_classes[hits[0]] != c:
                by_case.append(f"{c} -> {model_classes[hits[0]]}")
        if unmatched:
            raise MinivisionError(
                f"{data_name}: class{'es' if len(unmatched) > 1 else ''} {_listing(unmatched)} "
                f"{'are' if len(unmatched) > 1 else 'is'} not among the model's classes "
                f"(the model's: {_listing(model_classes)}; the data's: {_listing(data_classes)})")
        if by_case:
            notes.append(f"{data_name}: matched class names that differ in case, spacing or punctuation "
                         f"({_listing(by_case)})")
    if len(set(index)) != len(index):
        twice = sorted({model_classes[i] for i in index if index.count(i) > 1})
        raise MinivisionError(f"{data_name}: two classes would both be the model's {twice[0]!r} "
                              f"(the model's: {_listing(model_classes)}; the data's: {_listing(data_classes)})")
    present = tuple(sorted(set(index)))
    if len(present) < k:
        notes.append(f"{data_name} holds {len(present)} of the model's {k} classes; scored on those "
                     f"({_listing([model_classes[i] for i in present])}), per-class figures for them only")
    elif index != sorted(index) and not notes:
        notes.append(f"{data_name} lists the model's classes in another order; matched by name")
    return ClassMatch(tuple(index), tuple(notes), present, k)


def align_dataset(ds: Dataset, model_classes: list[str], *, data_name: str | None = None) -> tuple[Dataset, ClassMatch]:
    """``ds`` with its labels rewritten as the model's class indices and ``classes = model_classes``.

    Every split is remapped (images untouched). Raises MinivisionError as ``match_classes`` does."""
    match = match_classes(model_classes, ds.classes, data_name=data_name or ds.name)
    if match.is_identity:
        return ds, match
    remap = np.array(match.index, dtype=np.int64)

    def moved(split: Split | None) -> Split | None:
        return None if split is None else Split(split.x, as_array(remap[np.asarray(split.y)]))

    return dataclasses.replace(ds, classes=list(model_classes), train=moved(ds.train), val=moved(ds.val),
                               test=moved(ds.test)), match
