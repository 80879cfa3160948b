"""Type-ahead over codes and their titles (diagnoses, procedures) or drug classes and their
names: `CodeIndex.search` gives the options the visit screen lists as the clinician types."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CodeIndex", "CodeOption"]

_WORD = re.compile(r"[0-9a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


@dataclass(frozen=True)
class CodeOption:
    """One type-ahead option: a code and its title (a diagnosis, procedure or drug class)."""

    code: str
    title: str

    @property
    def label(self) -> str:
        return (
            f"{self.code} — {self.title}" if self.title and self.title != self.code else self.code
        )


@dataclass(frozen=True)
class _Entry:
    code: str
    title: str
    order: int
    code_key: str  # "icd9cm:4019"
    bare_key: str  # "4019"
    title_key: str  # "unspecified essential hypertension"
    title_words: tuple[str, ...]


class CodeIndex:
    """Type-ahead over (code, title) pairs, given in the order used to break ties (the vocabulary
    order, which is by frequency in the training data).

    A query matches a code when the code, or its part after "system:", starts with it (dots and
    spaces ignored: "401.9" finds "icd9cm:4019"), or when every word of the query starts a word
    of the title (case-insensitive: "atri fib" finds "Atrial fibrillation"). Ranking: exact code
    first, then titles that start with the query, then the other matches.
    """

    def __init__(self, items: Iterable[tuple[str, str]]):
        entries = []
        for order, (code, title) in enumerate(items):
            title = title or code
            bare = code.split(":", 1)[1] if ":" in code else code
            entries.append(
                _Entry(
                    code=code,
                    title=title,
                    order=order,
                    code_key=code.casefold(),
                    bare_key=bare.casefold(),
                    title_key=" ".join(title.casefold().split()),
                    title_words=tuple(_words(title)),
                )
            )
        self._entries = entries
        self._by_code = {e.code: e for e in entries}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def title(self, code: str) -> str:
        entry = self._by_code.get(code)
        return entry.title if entry else code

    def search(self, query: str, limit: int = 20) -> list[CodeOption]:
        text = " ".join(str(query).casefold().split())
        if not text or limit < 1:
            return []
        compact = text.replace(".", "").replace(" ", "")
        words = _words(text)
        ranked = []
        for e in self._entries:
            exact = compact in (e.code_key, e.bare_key) or text == e.code_key
            code_prefix = e.code_key.startswith(compact) or e.bare_key.startswith(compact)
            word_match = bool(words) and all(
                any(tw.startswith(w) for tw in e.title_words) for w in words
            )
            if not (exact or code_prefix or word_match):
                continue
            if exact:
                rank = 0
            elif e.title_key.startswith(text):
                rank = 1
            else:
                rank = 2
            ranked.append((rank, e.order, e))
        ranked.sort(key=lambda r: (r[0], r[1]))
        return [CodeOption(e.code, e.title) for _, _, e in ranked[:limit]]
