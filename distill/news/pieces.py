"""The news student's input: the teacher tokenizer's word pieces that occur in the catalog, as a
compact vocabulary, and the catalog as piece ids.

The vocabulary remaps pieces to compact ids (`<pad>`=0, `<unk>`=1, then by falling frequency)
and is saved as JSON by `save_piece_vocab`, with a fingerprint of the tokenizer that made the
pieces (`tokenizer_fingerprint`), so that an export can check it describes the same tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import atomic_write_json
from distill.data.vocab import PAD_ID, Vocab
from distill.news.samples import ItemIndex, item_text

__all__ = [
    "TEXT_TEMPLATE",
    "VOCAB_FORMAT",
    "NewsCorpus",
    "Tokenize",
    "build_piece_vocab",
    "encode_texts",
    "load_piece_vocab",
    "save_piece_vocab",
    "tokenizer_fingerprint",
]

VOCAB_FORMAT = "pocketrec-news-vocab/1"
TEXT_TEMPLATE = "category: title"  # what `item_text` gives

Tokenize = Callable[[str], Sequence[str]]


def build_piece_vocab(texts: Iterable[str], tokenize: Tokenize, min_count: int = 1) -> Vocab:
    """The pieces `tokenize` (e.g. a Hugging Face tokenizer's ``tokenize``) makes of `texts`,
    as a compact `Vocab` (``<pad>``=0, ``<unk>``=1, then by falling frequency, then A-Z)."""
    return Vocab.build((p for t in texts for p in tokenize(t)), min_count=min_count)


def encode_texts(
    texts: Sequence[str], tokenize: Tokenize, vocab: Vocab, max_tokens: int
) -> np.ndarray:
    """``[len(texts), max_tokens]`` int64 piece ids, right-padded with 0 and cut at
    `max_tokens`; a piece missing from `vocab` becomes ``<unk>``."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    out = np.full((len(texts), max_tokens), PAD_ID, dtype=np.int64)
    for i, text in enumerate(texts):
        ids = vocab.encode(tokenize(text))[:max_tokens]
        out[i, : len(ids)] = ids
    return out


def save_piece_vocab(vocab: Vocab, path: str | Path, **meta: Any) -> None:
    """JSON ``{"format", "pieces": {piece: id}, **meta}`` (meta: e.g. the tokenizer's name)."""
    atomic_write_json(Path(path), {"format": VOCAB_FORMAT, **meta, "pieces": vocab.to_json()})


def load_piece_vocab(path: str | Path) -> tuple[Vocab, dict[str, Any]]:
    """(vocabulary, the other keys of the file) from `save_piece_vocab`'s JSON."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != VOCAB_FORMAT:
        raise ValueError(f"{path}: not a {VOCAB_FORMAT} file (format={data.get('format')!r})")
    meta = {k: v for k, v in data.items() if k not in ("format", "pieces")}
    return Vocab.from_json(data["pieces"], str(path)), meta


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """sha256 of what decides a fast tokenizer's pieces (normalizer, pre-tokenizer, model and
    added tokens; not its truncation or padding settings), or None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    data = json.loads(backend.to_str())
    keep = {k: data.get(k) for k in ("normalizer", "pre_tokenizer", "model", "added_tokens")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass
class NewsCorpus:
    """The catalog as student input: `ItemIndex` rows and their piece ids ``[n + 1, T]``
    (row 0 = padding, all zeros)."""

    index: ItemIndex
    tokens: np.ndarray

    @classmethod
    def build(
        cls,
        items: dict[str, Any],
        item_ids: Sequence[str],
        tokenize: Tokenize,
        vocab: Vocab,
        max_tokens: int,
    ) -> NewsCorpus:
        index = ItemIndex(item_ids)
        texts = [item_text(items[i]) for i in index.ids]
        body = encode_texts(texts, tokenize, vocab, max_tokens)
        tokens = np.concatenate([np.zeros((1, max_tokens), dtype=np.int64), body])
        return cls(index, tokens)
