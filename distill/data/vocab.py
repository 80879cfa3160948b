"""Vocabularies with `<pad>`=0 and `<unk>`=1, saved as JSON objects token -> id.

Tokens after the two specials are ordered by falling frequency, then alphabetically, so the same
data gives the same ids. Encoding an unknown token gives `<unk>` and is counted, never dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contract.files import atomic_write_json

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tokens[:2] != (PAD, UNK):
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {self.tokens[:2]}")
        index = {t: i for i, t in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            dup = [t for t, n in Counter(self.tokens).items() if n > 1][:3]
            raise ValueError(f"duplicate tokens in vocabulary: {dup}")
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(cls, tokens: Iterable[str], min_count: int = 1) -> Vocab:
        counts = Counter(tokens)
        counts.pop(PAD, None)
        counts.pop(UNK, None)
        kept = sorted(
            (t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t)
        )
        return cls((PAD, UNK, *kept))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def encode(self, tokens: Iterable[str], unknown: Counter | None = None) -> list[int]:
        """Ids of `tokens`; each token not in the vocabulary becomes <unk> and is counted."""
        out = []
        for t in tokens:
            i = self._index.get(t, UNK_ID)
            if i == UNK_ID and unknown is not None:
                unknown[t] += 1
            out.append(i)
        return out

    def to_json(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def from_json(cls, data: dict[str, int], where: str = "vocabulary") -> Vocab:
        ids = sorted(data.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"{where}: ids must be 0..{len(ids) - 1} with no gaps")
        return cls(tuple(sorted(data, key=data.__getitem__)))

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Vocab:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")), str(path))
