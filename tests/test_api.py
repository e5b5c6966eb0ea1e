"""``Classifier`` follows scikit-learn's estimator conventions: explicit parameters stored as given,
get_params/set_params, ``sklearn.base.clone``, fitted attributes ending in ``_``, ``fit`` returns self."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.utils import estimator_checks

import minivision as mv
from minivision.config import TrainConfig
from minivision.errors import Note
from minivision.models import DEFAULT_MODEL

from .conftest import needs_fashion_mnist, synthetic_dataset, synthetic_images

FIT_ARGUMENTS = {"data", "data_dir", "test_data"}  # the data, given to fit; every other setting is a parameter
# but these: records that training writes (lr_found, distributed) and nproc (fit trains in this process; several
# processes are `minivision train --nproc N` or torchrun)
NOT_PARAMETERS = {"lr_found", "distributed", "nproc"}


def test_parameters_are_the_training_settings_with_their_defaults():
    params = mv.Classifier().get_params()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(params) == set(fields) - FIT_ARGUMENTS - NOT_PARAMETERS
    for name, value in params.items():
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert value == (None if default == {} else default), name
    assert set(inspect.signature(mv.Classifier.fit).parameters) >= FIT_ARGUMENTS | {"self"}
    kinds = {p.kind for p in inspect.signature(mv.Classifier.__init__).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds  # no **settings swallowing


def test_init_stores_parameters_as_given():
    extra = {"width": 2.0}
    clf = mv.Classifier("cnn1", 3, lr=-1.0, augment="nonsense", extra=extra)  # checked by fit, not here
    assert clf.get_params(deep=False) == clf.get_params(deep=True)  # no nested estimators
    got = clf.get_params()
    assert (got["model"], got["epochs"], got["lr"], got["augment"]) == ("cnn1", 3, -1.0, "nonsense")
    assert got["extra"] is extra


def test_set_params_sets_and_returns_self():
    clf = mv.Classifier(model="cnn1")
    assert clf.set_params(lr=0.01, epochs=4, model=None) is clf
    assert (clf.lr, clf.epochs, clf.model) == (0.01, 4, None)
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        clf.set_params(epohcs=3)
    with pytest.raises(mv.MinivisionError, match="no parameter 'data'"):
        clf.set_params(data="mnist")  # the data goes to fit
    assert clf.epochs == 4


def test_scikit_learn_checks_of_the_parameter_protocol():
    for check in (estimator_checks.check_no_attributes_set_in_init, estimator_checks.check_get_params_invariance,
                  estimator_checks.check_set_params, estimator_checks.check_parameters_default_constructible):
        check("Classifier", mv.Classifier(model="cnn1", epochs=2, extra={"width": 2.0}))


def test_clone_is_an_unfitted_copy_with_equal_params():
    clf = mv.Classifier(model="cnn1", epochs=2, lr=0.05, extra={"width": 2.0})
    copy = clone(clf)
    assert copy is not clf and type(copy) is mv.Classifier
    assert copy.get_params() == clf.get_params()
    assert copy.extra is not clf.extra  # deep-copied, as scikit-learn clones plain parameters


def test_repr_shows_changed_parameters():
    assert repr(mv.Classifier()) == "Classifier()"
    assert repr(mv.Classifier("cnn1", lr=0.05)) == "Classifier(lr=0.05, model='cnn1')"


def test_fit_returns_self_keeps_model_as_given_and_clones_unfitted(tmp_path):
    ds = synthetic_dataset(160, 40)
    clf = mv.Classifier(epochs=1, batch_size=64, out=str(tmp_path))
    assert clf.fit(ds, progress=False) is clf
    assert clf.model is None and clf.model_ == DEFAULT_MODEL  # the default chose the network
    assert clf.run_dir_.is_dir() and len(clf.history_) == 1 and clf.classes_ == ds.classes
    assert f"run_dir_='{clf.run_dir_}'" in repr(clf)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params()
    assert not [a for a in vars(copy) if a.endswith("_")]
    with pytest.raises(mv.MinivisionError, match="not fitted"):
        copy.predict(ds.test.x[:2])
    again = mv.load(clf.run_dir_)
    assert again.model == again.model_ == DEFAULT_MODEL


def test_bad_parameters_fail_at_fit_on_one_line(tmp_path):
    clf = mv.Classifier(model="cnn1", epochs=1, lr=-1.0, out=str(tmp_path))
    with pytest.raises(mv.MinivisionError, match="lr"):
        clf.fit(synthetic_dataset(40, 8), progress=False)
    assert not hasattr(clf, "model_")


def test_neither_import_minivision_nor_the_classifier_imports_sklearn():
    code = ("import sys, minivision as mv\n"
            "assert 'sklearn' not in sys.modules and 'torch' not in sys.modules\n"
            "mv.Classifier(model='cnn1').set_params(epochs=2).get_params()\n"
            "print('sklearn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- arrays as Keras tutorials give them

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A softmax model fitted on arrays as ``keras.datasets`` gives them: uint8 N x 28 x 28 and integer labels."""
    x, y = synthetic_images(200, classes=4)
    clf = mv.Classifier(model="softmax", epochs=2, augment="", out=str(tmp_path_factory.mktemp("api")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plain layout needs no note
        clf.fit(x[:160, 0], y[:160], progress=False)
    return clf, x[160:, 0], y[160:]


def _notes(fn):
    """(result, notes) of ``fn()``; any other warning (torch's, numpy's) fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    others = [w for w in caught if not issubclass(w.category, Note)]
    assert not others, [str(w.message) for w in others]
    return result, [str(w.message) for w in caught]


def test_fit_on_arrays_names_classes_by_label_and_scores_its_validation_split(fitted):
    clf, x, y = fitted
    assert clf.classes_ == ["0", "1", "2", "3"]
    scored = clf.evaluate()  # no test split: the validation split training held out, as in its history
    assert scored["split"] == "val" and 0 < scored["n"] < 160
    assert scored["accuracy"] == pytest.approx(max(r["val_accuracy"] for r in clf.history_))  # the best epoch


def test_a_loaded_run_fitted_on_arrays_asks_for_the_data_to_score(fitted, capsys):
    clf, x, y = fitted
    loaded = mv.load(clf.run_dir_)  # the arrays are not saved with the run: say so, and how to score it
    with pytest.raises(mv.MinivisionError, match=r"trained on pictures given as arrays.*--data DATA.*data=\(x, y\)"):
        loaded.evaluate()
    assert loaded.evaluate((x, y), tta="none")["accuracy"] == pytest.approx(clf.score(x, y))
    from minivision.cli import main

    assert main(["evaluate", str(clf.run_dir_)]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on pictures given as arrays" in err and "--data DATA" in err and len(err.splitlines()) == 1


def test_every_tutorial_layout_and_scale_gives_the_same_probabilities_with_a_note(fitted):
    clf, x, _ = fitted
    plain, notes = _notes(lambda: clf.predict_proba(x))
    assert notes == [] and plain.shape == (40, 4)
    read_only = x.copy()
    read_only.flags.writeable = False
    cases = {
        "N x 28 x 28 x 1": (x[..., None], "channels last"),
        "N x 1 x 28 x 28": (x[:, None], None),
        "float 0-1": (x / 255.0, "values 0-1, scaled to 0-255"),
        "float 0-255": (x.astype(np.float32), "float32 values 0-255"),
        "torch": (torch.from_numpy(x.copy()), None),
        "list of pictures": (list(x), None),
        "read-only": (read_only, None),
    }
    for name, (arr, said) in cases.items():
        got, notes = _notes(lambda arr=arr: clf.predict_proba(arr))
        np.testing.assert_allclose(got, plain, atol=1e-6, err_msg=name)
        assert (said is None and notes == []) or (len(notes) == 1 and said in notes[0]), (name, notes)
    one, notes = _notes(lambda: clf.predict(x[3]))
    assert one == [clf.classes_[plain[3].argmax()]] and notes == ["took the array as one 28 x 28 picture"]
    feats, _ = _notes(lambda: clf.features(x[3]))
    assert feats.shape[0] == 1


def test_score_on_arrays_is_top1_accuracy_by_index_or_name(fitted):
    clf, x, y = fitted
    pred = clf.predict_proba(x).argmax(1)
    assert clf.score(x, y) == pytest.approx((pred == y).mean())
    assert clf.score(x, [clf.classes_[i] for i in y]) == pytest.approx((pred == y).mean())
    wrong = (y + 1) % 4
    assert clf.score(x, wrong) == pytest.approx((pred == wrong).mean())  # a score that can be low
    with pytest.raises(mv.MinivisionError, match="not among the model's classes"):
        clf.score(x[:2], ["0", "cat"])
    with pytest.raises(mv.MinivisionError, match="labels y"):
        clf.score(x)


def test_evaluate_takes_pictures_and_labels_as_a_tuple_like_keras_validation_data(fitted):
    clf, x, y = fitted
    pred = clf.predict_proba(x).argmax(1)
    m, notes = _notes(lambda: clf.evaluate((x, y)))
    assert m["accuracy"] == pytest.approx((pred == y).mean()) and m["n"] == len(y) and m["split"] == "all"
    assert notes == [] and np.array_equal(clf.confusion_matrix((x, y)).sum(1), np.bincount(y, minlength=4))
    with pytest.raises(mv.MinivisionError, match="split='val' does not apply"):
        clf.evaluate((x, y), split="val")
    with pytest.raises(mv.MinivisionError, match=r"^evaluate takes a dataset name.*got int$"):
        clf.evaluate(5)


def test_score_parses_labels_as_fit_does(fitted):
    clf, x, y = fitted
    plain = clf.score(x, y)
    assert clf.score(x, y.astype(float)) == plain and clf.score(x, y.tolist()) == plain
    assert clf.score(x, torch.from_numpy(y)) == plain
    got, notes = _notes(lambda: clf.score(x, np.eye(4)[y]))  # Keras' to_categorical
    assert got == plain and notes == ["labels given one-hot (4 columns)"]
    with pytest.raises(mv.MinivisionError, match="whole numbers"):
        clf.score(x, y + 0.5)
    with pytest.raises(mv.MinivisionError, match="class indices 0-3 or class names; got 7"):
        clf.score(x, np.full(len(y), 7))


def test_an_array_of_no_pictures_is_refused_in_one_line(fitted):
    clf, _, _ = fitted
    for call in (clf.predict, clf.predict_proba, clf.features, lambda a: clf.score(a, [])):
        with pytest.raises(mv.MinivisionError, match=r"^no pictures: the array holds 0 pictures"):
            call(np.zeros((0, 28, 28), np.uint8))


def test_nested_lists_of_numbers_are_pictures(fitted, tmp_path):
    clf, x, y = fitted
    np.testing.assert_allclose(_notes(lambda: clf.predict_proba(x[:5].tolist()))[0], clf.predict_proba(x[:5]),
                               atol=1e-6)
    c2 = mv.Classifier(model="softmax", epochs=1, out=str(tmp_path))
    _notes(lambda: c2.fit(x.tolist(), y.tolist(), progress=False))
    assert c2.classes_ == ["0", "1", "2", "3"]
    with pytest.raises(mv.MinivisionError, match="different sizes"):
        clf.predict([[[0] * 28] * 28, [[0] * 28] * 27])


def test_evaluate_on_a_folder_gives_its_notes_as_warnings(fitted, tmp_path):
    clf, x, y = fitted
    for i, (img, k) in enumerate(zip(x, y, strict=True)):
        if k < 2:
            (tmp_path / str(k)).mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp_path / str(k) / f"{i}.png")
    m, notes = _notes(lambda: clf.evaluate(str(tmp_path)))
    assert m["notes"] and notes == m["notes"]
    assert any("2 of the model's 4 classes" in n for n in notes) and any("scoring all" in n for n in notes)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 32, 32), np.uint8), r"grey pictures of 28 x 28 .*shape \(2, 32, 32\)"),
    (np.zeros((2, 28, 28, 3), np.uint8), r"grey pictures of 28 x 28"),
    (np.full((2, 28, 28), -0.5), r"0-1 or 0-255; these run from -0.5 .*normalis"),
    (np.full((2, 28, 28), np.nan), r"NaN"),
    ([np.zeros((28, 28)), np.zeros((27, 28))], r"different sizes"),
    (None, r"got NoneType"),
    (5, r"got int"),
    (np.zeros((2, 28, 28), dtype=bool), r"must be numbers"),
])
def test_arrays_the_model_cannot_take_are_one_line_errors(fitted, bad, message):
    clf, _, _ = fitted
    with pytest.raises(mv.MinivisionError, match=message) as e:
        clf.predict(bad)
    assert "\n" not in str(e.value)


def test_fit_on_arrays_takes_channels_last_one_hot_and_names_and_says_so(tmp_path):
    x, y = synthetic_images(80, classes=2)
    clf = mv.Classifier(model="softmax", epochs=1, out=str(tmp_path))
    _, notes = _notes(lambda: clf.fit(x[:, 0, :, :, None] / 255.0, np.eye(2)[y], progress=False))
    assert len(notes) == 1 and "channels last" in notes[0] and "0-1" in notes[0] and "one-hot" in notes[0]
    assert clf.classes_ == ["0", "1"]
    clf2 = mv.Classifier(model="softmax", epochs=1, out=str(tmp_path)).fit(x[:, 0], np.array(["cat", "dog"])[y],
                                                                            progress=False)
    assert clf2.classes_ == ["cat", "dog"]


@pytest.mark.parametrize("call, message", [
    (lambda c, x, y: c.fit(x), r"give the labels y"),
    (lambda c, x, y: c.fit(x, y[:3]), r"expected 20 labels, one per picture; got labels of shape \(3,\)"),
    (lambda c, x, y: c.fit(x, y + 0.5), r"whole numbers"),
    (lambda c, x, y: c.fit(None), r"fit takes a dataset name.*got NoneType"),
    (lambda c, x, y: c.fit("fashion-mnist", y), r"labels go with pictures given as an array"),
    (lambda c, x, y: c.set_params(epochs="3").fit(x, y), r"^parameter epochs must be an integer, got '3'$"),
    (lambda c, x, y: c.set_params(budget="3x").fit(x, y),
     r"^parameter budget must be a duration like 30s, 3m or 1h30m, or a number of seconds, got '3x'$"),
])
def test_wrong_types_to_fit_are_one_line_errors_in_the_api_s_words(tmp_path, call, message):
    x, y = synthetic_images(20, classes=2)
    clf = mv.Classifier(model="softmax", epochs=1, out=str(tmp_path))
    with pytest.raises(mv.MinivisionError, match=message):
        call(clf, x[:, 0], y)
    assert not list(tmp_path.iterdir())  # refused before a run folder was made


def test_a_budget_is_given_as_train_takes_it(tmp_path):
    """``budget="4s"`` as ``--budget 4s``: the README's ``Classifier(budget="3m")``."""
    x, y = synthetic_images(60, classes=2)
    clf = mv.Classifier(budget="4s", out=str(tmp_path)).fit(x[:, 0], y, progress=False)
    meta = json.loads((clf.run_dir_ / "model.json").read_text())
    assert meta["budget"]["budget_s"] == 4.0 and clf.get_params()["budget"] == "4s"


def test_an_empty_picture_is_predicted_with_a_note(fitted, tmp_path):
    clf, x, _ = fitted
    pictures = np.concatenate([x[:2], np.full((1, 28, 28), 90, np.uint8)])
    labels, notes = _notes(lambda: clf.predict(pictures))
    assert len(labels) == 3 and notes == ["picture 2 is empty (one colour, or almost): its label is a guess"]
    Image.new("L", (200, 120), 240).save(tmp_path / "blank.png")
    Image.fromarray(np.kron(x[0], np.ones((4, 4), np.uint8))).save(tmp_path / "full.png")
    _, notes = _notes(lambda: clf.predict([str(tmp_path / "full.png"), str(tmp_path / "blank.png")]))
    assert notes == ["picture 1 is empty (one colour, or almost): its label is a guess"]


@needs_fashion_mnist
def test_real_fashion_mnist_as_keras_gives_it_scores_the_same_in_every_layout(tmp_path):
    ds = mv.load_dataset("fashion-mnist")
    x_train, y_train = ds.train.x[:3000, 0].numpy(), ds.train.y[:3000].numpy()
    x_test, y_test = ds.test.x[:1000, 0].numpy(), ds.test.y[:1000].numpy()
    clf = mv.Classifier(model="softmax", epochs=2, out=str(tmp_path))
    _notes(lambda: clf.fit(x_train / 255.0, y_train, progress=False))  # the tutorials' scaling
    plain, notes = _notes(lambda: clf.score(x_test, y_test))
    assert plain > 0.3 and notes == []  # well above chance (0.1): the layouts below must agree with it
    for arr in (x_test / 255.0, x_test[..., None], x_test.astype(np.float32)):
        assert _notes(lambda arr=arr: clf.score(arr, y_test))[0] == pytest.approx(plain)
    assert not _notes(lambda: clf.predict(x_test))[1]  # no picture of the test set is empty
