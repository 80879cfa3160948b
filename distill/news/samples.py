"""Impressions as model input: catalog rows, histories, NRMS click examples, candidate scores,
and the catalog activity (clicks, first seen) the app's cold start starts from.

Shared by the news teacher, the student, the run and the export.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ItemIndex",
    "catalog_activity",
    "click_examples",
    "history_rows",
    "impression_scores",
    "item_text",
]


def item_text(item: Any) -> str:
    """What the language model reads for an item: ``"category: title"``."""
    category = (getattr(item, "category", "") or "").strip()
    title = (getattr(item, "title", "") or "").strip()
    return f"{category}: {title}" if category else title


class ItemIndex:
    """Catalog rows: the i-th item id is row i + 1; row 0 stands for padding (and for ids
    outside the catalog)."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.ids = [str(i) for i in item_ids]
        self.row = {item: k + 1 for k, item in enumerate(self.ids)}
        if len(self.row) != len(self.ids):
            raise ValueError("item ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Sequence[str]) -> list[int]:
        return [self.row.get(i, 0) for i in ids]


def history_rows(
    impressions: Sequence[Any], index: ItemIndex, max_history: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [N, H] int64, mask [N, H] float32)``: the last `max_history` catalog items of
    each history, oldest first, right-padded with row 0; ``H >= 1``."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    lists = []
    for imp in impressions:
        rows = [r for r in index.rows(imp.history) if r]
        lists.append(rows[-max_history:])
    width = max([1] + [len(r) for r in lists])
    out = np.zeros((len(lists), width), dtype=np.int64)
    mask = np.zeros((len(lists), width), dtype=np.float32)
    for i, rows in enumerate(lists):
        out[i, : len(rows)] = rows
        mask[i, : len(rows)] = 1.0
    return out, mask


def click_examples(
    impressions: Sequence[Any], index: ItemIndex, negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """NRMS training examples: ``(owner [M], candidates [M, 1 + negatives])``.

    One example per clicked candidate (in the catalog) of each impression: column 0 is the
    clicked item's row, the others are non-clicked candidates of the same impression, drawn
    without replacement when there are enough and with replacement otherwise; an impression
    with no non-clicked candidate borrows random catalog items. ``owner`` is the position of
    the example's impression in `impressions`.
    """
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    owners, cands = [], []
    n = len(index)
    for i, imp in enumerate(impressions):
        rows = index.rows(imp.candidates)
        pos = [r for r, y in zip(rows, imp.labels, strict=True) if y and r]
        neg = [r for r, y in zip(rows, imp.labels, strict=True) if not y and r]
        for p in pos:
            if neg:
                pick = rng.choice(neg, size=negatives, replace=len(neg) < negatives)
            else:
                pick = rng.integers(1, n + 1, size=negatives)
            owners.append(i)
            cands.append([p, *pick.tolist()])
    if not cands:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1 + negatives), dtype=np.int64)
    return np.asarray(owners, dtype=np.int64), np.asarray(cands, dtype=np.int64)


def impression_scores(
    item_table: np.ndarray, users: np.ndarray, impressions: Sequence[Any], index: ItemIndex
) -> list[np.ndarray]:
    """Per impression, the candidates' scores ``item . user`` (float64, candidate order).

    `item_table` ``[n_items + 1, d]`` is indexed by `ItemIndex` rows (row 0: items outside
    the catalog); `users` ``[len(impressions), d]``.
    """
    out = []
    for imp, user in zip(impressions, users, strict=True):
        out.append(item_table[index.rows(imp.candidates)].astype(np.float64) @ user)
    return out


def _unix(canonical: str) -> int:
    """'2019-11-11 09:05:58' (UTC, as `distill.data.mind` keeps times) -> unix seconds."""
    when = dt.datetime.strptime(canonical, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def catalog_activity(
    impressions: Sequence[Any], catalog: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """What the app's cold start needs from the data before the test period: per catalog item,
    its clicks (positive labels) and the unix time it was first seen (in a history or among
    the candidates of an impression at that impression's time). Pass the training and
    validation impressions only, so that the shipped popularity never saw the test ones."""
    wanted = set(catalog)
    clicks: dict[str, int] = {}
    seen: dict[str, int] = {}
    for imp in impressions:
        when = _unix(imp.time)
        for item_id in (*imp.history, *imp.candidates):
            if item_id in wanted and when < seen.get(item_id, when + 1):
                seen[item_id] = when
        for item_id, label in zip(imp.candidates, imp.labels, strict=True):
            if label == 1 and item_id in wanted:
                clicks[item_id] = clicks.get(item_id, 0) + 1
    return clicks, seen
