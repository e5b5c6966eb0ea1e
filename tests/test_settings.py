"""One settings schema: every training setting's rules come from config.SETTINGS, and every caller (the
train flags, validate, a model's recipe, compare, --resume) applies the same ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minivision.cli import build_parser, main
from minivision.config import SETTINGS, TrainConfig, check_recipe, resolve, resume_changes, validate
from minivision.errors import MinivisionError


def _train_flags() -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["train"]._actions}


def test_every_flagged_setting_is_a_train_flag_and_nothing_else_is():
    flags = _train_flags()
    for name, s in SETTINGS.items():
        assert (name in flags) == s.flag, name
    assert set(flags) - set(SETTINGS) == {"help", "resume", "json"}


@pytest.mark.parametrize("name, bad, good", [
    ("val_split", 0.0, 0.5), ("val_split", 1.0, 0.99), ("val_first", 0, 1), ("momentum", 1.0, 0.0),
    ("label_smoothing", 1.0, 0.1), ("lr", 0.0, 1e-4), ("batch_size", 0, 1), ("weight_decay", -1e-4, 0.0),
])
def test_a_bound_is_the_same_for_the_cli_validate_and_recipes(name, bad, good, capsys):
    """One rule, three callers: the flag, validate() of a config, and a model's registered recipe."""
    flag = SETTINGS[name].option
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", flag, str(bad)])
    assert flag in capsys.readouterr().err
    build_parser().parse_args(["train", flag, str(good)])
    with pytest.raises(MinivisionError, match=f"{flag} must be"):
        validate(TrainConfig(epochs=1, **{k: v for k, v in _resolved().items() if k != name}, **{name: bad}))
    with pytest.raises(MinivisionError, match=f"training setting {name} must be"):
        check_recipe({name: bad})
    check_recipe({name: good})


def _resolved() -> dict:
    cfg = resolve(TrainConfig(model="mlp", epochs=1), {})
    return {k: v for k, v in cfg.to_dict().items() if k in SETTINGS and SETTINGS[k].recipe and k != "epochs"
            and k not in ("steps", "val_first")}


def test_choices_have_a_did_you_mean():
    with pytest.raises(MinivisionError, match="did you mean 'adam'"):
        check_recipe({"optimizer": "adma"})
    with pytest.raises(MinivisionError, match="did you mean 'batch_size'"):
        check_recipe({"batchsize": 8})


def test_alternatives_are_refused_together_and_an_explicit_one_beats_the_recipe():
    with pytest.raises(MinivisionError, match="--val-split or --val-first, not both"):
        check_recipe({"val_split": 0.1, "val_first": 10})
    cfg = resolve(TrainConfig(model="mlp", val_split=0.3), {"val_first": 5000, "epochs": 3})
    assert (cfg.val_split, cfg.val_first) == (0.3, None)
    cfg = resolve(TrainConfig(model="softmax", epochs=2), {"steps": 1000})
    assert (cfg.epochs, cfg.steps) == (2, None)
    cfg = resolve(TrainConfig(model="softmax"), {"steps": 1000})
    assert (cfg.epochs, cfg.steps) == (None, 1000)


def test_resume_refuses_what_it_cannot_honour():
    assert resume_changes({"device": "cpu", "epochs": 5}) == {"device": "cpu", "epochs": 5}
    with pytest.raises(MinivisionError, match="--lr cannot change"):
        resume_changes({"lr": 0.1})
    for name, s in SETTINGS.items():
        if not s.resume and s.flag:
            with pytest.raises(MinivisionError, match=s.option):
                resume_changes({name: 1})


def test_resume_with_a_refused_flag_is_one_line_and_its_own_value_is_accepted(tmp_path, capsys):
    from minivision.train import fit

    from .conftest import synthetic_dataset

    run = fit(TrainConfig(model="cnn1", epochs=1, batch_size=32, out=str(tmp_path)), dataset=synthetic_dataset(120, 40),
              progress=False, log=lambda m: None).run_dir
    assert main(["train", "--resume", str(run), "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume trains with the run's own settings: --seed") and err.count("\n") == 1
    # the run's own values (seed 0, its out folder) change nothing: the finished run asks for --epochs
    assert main(["train", "--resume", str(run), "--seed", "0", "--out", str(tmp_path)]) == 2
    assert "already finished 1 epoch(s); extend it with" in capsys.readouterr().err


def test_momentum_and_nesterov_belong_to_sgd():
    with pytest.raises(MinivisionError, match="--momentum applies to --optimizer sgd or muon only"):
        resolve(TrainConfig(model="cnn1", optimizer="adam", momentum=0.5), {})
    with pytest.raises(MinivisionError, match="--nesterov applies to --optimizer sgd or muon only"):
        resolve(TrainConfig(model="cnn1", nesterov=True), {"optimizer": "adam"})
    resolve(TrainConfig(model="mvnet-t", optimizer="adam"), {"optimizer": "sgd", "momentum": 0.9, "nesterov": True})


def test_help_states_the_bounds():
    out = subprocess.run([sys.executable, "-m", "minivision", "train", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "SGD momentum (in [0, 1))" in " ".join(out.split())
