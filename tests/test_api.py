"""``Classifier`` follows scikit-learn's estimator conventions: explicit parameters stored as given,
get_params/set_params, ``sklearn.base.clone``, fitted attributes ending in ``_``, ``fit`` returns self."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
from sklearn.base import clone
from sklearn.utils import estimator_checks

import minivision as mv
from minivision.config import TrainConfig
from minivision.models import DEFAULT_MODEL

from .conftest import synthetic_dataset

FIT_ARGUMENTS = {"data", "data_dir", "test_data"}  # the data, given to fit; every other setting is a parameter


def test_parameters_are_the_training_settings_with_their_defaults():
    params = mv.Classifier().get_params()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(params) == set(fields) - FIT_ARGUMENTS
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
