"""The News tab's logic, in plain Python (no flet): a private feed ranked on the device.

- `NewsState` holds the news bundle's ranker (`app.news.ranker.NewsRanker`, item vectors cached
  in the history database) and the reader's clicks (table ``news_clicks``, `app.news.history`).
  It loads on first use (`ensure_loaded`): the first start encodes the whole catalog once.
- Two catalogs: "demo" (the bundle's own) and "imported" (articles read from a MIND
  ``news.tsv`` with `import_news_tsv`, kept in table ``news_articles``).
- `feed()` ranks the chosen catalog for the reader's clicks on this device and nothing else;
  before the first click it falls back to popular-and-recent items (the bundle's training
  clicks decayed by age), or, for an imported catalog with no counts, to the model's start
  vector. Every entry carries its reason: the clicked items closest to it, or its popularity.
- `open_item()` records the click (one transaction) and returns what the reader sees.

This module is on the app's side of the dependency wall: the standard library, numpy and app.*.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from app.news.bundle import load_news_bundle
from app.news.history import NewsHistory
from app.news.ranker import NewsRanker
from app.storage.database import History
from contract.bundle import BundleError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NEWS_BUNDLE = ROOT / "assets" / "bundles" / "news-demo"
DEMO, IMPORTED = "demo", "imported"
FEED_SIZE = 10
WHY_ITEMS = 2
MIND_COLUMNS = 8  # id, category, subcategory, title, abstract, url, title and abstract entities

__all__ = [
    "DEFAULT_NEWS_BUNDLE",
    "DEMO",
    "IMPORTED",
    "Article",
    "Feed",
    "FeedEntry",
    "ImportReport",
    "NewsError",
    "NewsState",
    "read_news_tsv",
]


def _age(hours: float) -> str:
    if hours < 48:
        return f"{hours:.0f} h"
    return f"{hours / 24:.0f} days"


class NewsError(Exception):
    """A news problem the reader can act on (no bundle, a bad news.tsv); the message says what."""


@dataclass(frozen=True)
class FeedEntry:
    item_id: str
    title: str
    category: str
    score: float
    reason: str  # "why this", in words


@dataclass(frozen=True)
class Feed:
    """`method`: "model" (ranked from the reader's clicks), "popular" (cold start: popular and
    recent) or "start" (cold start: the model's start vector, no counts known)."""

    entries: list[FeedEntry]
    method: str
    catalog: str
    clicks_used: int
    catalog_size: int

    @property
    def ids(self) -> list[str]:
        return [e.item_id for e in self.entries]

    @property
    def basis(self) -> str:
        if self.method == "model":
            return f"Ranked for you from your last {self.clicks_used} opened items (on this device)"
        if self.method == "popular":
            return "New here: popular and recent items. Open a few and the feed learns from them"
        return "New here: the model's default reading of this catalog. Open a few items"


@dataclass(frozen=True)
class Article:
    item_id: str
    title: str
    category: str
    abstract: str
    url: str
    reason: str


@dataclass
class ImportReport:
    path: str
    rows: int = 0
    added: int = 0
    replaced: int = 0
    vectors_computed: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows

    def summary(self) -> str:
        text = f"{self.added} new and {self.replaced} updated articles from {self.path}"
        if self.skipped:
            skips = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            text += f"; skipped {sum(self.skipped.values())} rows ({skips})"
        return text


def read_news_tsv(path: str | Path) -> tuple[list[dict], Counter]:
    """The articles of a MIND ``news.tsv`` (tab-separated, no header: id, category,
    subcategory, title, abstract, url, title entities, abstract entities) and the rows skipped
    by reason. A row without an id or a title is skipped and counted; a repeated id keeps its
    last row (counted). A file that is not UTF-8, or has no usable row, is a NewsError naming
    the file (and the line)."""
    path = Path(path)
    if path.is_dir():
        raise NewsError(f"{path}: a folder (expected the MIND news.tsv file inside it)")
    if not path.is_file():
        raise NewsError(f"{path}: no such file (expected a MIND news.tsv)")
    skipped: Counter = Counter()
    articles: dict[str, dict] = {}
    try:
        f = path.open("rb")
    except OSError as e:
        raise NewsError(f"{path}: cannot read it ({e.strerror or e})") from e
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise NewsError(f"{path}: line {n} is not UTF-8 ({e.reason})") from e
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 4:
                skipped["with fewer than 4 columns"] += 1
                continue
            item_id, category, _sub, title = (c.strip() for c in cols[:4])
            if not item_id or not title:
                skipped["without an id or a title"] += 1
                continue
            if item_id in articles:
                skipped["repeating an earlier id (last kept)"] += 1
            articles[item_id] = {
                "item_id": item_id,
                "title": title,
                "category": category,
                "abstract": cols[4].strip() if len(cols) > 4 else "",
                "url": cols[5].strip() if len(cols) > 5 else "",
            }
    if not articles:
        raise NewsError(
            f"{path}: no article found (expected MIND news.tsv rows: id, category, subcategory, "
            "title, abstract, url, ... separated by tabs)"
        )
    return list(articles.values()), skipped


def _cache_message(path: Path, e: sqlite3.Error) -> str:
    if "full" in str(e).lower():
        return (
            f"the disk holding {path} is full: the catalog's item vectors could not be stored; "
            "free some space and open News again"
        )
    return f"cannot store the catalog's item vectors in {path}: {e}"


class NewsState:
    """The feed's state, shared by every UI session of the app (see the module docstring)."""

    def __init__(self, history: History, bundle: str | Path | None = None, threads: int = 1):
        self.history = history
        self.records = NewsHistory(history)
        self.bundle_path = Path(bundle) if bundle is not None else DEFAULT_NEWS_BUNDLE
        self.threads = threads
        self.ranker: NewsRanker | None = None
        self.error: str | None = None
        self._articles: dict[str, dict] = {}
        self._load_lock = threading.Lock()

    # -- loading

    @property
    def loaded(self) -> bool:
        return self.ranker is not None

    def ensure_loaded(self) -> bool:
        """Load the bundle and bring the item-vector cache up to date (the first start encodes
        the catalog once); False, with `error` set, when there is no usable news bundle."""
        with self._load_lock:
            if self.ranker is not None or self.error is not None:
                return self.ranker is not None
            try:
                bundle = load_news_bundle(self.bundle_path)
            except BundleError as e:
                self.error = (
                    f"No news bundle: {e}. Build one with `pocketrec pipeline --domain news "
                    "--source movielens-demo --out DIR`, then start the app with "
                    "--news-bundle DIR/bundle"
                )
                return False
            try:
                ranker = NewsRanker(bundle, self.history.path, threads=self.threads)
                self._articles = self.records.articles()
                if self._articles:
                    ranker.store.add_items(
                        {i: (a["title"], a["category"]) for i, a in self._articles.items()}
                    )
            except sqlite3.Error as e:  # not kept as `error`: a full disk can be freed
                raise NewsError(_cache_message(self.history.path, e)) from e
            self.ranker = ranker
            return True

    def _ready(self) -> NewsRanker:
        if not self.ensure_loaded():
            raise NewsError(self.error or "no news bundle")
        assert self.ranker is not None
        return self.ranker

    @property
    def bundle_name(self) -> str:
        return self.ranker.bundle.name if self.ranker else self.bundle_path.name

    def catalogs(self) -> dict[str, int]:
        """Catalog name -> number of items ("imported" only once something was imported)."""
        ranker = self._ready()
        out = {DEMO: len(ranker.bundle.catalog)}
        if self._articles:
            out[IMPORTED] = len(self._articles)
        return out

    def _catalog_ids(self, catalog: str) -> list[str]:
        ranker = self._ready()
        if catalog == DEMO:
            return list(ranker.bundle.catalog)
        if catalog == IMPORTED:
            return list(self._articles)
        raise ValueError(f"unknown catalog {catalog!r}; expected {DEMO!r} or {IMPORTED!r}")

    # -- the feed

    def clicks(self) -> list[str]:
        return self.records.clicks()

    def feed(self, catalog: str = DEMO, top_k: int = FEED_SIZE) -> Feed:
        """The best `top_k` unread items of `catalog` for this device's clicks."""
        ranker = self._ready()
        history = self.clicks()
        opened = set(history)
        ids = self._catalog_ids(catalog)
        candidates = [i for i in ids if i not in opened]
        bundle = ranker.bundle
        used = [i for i in history if i in ranker.store][-ranker.max_history :]
        counts = None
        if not used and catalog == DEMO and bundle.clicks:
            counts = bundle.clicks
        ranking = ranker.rank(
            history,
            candidates,
            top_k=top_k,
            clicks=counts,
            published=bundle.seen,
            now=bundle.cold_start["now"],
            half_life_hours=bundle.cold_start["half_life_hours"],
        )
        method = ranking.method if used or counts is not None else "start"
        entries = [
            FeedEntry(
                r.item_id,
                r.title,
                r.category,
                r.score,
                self._reason(r.item_id, history, ranking.method, r.score),
            )
            for r in ranking.items
        ]
        return Feed(entries, method, catalog, len(ranking.history_used), len(ids))

    def _reason(
        self, item_id: str, history: list[str], method: str | None = None, score: float = 0.0
    ) -> str:
        """Why `item_id` is where it is, in words that match how it was ranked: for the model,
        the opened items whose vectors point the same way (positive cosine only: a negative one
        is not "close"); for the popular-and-recent start, the opens *and* the age discount
        that together make its weight (the order is by that weight, not by the opens alone)."""
        ranker = self._ready()
        known = [i for i in history if i in ranker.store]
        if method is None:
            method = "model" if known else "popular"
        if method == "model" and known:
            close = [(i, cos) for i, cos in ranker.why(item_id, known, top_n=WHY_ITEMS) if cos > 0]
            if close:
                items = ranker.store.items
                names = "; ".join(f"{items[i].title} (similarity {cos:.2f})" for i, cos in close)
                return f"Close to what you opened: {names}"
            return "Ranked from your opened items taken together; none of them alone is close to it"
        bundle = ranker.bundle
        clicks = bundle.clicks.get(item_id)
        if clicks:
            half_life = float(bundle.cold_start["half_life_hours"])
            published = bundle.seen.get(item_id)
            if published is None:
                return f"Popular: opened {int(clicks)} times in the catalog's history"
            age_h = max(0.0, float(bundle.cold_start["now"]) - float(published)) / 3600.0
            weight = float(clicks) * 0.5 ** (age_h / half_life)
            return (
                f"Popular and recent: opened {int(clicks)} times, {_age(age_h)} old, "
                f"so weight {weight:.1f} (opens halved every {half_life:g} h of age; "
                "the feed is in order of weight)"
            )
        return "New to you: no reading history to compare with yet"

    # -- reading

    def open_item(self, item_id: str) -> Article:
        """Record the click (one transaction, before anything is shown) and return the item."""
        ranker = self._ready()
        if item_id not in ranker.store:
            raise NewsError(f"unknown news item {item_id!r}")
        reason = self._reason(item_id, self.clicks())  # as it was ranked before this click
        self.records.add_click(item_id)
        item = ranker.store.items[item_id]
        extra = self._articles.get(item_id, {})
        return Article(
            item_id,
            item.title,
            item.category,
            extra.get("abstract", ""),
            extra.get("url", ""),
            reason,
        )

    # -- importing

    def import_news_tsv(self, path: str | Path) -> ImportReport:
        """Read a MIND news.tsv into the "imported" catalog: articles saved in one transaction,
        then one item vector computed per new or changed article."""
        ranker = self._ready()
        articles, skipped = read_news_tsv(path)
        report = ImportReport(str(path), rows=len(articles), skipped=skipped)
        report.added, report.replaced = self.records.save_articles(articles, source=Path(path).name)
        self._articles = self.records.articles()
        try:
            report.vectors_computed = ranker.store.add_items(
                {a["item_id"]: (a["title"], a["category"]) for a in articles}
            )
        except sqlite3.Error as e:  # the articles are saved; their vectors come at next start
            raise NewsError(_cache_message(self.history.path, e)) from e
        return report
