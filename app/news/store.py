"""Item vectors computed once with the item encoder and kept in SQLite (table
``item_vectors``, created by the history's migrations: `app.storage.migrations`), recomputed
only for items it has no vector of, items whose text changed, or a different bundle.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlite_utils import Database

from app.news.bundle import CatalogItem, NewsBundle
from app.news.encoders import NewsEncoders
from app.storage.migrations import ITEM_VECTORS_TABLE as TABLE
from app.storage.migrations import migrate

__all__ = ["TABLE", "ItemStore"]


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_item(item_id: str, value: Any) -> CatalogItem:
    if isinstance(value, CatalogItem):
        return CatalogItem(item_id, value.title, value.category)
    if isinstance(value, Mapping):
        title, category = value.get("title", ""), value.get("category", "")
    elif isinstance(value, str):
        title, category = value, ""
    else:
        title, category = value
    if not isinstance(title, str) or not isinstance(category, str):
        raise TypeError(f"item {item_id!r}: title and category must be strings")
    return CatalogItem(str(item_id), title, category)


@dataclass(frozen=True)
class Snapshot:
    """The store's items and vectors at one moment; replaced whole, never changed in place, so
    a reader holding one sees a consistent set while `ItemStore.add_items` runs."""

    items: dict[str, CatalogItem]
    ids: list[str]
    row: dict[str, int]
    matrix: np.ndarray  # [n, dim] float32, row k = ids[k]
    norms: np.ndarray  # [n] float32


class ItemStore:
    """Item vectors computed once with the item encoder and kept in SQLite.

    Table ``item_vectors(item_id TEXT PRIMARY KEY, bundle_sha TEXT, text_sha TEXT, title TEXT,
    category TEXT, added INTEGER, vec BLOB)``: ``vec`` is the float32 vector's bytes,
    ``bundle_sha`` the sha256 of the manifest of the bundle that computed it, ``text_sha`` that
    of the text it was computed from, ``added`` 1 for items added with `add_items` (0 for the
    bundle's catalog). Opening a store brings the bundle's catalog and every item added before
    up to date: a vector is reused when both hashes match and computed (one encoder call)
    otherwise -- so a new bundle recomputes everything, an unchanged one nothing. Rows of an
    earlier bundle's catalog that the current catalog lacks are ignored. `encoder_calls`
    counts the item-encoder calls this store made.
    """

    def __init__(
        self,
        bundle: NewsBundle,
        db_path: str | Path,
        encoders: NewsEncoders | None = None,
        threads: int = 1,
    ) -> None:
        self.bundle = bundle
        self.encoders = encoders or NewsEncoders(bundle, threads)
        self.db_path = str(db_path)
        self.encoder_calls = 0
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.db_path, timeout=5.0, check_same_thread=False)
        # the table comes from the migrations: a no-op on the app's (already migrated) history
        # database, the whole schema on a file of its own
        migrate(Database(self._conn, recursive_triggers=False, execute_plugins=False))
        rows = self._conn.execute(
            f"SELECT item_id, bundle_sha, text_sha, title, category, added, vec FROM {TABLE}"
        ).fetchall()
        cached = {r[0]: (r[1], r[2], r[6]) for r in rows}
        wanted = {i: (item, 0) for i, item in bundle.catalog.items()}
        for item_id, _, _, title, category, added, _ in rows:
            if added and item_id not in wanted:
                wanted[item_id] = (CatalogItem(item_id, title, category), 1)
        with self._lock:
            vectors = self._vectors(wanted, cached)
            items = {i: item for i, (item, _) in wanted.items()}
            self.snapshot = _make_snapshot(items, vectors)

    @property
    def items(self) -> dict[str, CatalogItem]:
        return self.snapshot.items

    @property
    def ids(self) -> list[str]:
        return self.snapshot.ids

    @property
    def row(self) -> dict[str, int]:
        return self.snapshot.row

    @property
    def matrix(self) -> np.ndarray:
        return self.snapshot.matrix

    def __len__(self) -> int:
        return len(self.snapshot.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.snapshot.row

    def close(self) -> None:
        self._conn.close()

    def vectors(self, item_ids: Iterable[str]) -> np.ndarray:
        """The cached vectors [n, dim] of `item_ids` (KeyError for an unknown one)."""
        snap = self.snapshot
        return snap.matrix[[snap.row[i] for i in item_ids]]

    def add_items(self, items: Mapping[str, Any]) -> int:
        """Add new items or new texts of known ones (id -> {"title", "category"}, or a
        (title, category) pair, or a title); returns how many vectors it computed."""
        parsed = {str(k): _as_item(str(k), v) for k, v in items.items()}
        with self._lock:
            snap = self.snapshot
            changed = {
                i: (item, 1)
                for i, item in parsed.items()
                if i not in snap.items or snap.items[i] != item
            }
            if not changed:
                return 0
            marks = ",".join("?" * len(changed))
            cached = {
                r[0]: (r[1], r[2], r[3])
                for r in self._conn.execute(
                    f"SELECT item_id, bundle_sha, text_sha, vec FROM {TABLE} "
                    f"WHERE item_id IN ({marks})",
                    list(changed),
                )
            }
            before = self.encoder_calls
            vectors = self._vectors(changed, cached)
            merged = dict(snap.items)
            matrix = [snap.matrix]
            extra = []
            replace = {}
            for k, (item_id, (item, _)) in enumerate(changed.items()):
                merged[item_id] = item
                if item_id in snap.row:
                    replace[snap.row[item_id]] = vectors[k]
                else:
                    extra.append(vectors[k])
            if replace:
                matrix = [snap.matrix.copy()]
                for r, v in replace.items():
                    matrix[0][r] = v
            if extra:
                matrix.append(np.stack(extra))
            self.snapshot = _make_snapshot(merged, np.concatenate(matrix))
            return self.encoder_calls - before

    def _vectors(
        self, wanted: dict[str, tuple[CatalogItem, int]], cached: dict[str, tuple]
    ) -> np.ndarray:
        """Vectors [len(wanted), dim] in `wanted`'s order: from `cached` (item id ->
        (bundle_sha, text_sha, vec bytes)) where both hashes match, else computed and saved."""
        dim = self.bundle.dim
        out = np.zeros((len(wanted), dim), dtype=np.float32)
        fresh = []
        for k, (item_id, (item, added)) in enumerate(wanted.items()):
            text_sha = _text_sha(item.text)
            hit = cached.get(item_id)
            if (
                hit is not None
                and hit[:2] == (self.bundle.sha, text_sha)
                and len(hit[2]) == 4 * dim
            ):
                out[k] = np.frombuffer(hit[2], dtype=np.float32)
                continue
            vec = self.encoders.item_vector(self.bundle.tokenizer.encode(item.text))
            self.encoder_calls += 1
            out[k] = vec
            fresh.append(
                (
                    item_id,
                    self.bundle.sha,
                    text_sha,
                    item.title,
                    item.category,
                    added,
                    vec.tobytes(),
                )
            )
        if fresh:
            with self._conn:
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO {TABLE} "
                    "(item_id, bundle_sha, text_sha, title, category, added, vec) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    fresh,
                )
        return out


def _make_snapshot(items: dict[str, CatalogItem], matrix: np.ndarray) -> Snapshot:
    ids = list(items)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1).astype(np.float32)
    return Snapshot(items, ids, {i: k for k, i in enumerate(ids)}, matrix, norms)
