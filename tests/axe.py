"""Accessibility checks with axe-core (installed from the npm registry by ``./install.sh --test`` into
``.tools/``), injected into a Playwright page. Without it the test fails where ``CI`` is set and skips
elsewhere.

    violations = axe_violations(page)   # serious and critical ones: [{"id", "impact", "help", "nodes"}]
    assert not violations, format_violations(violations)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
AXE_JS = ROOT / ".tools" / "node_modules" / "axe-core" / "axe.min.js"
MISSING = "no axe-core for the accessibility tests: ./install.sh --test installs it from the npm registry into .tools/"


def axe_source() -> str:
    """axe.min.js's text (``MINIVISION_AXE`` names another copy); skips, or fails under ``CI``, without it."""
    path = Path(os.environ.get("MINIVISION_AXE") or AXE_JS)
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path.read_text(encoding="utf-8")


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical"),
                   context: str | None = None) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now, of the given impacts (WCAG 2.x A and AA rules and
    axe's best practices). ``context``: a CSS selector to check only part of the page. The page's CSP
    must allow an inline script (open it in a context made with ``bypass_csp=True``)."""
    page.add_script_tag(content=axe_source())
    result = page.evaluate("""async (ctx) => {
      const r = await axe.run(ctx || document, {resultTypes: ['violations']});
      return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                     nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}));
    }""", context)
    return [v for v in result if v["impact"] in impacts]


def format_violations(violations: list[dict[str, Any]]) -> str:
    return "\n".join(f"{v['impact']}: {v['id']}: {v['help']} at {v['nodes']}" for v in violations)
