"""The News tab's rows in the history database: the reader's clicks (table ``news_clicks``,
oldest first by id) and the articles imported from a MIND news.tsv (table ``news_articles``).
Each write is one transaction of the shared `History`, with its audit row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.storage.database import History
from app.storage.migrations import DEFAULT_ACTOR, utc_now

__all__ = ["NewsHistory"]


class NewsHistory:
    """The news tables of `history` (the app's one History, shared with the clinic)."""

    def __init__(self, history: History):
        self.history = history

    def add_click(self, item_id: str, *, actor: str = DEFAULT_ACTOR) -> int:
        """Record that the reader opened `item_id`; returns the click's id."""
        with self.history.write() as conn:
            if not isinstance(item_id, str) or not item_id:
                raise ValueError("item_id must be a non-empty string")
            cursor = conn.execute(
                "INSERT INTO news_clicks (item_id, at) VALUES (?, ?)", (item_id, utc_now())
            )
            self.history.log("news_click", actor=actor, detail={"item_id": item_id})
            return int(cursor.lastrowid or 0)

    def clicks(self) -> list[str]:
        """The reader's clicked item ids, oldest first (an item opened twice is there twice)."""
        rows = self.history.query("SELECT item_id FROM news_clicks ORDER BY id")
        return [r["item_id"] for r in rows]

    def save_articles(
        self, articles: Sequence[Mapping[str, str]], *, source: str, actor: str = DEFAULT_ACTOR
    ) -> tuple[int, int]:
        """Insert or replace imported articles (item_id, title, category, abstract, url) in one
        transaction; returns (new, replaced)."""
        now = utc_now()
        rows = [
            (
                a["item_id"],
                a["title"],
                a.get("category", ""),
                a.get("abstract", ""),
                a.get("url", ""),
                source,
                now,
            )
            for a in articles
        ]
        with self.history.write() as conn:
            wanted = {row[0] for row in rows}
            known = {r[0] for r in conn.execute("SELECT item_id FROM news_articles")} & wanted
            conn.executemany(
                "INSERT OR REPLACE INTO news_articles "
                "(item_id, title, category, abstract, url, source, imported) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self.history.log(
                "news_import", actor=actor, detail={"source": source, "articles": len(rows)}
            )
        return len(wanted - known), len(known)

    def articles(self) -> dict[str, dict]:
        """Imported articles: item id -> {title, category, abstract, url, source, imported}."""
        rows = self.history.query("SELECT * FROM news_articles ORDER BY imported, item_id")
        return {r.pop("item_id"): r for r in rows}
