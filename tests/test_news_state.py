"""app.news.state on the shipped news bundle and a real SQLite history: cold start, clicks
stored and used, the feed changing, "why this", MIND news.tsv import with counted skips."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from app.news.state import (
    DEFAULT_NEWS_BUNDLE,
    DEMO,
    IMPORTED,
    NewsError,
    NewsState,
    read_news_tsv,
)
from app.storage.database import History

NEWS_TSV = (
    "N1\tsports\tfootball\tLocal team wins the cup final\tA late goal decided it.\thttp://x/1\t[]\t[]\n"
    "N2\tfinance\tmarkets\tMarkets rally on rate cut hopes\tStocks rose.\thttp://x/2\t[]\t[]\n"
    "N3\tsports\ttennis\tTennis star retires after twenty years\t\t\t[]\t[]\n"
    "N4\thealth\tnutrition\tWhat to eat before a marathon\tCarbohydrates, mostly.\t\t[]\t[]\n"
    "N5\tmovies\treviews\tA quiet space drama divides critics\tSlow but rewarding.\t\t[]\t[]\n"
)


@pytest.fixture(scope="module")
def warm_db(tmp_path_factory):
    """A history database whose item-vector cache already holds the demo catalog: the first
    load encodes 9,742 titles once; each test copies the file instead of encoding again."""
    path = tmp_path_factory.mktemp("news_warm") / "pocketrec.db"
    history = History(path)
    news = NewsState(history, DEFAULT_NEWS_BUNDLE)
    assert news.ensure_loaded(), news.error
    assert news.ranker.store.encoder_calls == len(news.ranker.bundle.catalog)
    news.ranker.close()
    history.close()
    return path


@pytest.fixture
def news(warm_db, tmp_path):
    path = tmp_path / "pocketrec.db"
    shutil.copyfile(warm_db, path)
    history = History(path)
    state = NewsState(history, DEFAULT_NEWS_BUNDLE)
    assert state.ensure_loaded(), state.error
    yield state
    state.ranker.close()
    history.close()


def test_opening_again_reuses_every_cached_vector(news):
    assert news.ranker.store.encoder_calls == 0
    assert news.catalogs() == {DEMO: len(news.ranker.bundle.catalog)}


def test_cold_start_is_popular_and_recent(news):
    feed = news.feed(DEMO)
    assert feed.method == "popular" and len(feed.entries) == 10
    bundle = news.ranker.bundle
    now, half = bundle.cold_start["now"], bundle.cold_start["half_life_hours"] * 3600

    def decayed(i):
        return bundle.clicks.get(i, 0) * 0.5 ** (max(0.0, now - bundle.seen.get(i, now)) / half)

    scores = [decayed(i) for i in feed.ids]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    best = max(bundle.catalog, key=decayed)
    assert feed.ids[0] == best
    # the reason gives the weight the order is by (opens with the age discount), not the opens
    for entry in feed.entries:
        assert entry.reason.startswith("Popular")
        if entry.item_id in bundle.seen:
            assert f"weight {decayed(entry.item_id):.1f}" in entry.reason
    assert "popular and recent" in feed.basis


def test_three_opened_items_are_stored_and_change_the_feed(news):
    first = news.feed(DEMO)
    opened = []
    for _ in range(3):
        item = news.feed(DEMO).entries[0]
        article = news.open_item(item.item_id)
        assert (article.item_id, article.title) == (item.item_id, item.title)
        opened.append(item.item_id)
    assert news.clicks() == opened
    with sqlite3.connect(news.history.path) as conn:
        rows = conn.execute("SELECT item_id FROM news_clicks ORDER BY id").fetchall()
    assert [r[0] for r in rows] == opened

    after = news.feed(DEMO)
    assert after.method == "model" and after.clicks_used == 3
    assert not set(opened) & set(after.ids)  # read items leave the feed
    assert after.ids != [i for i in first.ids if i not in opened][: len(after.ids)]
    titles = {news.ranker.store.items[i].title for i in opened}
    for entry in after.entries:  # "close" only where a cosine is positive
        close = [c for _, c in news.ranker.why(entry.item_id, opened, top_n=2) if c > 0]
        if close:
            assert entry.reason.startswith("Close to what you opened")
            assert any(t in entry.reason for t in titles)
        else:
            assert "none of them alone is close" in entry.reason
    # the ranking is the model's: user vector of the three clicks . item vectors
    scores = news.ranker.scores(opened, after.ids)
    assert list(scores) == sorted(scores, reverse=True)


def test_clicks_survive_a_restart(news):
    for item_id in news.feed(DEMO).ids[:2]:
        news.open_item(item_id)
    before = news.feed(DEMO)
    path = news.history.path
    news.ranker.close()
    news.history.close()
    history = History(path)
    again = NewsState(history, DEFAULT_NEWS_BUNDLE)
    assert again.ensure_loaded()
    assert again.ranker.store.encoder_calls == 0
    assert again.feed(DEMO).ids == before.ids
    news.ranker, news.history = again.ranker, history  # closed by the fixture


def test_import_a_mind_news_tsv(news, tmp_path):
    tsv = tmp_path / "news.tsv"
    bad_rows = "N9\tbroken row\n\tsports\tx\tno id\n"
    tsv.write_text(NEWS_TSV + bad_rows + NEWS_TSV.splitlines()[0] + "\n")
    report = news.import_news_tsv(tsv)
    assert (report.rows, report.added, report.replaced) == (5, 5, 0)
    assert report.vectors_computed == 5
    assert report.skipped == {
        "with fewer than 4 columns": 1,
        "without an id or a title": 1,
        "repeating an earlier id (last kept)": 1,
    }
    assert "skipped 3 rows" in report.summary()
    assert news.catalogs()[IMPORTED] == 5

    feed = news.feed(IMPORTED)
    assert sorted(feed.ids) == ["N1", "N2", "N3", "N4", "N5"]
    assert feed.method == "start"  # no counts for imported news, no clicks yet
    article = news.open_item("N2")
    assert article.abstract == "Stocks rose." and article.url == "http://x/2"
    feed = news.feed(IMPORTED)
    assert feed.method == "model" and "N2" not in feed.ids
    for entry in feed.entries:
        (cos,) = [c for _, c in news.ranker.why(entry.item_id, ["N2"])]
        assert ("Markets rally" in entry.reason) == (cos > 0), (entry.reason, cos)

    again = news.import_news_tsv(tsv)  # nothing changed: no vector computed again
    assert (again.added, again.replaced, again.vectors_computed) == (0, 5, 0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no article found"),
        (b"just one column\n", "no article found"),
        (b"N1\tsports\tx\tcaf\xe9 au lait\n", "line 1 is not UTF-8"),
    ],
)
def test_bad_news_tsv_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "news.tsv"
    path.write_bytes(content)
    with pytest.raises(NewsError, match=message) as info:
        read_news_tsv(path)
    assert str(path) in str(info.value)
    with pytest.raises(NewsError, match="no such file"):
        read_news_tsv(tmp_path / "missing.tsv")


def test_bad_import_keeps_the_catalog(news, tmp_path):
    bad = tmp_path / "news.tsv"
    bad.write_bytes(b"N1\tsports\tx\t\xff\n")
    with pytest.raises(NewsError, match="not UTF-8"):
        news.import_news_tsv(bad)
    assert IMPORTED not in news.catalogs()
    assert news.records.articles() == {}


def test_no_news_bundle_is_explained(tmp_path):
    history = History(tmp_path / "pocketrec.db")
    state = NewsState(history, tmp_path / "missing-bundle")
    assert not state.ensure_loaded()
    assert "pocketrec pipeline --domain news" in state.error
    with pytest.raises(NewsError, match="No news bundle"):
        state.feed()
    history.close()


def _rehashed_copy(tmp_path, edit_catalog=None, edit_manifest=None):
    """A copy of the shipped news bundle with its catalog or manifest edited and the hashes
    made right again, so that the content checks after the hash check are what is tested."""
    import gzip
    import hashlib
    import json

    from app.news.bundle import load_news_bundle

    folder = shutil.copytree(DEFAULT_NEWS_BUNDLE, tmp_path / "bundle")
    manifest = json.loads((folder / "manifest.json").read_text())
    name = manifest["catalog"]
    if edit_catalog:
        catalog = json.loads(gzip.decompress((folder / name).read_bytes()))
        edit_catalog(catalog)
        (folder / name).write_bytes(gzip.compress(json.dumps(catalog).encode()))
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    if edit_manifest:
        edit_manifest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return lambda: load_news_bundle(folder)


def test_bad_cold_start_data_in_a_bundle_is_refused(tmp_path):
    from contract.bundle import BundleError

    def negative(catalog):
        catalog[next(iter(catalog))]["clicks"] = -3

    with pytest.raises(BundleError, match="'clicks' must be a number >= 0, got -3"):
        _rehashed_copy(tmp_path / "a", edit_catalog=negative)()

    def text_time(catalog):
        catalog[next(iter(catalog))]["seen"] = "yesterday"

    with pytest.raises(BundleError, match="'seen' must be a number"):
        _rehashed_copy(tmp_path / "b", edit_catalog=text_time)()

    def no_half_life(manifest):
        manifest["cold_start"] = {"now": 0, "half_life_hours": 0}

    with pytest.raises(BundleError, match="cold_start"):
        _rehashed_copy(tmp_path / "c", edit_manifest=no_half_life)()
    # the untouched copy loads, with its cold-start data
    bundle = _rehashed_copy(tmp_path / "d")()
    assert bundle.clicks and bundle.seen and bundle.cold_start["half_life_hours"] > 0


def test_a_vector_cache_that_cannot_be_written_is_a_clear_error_and_retried(tmp_path):
    from app.news.store import TABLE

    path = tmp_path / "pocketrec.db"
    history = History(path)  # the migrations made the cache's table
    with sqlite3.connect(path) as conn:  # and something refuses every row written to it
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {TABLE} "
            "BEGIN SELECT RAISE(ABORT, 'no room for vectors'); END"
        )
    state = NewsState(history, DEFAULT_NEWS_BUNDLE)
    with pytest.raises(NewsError, match="cannot store the catalog's item vectors") as info:
        state.ensure_loaded()
    assert str(path) in str(info.value) and not state.loaded
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert state.ensure_loaded()  # not remembered as "no bundle": the next try works
    assert state.feed().method == "popular"
    state.ranker.close()
    history.close()


def test_a_folder_given_for_news_tsv_is_a_clear_error(tmp_path):
    with pytest.raises(NewsError, match="a folder .expected the MIND news.tsv file inside it"):
        read_news_tsv(tmp_path)


def test_a_negative_cosine_is_never_called_close(news, monkeypatch):
    opened = news.feed(DEMO).entries[0].item_id
    news.open_item(opened)
    monkeypatch.setattr(news.ranker, "why", lambda item, history, top_n=2: [(opened, -0.3)])
    feed = news.feed(DEMO)
    assert feed.method == "model"
    assert not any("Close to" in e.reason for e in feed.entries)
    assert all("none of them alone is close" in e.reason for e in feed.entries)
