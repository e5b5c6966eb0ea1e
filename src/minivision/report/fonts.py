"""Fonts for class names in every script: matplotlib's per-glyph font fallback over Noto.

Class names come from users (folder names, the jobs API): ``T恤``, ``ズボン``, ``حقيبة``, ``Écharpe``.
Matplotlib's default font (DejaVu Sans) has no CJK glyphs, so such a name was drawn as empty boxes
with a "Glyph ... missing from font(s)" warning. Matplotlib >= 3.6 falls back glyph by glyph along
``rcParams["font.family"]`` when it is a list of families; ``use_fonts`` sets that list to DejaVu
Sans (the look of every picture so far) followed by the Noto families installed here (Debian's
``fonts-noto-core`` and ``fonts-noto-cjk``, which ``install.sh`` installs). Only installed families
are listed: matplotlib logs "findfont: Font family ... not found" for each missing one.

Where a name still has characters no installed font covers, ``font_note`` gives the one line to
print (the picture shows boxes for them); matplotlib's own missing-glyph warning never comes out
of minivision's drawing (``use_fonts``).

Every family in the list costs time at each text matplotlib draws (it looks each one up, and the
FreeType fallback chain opens each file), about 1 s of a run's report for fourteen families. So when a
picture is saved (``style.save_figure``, ``style.png_bytes``), ``fit_fonts`` narrows it to the
families its texts need: DejaVu Sans alone for Latin, Greek and Cyrillic names, plus the CJK face for
``T恤``. The full list stays in force for anything drawn through matplotlib's own ``savefig``.

Ours, not a library's, because it is product policy: which families, in what order, and the note.
Matplotlib (3.11 here) shapes the text itself: Arabic letters are joined and read right to left.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# DejaVu Sans first: matplotlib's default, so Latin text looks as before. Then Noto: Latin/Greek/
# Cyrillic extras, CJK (the JP face covers Chinese and Korean ideographs and kana/hangul too), the
# right-to-left scripts, and the large Indic/South-East Asian ones in fonts-noto-core.
FAMILIES = ("DejaVu Sans", "Noto Sans", "Noto Sans CJK JP", "Noto Sans Arabic", "Noto Sans Hebrew",
            "Noto Sans Devanagari", "Noto Sans Bengali", "Noto Sans Tamil", "Noto Sans Thai",
            "Noto Sans Armenian", "Noto Sans Georgian", "Noto Sans Ethiopic", "Noto Sans Symbols",
            "Noto Sans Symbols2")
INSTALL_HINT = "install Debian's fonts-noto-core and fonts-noto-cjk (./install.sh does)"


# where Debian's fonts-noto-core and fonts-noto-cjk put the files (read when matplotlib's font cache,
# written before they were installed, does not list them)
DEBIAN_NOTO_DIRS = ("/usr/share/fonts/truetype/noto", "/usr/share/fonts/opentype/noto")


def _find(family: str):
    from matplotlib import font_manager

    try:
        return font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    except ValueError:  # not installed, or not in matplotlib's font cache
        return None


def _file_names(family: str) -> tuple[str, ...]:
    if family == "Noto Sans CJK JP":
        return ("NotoSansCJK-Regular.ttc", "NotoSansCJKjp-Regular.otf")
    return (family.replace(" ", "") + "-Regular.ttf",)


@functools.lru_cache(maxsize=1)
def installed_fonts() -> tuple[tuple[str, object], ...]:
    """(family, font file) for each of ``FAMILIES`` installed here, in ``FAMILIES`` order.

    Matplotlib lists the system's fonts once, in a cache kept across versions' runs; fonts installed
    after that (``install.sh`` run after a first plot) are added from ``DEBIAN_NOTO_DIRS`` here."""
    from matplotlib import font_manager

    found = []
    for family in FAMILIES:
        path = _find(family)
        if path is None:
            for folder in DEBIAN_NOTO_DIRS:
                for name in _file_names(family):
                    candidate = Path(folder) / name
                    bold = candidate.with_name(name.replace("-Regular.", "-Bold."))
                    for face in (candidate, bold) if bold != candidate else (candidate,):
                        if face.is_file():  # the bold face too: bold labels (compare's best row) use it
                            try:
                                font_manager.fontManager.addfont(str(face))
                            except (OSError, RuntimeError, ValueError):
                                continue
            path = _find(family)
        if path is not None:
            found.append((family, path))
    return tuple(found)


def use_fonts() -> list[str]:
    """Set matplotlib's ``font.family`` to the installed fallback list, unless a user of the Python API
    set their own; returns the list in force (idempotent).

    Also keeps matplotlib's "Glyph ... missing from font(s)" warning out of minivision's own drawing
    (the filter matches warnings attributed to ``minivision`` modules only, so a user's own plots
    keep theirs; it is put back in front at every call, as ``warnings.filterwarnings`` does): where
    no installed font draws a class name, ``font_note`` gives the one line the caller prints."""
    import warnings

    import matplotlib

    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning,
                            module=r"minivision\.")
    _quiet_weight_fallback()
    families = [family for family, _ in installed_fonts()] or ["sans-serif"]
    current = list(matplotlib.rcParams["font.family"])
    if current != families and current in (["sans-serif"], list(_SET)):  # matplotlib's default or ours:
        matplotlib.rcParams["font.family"] = families                  # a user's own choice is kept
        _SET[:] = families
    return list(matplotlib.rcParams["font.family"])


_SET: list[str] = []  # the list use_fonts last set


def _drop_weight_fallback(record: Any) -> bool:
    return not str(record.msg).startswith("findfont: Failed to find font weight")


def _quiet_weight_fallback() -> None:
    """Matplotlib logs "findfont: Failed to find font weight bold for Noto Sans ..., now using 400" (a
    WARNING of its ``matplotlib.font_manager`` logger) for every family of the fallback list that has no
    bold face (Noto Sans Symbols2 has none), each time a bold label is drawn; the regular face is drawn
    instead, which is all the message says. That one message is dropped (idempotent); the logger's others stay."""
    import logging

    log = logging.getLogger("matplotlib.font_manager")
    if _drop_weight_fallback not in log.filters:
        log.addFilter(_drop_weight_fallback)


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    """The code points the font file at ``path`` has glyphs for (empty if it cannot be read)."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(str(path)).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _drawn(text: str) -> set[int]:
    return {ord(ch) for ch in str(text) if ch.isprintable() and not ch.isspace()}


def families_for(texts: Iterable[str]) -> tuple[list[str], set[int]]:
    """``(families, left)``: the installed families, in ``FAMILIES`` order, that draw ``texts`` (the
    first family always, then each one that covers a character the ones before it lack), and the code
    points none of them covers. Fonts past the first are opened only for characters it lacks."""
    fonts = installed_fonts()
    left = set().union(*(_drawn(t) for t in texts))
    if not fonts:
        return [], left
    chosen = [fonts[0][0]]
    left -= _charmap(fonts[0][1])
    for family, path in fonts[1:]:
        if not left:
            break
        covered = left & _charmap(path)
        if covered:
            chosen.append(family)
            left -= covered
    return chosen, left


def uncovered(texts: Iterable[str]) -> str:
    """The characters of ``texts`` no installed font has a glyph for (spaces and controls aside), in
    order of first appearance."""
    texts = [str(t) for t in texts]
    _, left = families_for(texts)
    seen: dict[str, None] = {}
    for text in texts:
        for ch in text:
            if ord(ch) in left:
                seen.setdefault(ch)
    return "".join(seen)


def fit_fonts(fig: Any) -> Any:
    """A context manager for saving ``fig``: its texts that use ``use_fonts``' list, and the tick labels
    matplotlib makes while drawing, get only the families the figure's texts need (``families_for``).
    A family a user set on a text, or in ``rcParams``, is kept."""
    import contextlib

    import matplotlib
    from matplotlib.text import Text

    full = list(_SET)
    if not full or list(matplotlib.rcParams["font.family"]) != full:
        return contextlib.nullcontext()
    texts = [t for t in fig.findobj(Text) if list(t.get_fontfamily()) == full]
    for ax in fig.axes:  # tick labels made so far; those made during the draw follow rcParams below
        for axis in (ax.xaxis, ax.yaxis):
            texts += [t for t in axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)
                      if list(t.get_fontfamily()) == full]
    families, _ = families_for(t.get_text() for t in texts)
    families = families or full
    for t in texts:
        t.set_fontfamily(families)
    return matplotlib.rc_context({"font.family": families})


def isolate(name: str) -> str:
    """``name`` (a class name, a file name) ready to sit inside a line of other text in a picture: wrapped in
    Unicode's first-strong isolate (U+2068 ... U+2069) when it has right-to-left letters (Arabic, Hebrew, ...),
    as is. Without it, the Unicode bidirectional algorithm (UAX #9, which matplotlib's text layout follows)
    lets an Arabic name take the line's direction, and "حقيبة 100.0%" is drawn with the percent sign before
    the number. Other names are returned unchanged (the isolate characters are invisible either way)."""
    import unicodedata

    if any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in name):
        return f"\u2068{name}\u2069"
    return name


def font_note(texts: Iterable[str]) -> str | None:
    """One line for the user when some characters of ``texts`` (class names) cannot be drawn in the
    pictures, else None."""
    missing = uncovered(texts)
    if not missing:
        return None
    shown = " ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
    return f"note: no installed font draws {shown} in the pictures (shown as boxes); {INSTALL_HINT}"


def text_fonts(size: float, text: str = ""):
    """A FreeType font with the fallback chain that draws ``text`` (``families_for``), sized ``size``
    points at 72 dpi, for measuring text as the Agg renderer draws it
    (``matplotlib.font_manager.get_font`` with a list of files)."""
    from matplotlib.font_manager import FontProperties, findfont, get_font

    use_fonts()  # the warning filter, before set_text can warn about a missing glyph
    families, _ = families_for([text])
    where = dict(installed_fonts())
    paths = [where[f] for f in families] or [findfont(FontProperties())]
    font = get_font(paths)
    font.set_size(size, 72)
    return font
