"""What the views decide about their layout without a browser: the type-ahead says how many
options it leaves out, and the News view puts an open article beside the feed or in its place.
The pixels themselves are checked in Chromium by tests/test_browser_layout.py."""

from __future__ import annotations

from types import SimpleNamespace

import flet as ft

from app.medication.codes import CodeOption
from app.views.common import OPTIONS_SHOWN, SEARCH_LIMIT, OptionList
from app.views.news import SIDE_BY_SIDE, NewsView


def options(n: int) -> list[CodeOption]:
    return [CodeOption(f"icd9cm:{i:04d}", f"title {i}") for i in range(n)]


def test_the_type_ahead_says_how_many_more_there_are():
    listed = OptionList("dx", lambda option: None)
    listed.show(options(OPTIONS_SHOWN))
    assert len(listed.column.controls) == OPTIONS_SHOWN and not listed.more_box.visible
    listed.show(options(OPTIONS_SHOWN + 12))
    assert len(listed.column.controls) == OPTIONS_SHOWN  # the line is not an option
    assert listed.more_box.visible and listed.more_box.identifier == "dx-more"
    assert listed.more.value == "12 more: keep typing to narrow the list"
    listed.show(options(SEARCH_LIMIT))  # the search itself was cut: "at least"
    assert listed.more.value.startswith(f"{SEARCH_LIMIT - OPTIONS_SHOWN}+ more")
    listed.show([], "No match for 'zz'.")
    assert [c.identifier for c in listed.column.controls] == ["dx-no-match"]
    assert not listed.more_box.visible


def test_news_opens_the_article_beside_the_feed_or_in_its_place():
    state = SimpleNamespace(news=None, kiosk=SimpleNamespace(enabled=False), touch=lambda: None)
    view = NewsView(SimpleNamespace(state=state, page=None))
    view.on_resize(SIDE_BY_SIDE)
    assert view.feed_box.visible and not view.article_box.visible  # the feed, whole width
    view.article.controls = [ft.Text("an article")]  # one is open
    view._layout()
    assert view.feed_box.visible and view.article_box.visible and not view.back.visible
    view.on_resize(SIDE_BY_SIDE - 1)  # a phone: the article in the feed's place
    assert not view.feed_box.visible and view.article_box.visible and view.back.visible
    view._on_back(None)
    assert view.feed_box.visible and not view.article_box.visible
