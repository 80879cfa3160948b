"""Rebuild the shipped fonts from Debian's Noto packages (a maintainer's step; needs fontTools):

    apt-get download fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji
    for d in fonts-noto-*.deb; do dpkg-deb -x "$d" x; done
    python assets/fonts/build_fonts.py x

Arabic, Hebrew, Devanagari and Thai: the whole Noto Sans font (layout tables kept, hinting
dropped). CJK: the Simplified Chinese face of NotoSansCJK-Regular.ttc cut to the characters of
GB2312, JIS X 0208 level 1, the KS X 1001 Hangul syllables, kana and CJK punctuation (10,790
characters). Emoji: Noto Color Emoji without the skin-tone and ZWJ sequences.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection, TTFont

OUT = Path(__file__).resolve().parent
WHOLE = ("NotoSansArabic", "NotoSansHebrew", "NotoSansDevanagari", "NotoSansThai")


def _double_byte(encoding: str, lead: range, trail: range) -> set[str]:
    out = set()
    for a in lead:
        for b in trail:
            try:
                out.add(bytes([a, b]).decode(encoding))
            except UnicodeDecodeError:
                pass
    return out


def cjk_characters() -> set[str]:
    chars = _double_byte("gb2312", range(0xB0, 0xF8), range(0xA1, 0xFF))
    chars |= _double_byte("euc_jp", range(0xB0, 0xD0), range(0xA1, 0xFF))  # JIS level 1 kanji
    chars |= _double_byte("euc_kr", range(0xB0, 0xC9), range(0xA1, 0xFF))  # Hangul syllables
    for lo, hi in ((0x3000, 0x3100), (0x3130, 0x3190), (0xFF00, 0xFFF0)):
        chars |= {chr(c) for c in range(lo, hi)}
    return {c for c in chars if len(c) == 1 and ord(c) > 0x2000}


def write_subset(font: TTFont, out: Path, text: str = "", unicodes=()) -> None:
    options = subset.Options()
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.name_languages = ["*"]
    options.notdef_outline = True
    options.hinting = False
    options.drop_tables += ["DSIG"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text, unicodes=list(unicodes))
    subsetter.subset(font)
    font.save(out)
    print(f"{out.name}: {out.stat().st_size:,} bytes")


def main(root: str) -> None:
    noto = Path(root) / "usr/share/fonts/truetype/noto"
    for name in WHOLE:
        font = TTFont(noto / f"{name}-Regular.ttf")
        write_subset(font, OUT / f"{name}-Regular.ttf", unicodes=font.getBestCmap())
    collection = TTCollection(Path(root) / "usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
    sc = next(f for f in collection.fonts if "CJK SC" in f["name"].getDebugName(1))
    text = "".join(sorted(cjk_characters()))
    write_subset(sc, OUT / "NotoSansCJKsc-Regular-subset.otf", text=text)
    emoji = TTFont(noto / "NotoColorEmoji.ttf")
    keep = [
        u
        for u in emoji.getBestCmap()
        if u > 0x7F and u not in range(0x1F3FB, 0x1F400) and u not in (0x200D, 0xFE0F)
    ]
    write_subset(emoji, OUT / "NotoColorEmoji-subset.ttf", unicodes=keep)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "x")
