"""The seams the architecture promises (docs/ARCHITECTURE.md), checked in fresh interpreters: reading a
trained model never loads the trainer, and ``import minivision`` loads no PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_minivision_loads_no_torch():
    mods = _modules_after("import minivision, minivision.cli")
    assert "torch" not in mods and not any(m.startswith("torch.") for m in mods)
    assert "minivision.train" not in mods


@pytest.mark.parametrize("module", ["minivision.serve.app", "minivision.predict", "minivision.evaluate",
                                    "minivision.embed", "minivision.inference", "minivision.report.run"])
def test_readers_of_a_trained_model_do_not_import_the_trainer(module):
    mods = _modules_after(f"import {module}")
    assert module in mods  # the import itself happened
    assert "minivision.train" not in mods, f"{module} imports the trainer"
    assert "minivision.budget" not in mods, f"{module} imports the budget planner"


def test_the_import_check_can_fail():
    """The check above sees a trainer import when there is one."""
    assert "minivision.train" in _modules_after("import minivision.train")
