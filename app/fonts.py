"""Fonts shipped with the app, so that names in other scripts render offline.

Flutter draws every glyph itself; for characters its default font lacks it fetches Noto fonts
from the network, which fails offline (boxes instead of the name). pocketrec ships Noto fonts for
Arabic, Hebrew, Devanagari, Thai, CJK (a subset of common characters) and emoji in
`assets/fonts/` (OFL-1.1 / Apache-2.0, see the copyright files there; built by
`assets/fonts/build_fonts.py`, 8.5 MB in all) and names them as the fallback of every text
style of the theme -- each one only once text in its script is shown (`FontLoader.need`): a
page that registers all of them downloads 8.5 MB at start, and while they arrive the text is
laid out again (the News browser test then saw one tap open two items). The web client gets
them from the app's own server (`app.web_offline` copies them into its assets folder), the
desktop client from `assets/`.
"""

from __future__ import annotations

from pathlib import Path

import flet as ft

FONT_DIR = Path(__file__).resolve().parents[1] / "assets" / "fonts"
ASSET_PREFIX = "fonts"  # the fonts' folder inside the client's assets folder
# family -> file in FONT_DIR, in fallback order
FONTS = {
    "Noto Sans Arabic": "NotoSansArabic-Regular.ttf",
    "Noto Sans Hebrew": "NotoSansHebrew-Regular.ttf",
    "Noto Sans Devanagari": "NotoSansDevanagari-Regular.ttf",
    "Noto Sans Thai": "NotoSansThai-Regular.ttf",
    "Noto Sans CJK": "NotoSansCJKsc-Regular-subset.otf",
    "Noto Color Emoji": "NotoColorEmoji-subset.ttf",
}
TEXT_STYLES = tuple(
    f"{group}_{size}"
    for group in ("display", "headline", "title", "body", "label")
    for size in ("large", "medium", "small")
)

# family -> the code point ranges it is needed for
SCRIPTS = {
    "Noto Sans Arabic": ((0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "Noto Sans Hebrew": ((0x0590, 0x05FF), (0xFB1D, 0xFB4F)),
    "Noto Sans Devanagari": ((0x0900, 0x097F), (0xA8E0, 0xA8FF)),
    "Noto Sans Thai": ((0x0E00, 0x0E7F),),
    "Noto Sans CJK": (
        (0x1100, 0x11FF), (0x2E80, 0x2FDF), (0x3000, 0x30FF), (0x3130, 0x318F),
        (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
        (0xFF00, 0xFFEF),
    ),
    "Noto Color Emoji": ((0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F000, 0x1FAFF)),
}  # fmt: skip

__all__ = [
    "ASSET_PREFIX",
    "FONTS",
    "FONT_DIR",
    "SCRIPTS",
    "FontLoader",
    "apply_fonts",
    "fallback_theme",
    "families_for",
    "font_files",
]


def families_for(text: str) -> set[str]:
    """The shipped families that `text` needs (none for Latin, Greek, Cyrillic)."""
    out: set[str] = set()
    for ch in {c for c in str(text) if ord(c) >= 0x0590}:
        cp = ord(ch)
        for family, ranges in SCRIPTS.items():
            if family not in out and any(lo <= cp <= hi for lo, hi in ranges):
                out.add(family)
    return out


def font_files() -> list[Path]:
    """The shipped font files that are present (a trimmed install may have none)."""
    return [FONT_DIR / name for name in FONTS.values() if (FONT_DIR / name).is_file()]


def _available() -> dict[str, str]:
    return {family: name for family, name in FONTS.items() if (FONT_DIR / name).is_file()}


def fallback_theme(theme: ft.Theme, families: list[str] | None = None) -> ft.Theme:
    """`theme` with the shipped families (or `families` of them) as the fallback of every text
    style."""
    fallback = [f for f in _available() if families is None or f in families]
    if fallback:
        theme.text_theme = ft.TextTheme(
            **{name: ft.TextStyle(font_family_fallback=fallback) for name in TEXT_STYLES}
        )
    return theme


def apply_fonts(page: ft.Page, families: list[str] | None = None) -> None:
    """Register the shipped fonts (all, or `families`) with the page (served as
    `fonts/<file>` from the client's assets folder) and make them the fallback of the page's
    theme."""
    available = {f: n for f, n in _available().items() if families is None or f in families}
    if not available:
        return
    page.fonts = {family: f"{ASSET_PREFIX}/{name}" for family, name in available.items()}
    page.theme = fallback_theme(page.theme or ft.Theme(), list(available))


class FontLoader:
    """One page's fonts, registered as text that needs them is about to be shown."""

    def __init__(self, page: ft.Page):
        self.page = page
        self.loaded: list[str] = []

    def need(self, *texts: str) -> bool:
        """Register the families these texts need; True when the page must be updated."""
        wanted = set().union(*(families_for(t) for t in texts if t)) if texts else set()
        new = [f for f in FONTS if f in wanted and f not in self.loaded and f in _available()]
        if not new:
            return False
        self.loaded += new
        apply_fonts(self.page, [f for f in FONTS if f in self.loaded])
        return True
