"""Rank news on the device: `NewsRanker` builds the user vector from the clicked items' cached
vectors (int8 user encoder), then scores each candidate with one dot product; with an empty
history it falls back to popular-and-recent items when the caller passes click counts; `why`
names the clicked items closest to a suggestion.

The news side of the app uses the standard library, numpy and onnxruntime only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.news.bundle import NewsBundle, load_news_bundle
from app.news.encoders import NewsEncoders
from app.news.store import ItemStore, Snapshot

__all__ = ["NewsRanker", "RankedItem", "Ranking"]


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    title: str
    category: str


@dataclass
class Ranking:
    """`items` best first; `method`: "model" (user vector . item vectors) or "popular" (the
    cold-start fallback); `history_used`: the clicked items the user vector was built from;
    `unknown`: history or candidate ids the store does not know (left out)."""

    items: list[RankedItem]
    method: str
    history_used: list[str]
    unknown: list[str]

    @property
    def ids(self) -> list[str]:
        return [r.item_id for r in self.items]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; ties: the earlier index first."""
    n = len(scores)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(n), -scores))


class NewsRanker:
    """Ranks the store's items for a reader's clicks with a verified news bundle.

    `bundle`: a `NewsBundle` or its path; `db_path`: the SQLite file of the item vectors (see
    `ItemStore`); `max_history`: how many of the latest clicks build the user vector (default:
    the bundle's, what the student was trained with); `threads`: onnxruntime intra-op threads.
    Safe to call from several threads: each call works on one snapshot of the store.
    """

    def __init__(
        self,
        bundle: NewsBundle | str | Path,
        db_path: str | Path,
        threads: int = 1,
        max_history: int | None = None,
    ) -> None:
        if not isinstance(bundle, NewsBundle):
            bundle = load_news_bundle(bundle)
        self.bundle = bundle
        self.max_history = (
            bundle.max_history if max_history is None else _check_count(max_history, "max_history")
        )
        self.encoders = NewsEncoders(bundle, threads)
        self.store = ItemStore(bundle, db_path, self.encoders)

    def _history(self, snap: Snapshot, history: Iterable[str]) -> tuple[list, list, list]:
        """(the known clicks the user vector uses, unknown ids, every known click)."""
        if isinstance(history, str | bytes):
            raise TypeError("history must be a sequence of item ids, not a single string")
        known, unknown = [], []
        for item_id in history:
            (known if item_id in snap.row else unknown).append(item_id)
        return known[-self.max_history :], unknown, known

    def _user(self, snap: Snapshot, used: list[str]) -> np.ndarray:
        return self.encoders.user_vector(snap.matrix[[snap.row[i] for i in used]])

    def user_vector(self, history_item_ids: Iterable[str]) -> np.ndarray:
        """The user vector [dim] of the clicked items (oldest first; unknown ids left out,
        the last `max_history` kept; none: the model's cold-start vector)."""
        snap = self.store.snapshot
        used, _, _ = self._history(snap, history_item_ids)
        return self._user(snap, used)

    def scores(self, history: Iterable[str], candidates: Sequence[str]) -> np.ndarray:
        """Model scores (user . item) of `candidates`, in their order (NaN where unknown)."""
        snap = self.store.snapshot
        used, _, _ = self._history(snap, history)
        user = self._user(snap, used)
        out = np.full(len(candidates), np.nan, dtype=np.float32)
        found = [(k, snap.row[c]) for k, c in enumerate(candidates) if c in snap.row]
        if found:
            pos, rows = zip(*found, strict=True)
            out[list(pos)] = snap.matrix[list(rows)] @ user
        return out

    def rank(
        self,
        history: Iterable[str],
        candidates: Sequence[str] | None = None,
        top_k: int | None = 10,
        *,
        clicks: Mapping[str, float] | None = None,
        published: Mapping[str, float] | None = None,
        now: float | None = None,
        half_life_hours: float = 24.0,
        exclude_history: bool = True,
    ) -> Ranking:
        """The `top_k` best of `candidates` (all with None; default candidates: every item in
        the store, minus every clicked one when `exclude_history`) for a reader who clicked
        `history` (item ids, oldest first).

        Model: user vector of the last `max_history` known clicks, score = its dot product with
        each candidate's cached vector. Cold start -- no known click -- with `clicks` given
        (item id -> click count, e.g. over every reader of this device): popular-and-recent,
        score ``clicks * 0.5 ** (age / half_life)`` with the age from `published` (item id ->
        unix time; an item without one does not decay), ties broken newer first, then by id.
        Without `clicks` an empty history gets the model's learned cold-start vector.
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
            raise TypeError(f"top_k must be an integer or None; got {top_k!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {top_k}")
        snap = self.store.snapshot
        used, unknown, clicked = self._history(snap, history)
        if candidates is None:
            skip = {snap.row[i] for i in clicked} if exclude_history else set()
            rows = (
                None
                if not skip
                else np.array([r for r in range(len(snap.ids)) if r not in skip], dtype=np.int64)
            )
        else:
            if isinstance(candidates, str | bytes):
                raise TypeError("candidates must be a sequence of item ids, not a single string")
            get = snap.row.get
            found = [get(c) for c in candidates]
            unknown += [c for c, r in zip(candidates, found, strict=True) if r is None]
            rows = np.fromiter((r for r in found if r is not None), dtype=np.int64)
        n = len(snap.ids) if rows is None else len(rows)
        k = n if top_k is None else min(top_k, n)

        if not used and clicks is not None:
            ids = snap.ids if rows is None else [snap.ids[r] for r in rows]
            ranked = _popular(ids, clicks, published, now, half_life_hours)[:k]
            items = [_ranked(snap, i, s) for i, s in ranked]
            return Ranking(items, "popular", [], unknown)

        user = self._user(snap, used)
        scores = snap.matrix @ user if rows is None else snap.matrix[rows] @ user
        top = _top(scores, k)
        picked = top if rows is None else rows[top]
        items = [
            _ranked(snap, snap.ids[r], float(scores[t])) for r, t in zip(picked, top, strict=True)
        ]
        return Ranking(items, "model", used, unknown)

    def why(self, item_id: str, history: Iterable[str], top_n: int = 3) -> list[tuple[str, float]]:
        """The clicked items most like `item_id`: (item id, cosine similarity of the item
        vectors), most similar first, at most `top_n`; the item itself and unknown ids are left
        out. KeyError if the store does not know `item_id`."""
        _check_count(top_n, "top_n")
        snap = self.store.snapshot
        target = snap.row[item_id]
        seen = list(dict.fromkeys(i for i in history if i in snap.row and i != item_id))
        if not seen:
            return []
        rows = [snap.row[i] for i in seen]
        dots = snap.matrix[rows] @ snap.matrix[target]
        denom = np.maximum(snap.norms[rows] * snap.norms[target], np.float32(1e-12))
        cos = (dots / denom).astype(np.float64)
        return [(seen[j], float(cos[j])) for j in _top(cos, min(top_n, len(rows)))]

    def close(self) -> None:
        self.store.close()


def _ranked(snap: Snapshot, item_id: str, score: float) -> RankedItem:
    item = snap.items[item_id]
    return RankedItem(item_id, score, item.title, item.category)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def _popular(
    ids: Sequence[str],
    clicks: Mapping[str, float],
    published: Mapping[str, float] | None,
    now: float | None,
    half_life_hours: float,
) -> list[tuple[str, float]]:
    """(item id, score) best first: clicks decayed by age, then newer, then id."""
    if not half_life_hours > 0:
        raise ValueError(f"half_life_hours must be > 0; got {half_life_hours}")
    published = published or {}
    now = time.time() if now is None else now
    half_life = half_life_hours * 3600.0
    rows = []
    for i in ids:
        count = float(clicks.get(i, 0.0))
        when = published.get(i)
        if when is not None:
            count *= 0.5 ** (max(0.0, now - when) / half_life)
        rows.append((-count, -(when if when is not None else -math.inf), i))
    rows.sort()
    return [(i, -c) for c, _, i in rows]
