"""News: a private feed ranked on the device from the reader's own clicks.

A catalog switch (the bundle's demo catalog, or articles imported from a MIND news.tsv), the
feed with the reason of each item ("why this"), an article panel that opens on a tap (the tap is
the click that is stored), and the import field. Ranking and storage live in `app.news.state`.
"""

from __future__ import annotations

import asyncio
import time

import flet as ft

from app.news.state import DEMO, IMPORTED, Article, Feed, FeedEntry, NewsError
from app.storage.errors import HistoryError
from app.views.common import DANGER, MUTED, Shell, heading, ident, muted, tid

DOUBLE_TAP_S = 1.5  # Flutter web can deliver one tap on a list tile twice: one open, one click
SIDE_BY_SIDE = 800  # from this window width up the article opens beside the feed; below it,
# in the feed's place with a "Back to the feed" button

CATALOG_LABELS = {DEMO: "Demo catalog", IMPORTED: "Imported news"}


class NewsView:
    route = "/news"
    title = "News"

    def __init__(self, shell: Shell):
        self.shell = shell
        self.news = shell.state.news
        self.catalog = DEMO
        self._last_open: tuple[str, float] = ("", 0.0)  # a tap delivered twice opens once
        self.basis_text = ft.Text("", color=MUTED, size=13)
        self.feed_column = ft.Column(spacing=6)
        self.article = ft.Column(spacing=6)
        self.back = tid(
            "news-back",
            ft.TextButton("Back to the feed", icon=ft.Icons.ARROW_BACK, on_click=self._on_back),
        )
        self.article_box = ft.Container(
            ft.Column(
                [
                    self.back,
                    ft.Container(
                        tid("news-article", self.article),
                        padding=12,
                        border=ft.Border.all(1, ft.Colors.BLUE_GREY_100),
                        border_radius=8,
                    ),
                ],
                spacing=4,
            ),
            expand=2,
            visible=False,
        )
        self.feed_box = ft.Container(tid("news-feed", self.feed_column), expand=3)
        self._side_by_side = True
        self.catalog_switch = ft.SegmentedButton(
            segments=[ft.Segment(value=DEMO, label=ft.Text(CATALOG_LABELS[DEMO]))],
            selected=[DEMO],
            on_change=self._on_catalog,
        )
        self.import_path = ft.TextField(
            label="Import a MIND news.tsv",  # short: a phone's field holds it on one line
            hint_text="its path on this device",
            dense=True,
            width=560,
            on_submit=self._on_import,
        )
        self.import_button = ft.OutlinedButton(
            "Import", icon=ft.Icons.UPLOAD_FILE, on_click=self._on_import
        )
        self.status = ft.Text("", size=13)
        self.root = ft.Column(
            [
                heading("News"),
                tid("news-catalog", self.catalog_switch),
                tid("news-basis", self.basis_text),
                # the feed alone, or with the open article (`_layout`)
                ft.Row(
                    [self.feed_box, self.article_box],
                    vertical_alignment=ft.CrossAxisAlignment.START,
                ),
                # a shared kiosk reads no server-side paths typed by whoever stands at it
                ft.Column(
                    [
                        ft.Divider(),
                        ft.Row(
                            [
                                tid("news-import-path", self.import_path),
                                tid("news-import", self.import_button),
                            ],
                            wrap=True,  # a phone: the button under the field
                            run_spacing=8,
                        ),
                        tid("news-status", self.status),
                    ],
                    visible=not shell.state.kiosk.enabled,
                ),
            ],
            spacing=12,
            scroll=ft.ScrollMode.AUTO,
            expand=True,
        )

    # -- the view protocol

    def refresh(self) -> None:
        """Shown: the first time, load the bundle and cache the catalog's vectors in the
        background (a few seconds once), then the feed."""
        if not self.news.loaded:
            self.feed_column.controls = [
                ft.Row([ft.ProgressRing(width=20, height=20), muted("Preparing the catalog…")])
            ]
        self.on_resize(getattr(self.shell.page, "width", None))
        self.shell.page.run_task(self._load_feed)

    def reset(self) -> None:
        self.article.controls = []
        self.status.value = ""
        self._layout()

    def on_resize(self, width: float | None) -> None:
        """The shell passes the window's width (on a resize while this view is shown)."""
        self._side_by_side = not width or width >= SIDE_BY_SIDE
        self._layout()

    def _layout(self) -> None:
        """No article open: the feed takes the whole width. An open article: beside the feed
        on a wide window, in its place (with "Back to the feed") on a narrow one."""
        open_ = bool(self.article.controls)
        self.article_box.visible = open_
        self.feed_box.visible = not open_ or self._side_by_side
        self.back.visible = open_ and not self._side_by_side

    # -- loading

    async def _load_feed(self) -> None:
        try:
            ok = await asyncio.to_thread(self.news.ensure_loaded)
            if not ok:
                self.feed_column.controls = [
                    tid("news-unavailable", ft.Text(self.news.error or "", color=DANGER))
                ]
                self.shell.page.update()
                return
            self._show_catalogs(await asyncio.to_thread(self.news.catalogs))
            feed = await asyncio.to_thread(self.news.feed, self.catalog)
        except (NewsError, HistoryError) as exc:
            self.feed_column.controls = [ft.Text(str(exc), color=DANGER)]
        else:
            self._show_feed(feed)
        self.shell.page.update()

    def _show_catalogs(self, catalogs: dict[str, int]) -> None:
        self.catalog_switch.segments = [
            ft.Segment(value=name, label=ft.Text(f"{CATALOG_LABELS[name]} ({n:,})"))
            for name, n in catalogs.items()
        ]
        if self.catalog not in catalogs:
            self.catalog = DEMO
        self.catalog_switch.selected = [self.catalog]

    def _show_feed(self, feed: Feed) -> None:
        need = getattr(self.shell, "need_fonts", None)
        if need is not None:  # titles in other scripts: their fonts first
            need(*(e.title for e in feed.entries))
        self.basis_text.value = feed.basis
        self.feed_column.controls = [self._row(k, e) for k, e in enumerate(feed.entries)] or [
            muted("Nothing left to read in this catalog.", "news-empty")
        ]

    def _row(self, k: int, entry: FeedEntry) -> ft.Control:
        async def opened(e: ft.Event[ft.ListTile]) -> None:
            await self._open(entry.item_id)

        return tid(
            ident("news-item", k),
            ft.ListTile(
                title=ft.Text(entry.title, size=15, weight=ft.FontWeight.W_500),
                subtitle=ft.Text(f"{entry.category} · {entry.reason}", size=12, color=MUTED),
                dense=True,
                on_click=opened,
            ),
        )

    # -- handlers

    async def _open(self, item_id: str) -> None:
        self.shell.state.touch()
        now = time.monotonic()
        last, when = self._last_open
        if item_id == last and now - when < DOUBLE_TAP_S:
            return
        self._last_open = (item_id, now)
        try:
            article = await asyncio.to_thread(self.news.open_item, item_id)
            feed = await asyncio.to_thread(self.news.feed, self.catalog)
        except (NewsError, HistoryError) as exc:
            self.shell.notify(str(exc), error=True)
            return
        self._show_article(article)
        self._show_feed(feed)
        self.shell.page.update()
        if not self._side_by_side:  # the article took the feed's place: show its top
            await self.root.scroll_to(offset=0, duration=200)

    def _show_article(self, article: Article) -> None:
        lines: list[ft.Control] = [
            tid("news-article-title", ft.Text(article.title, size=18, weight=ft.FontWeight.BOLD)),
            ft.Text(article.category, size=13, color=MUTED),
        ]
        if article.abstract:
            lines.append(ft.Text(article.abstract, size=14))
        if article.url:
            lines.append(ft.Text(article.url, size=12, color=MUTED, selectable=True))
        lines.append(ft.Text(f"Why this: {article.reason}", size=12, italic=True))
        self.article.controls = lines
        self._layout()

    def _on_back(self, e: ft.Event[ft.Control]) -> None:
        self.shell.state.touch()
        self.article.controls = []
        self._layout()

    async def _on_catalog(self, e: ft.Event[ft.SegmentedButton]) -> None:
        self.shell.state.touch()
        selected = list(e.control.selected or [DEMO])
        self.catalog = selected[0]
        self.article.controls = []  # an article of the other catalog: closed
        self._layout()
        try:
            feed = await asyncio.to_thread(self.news.feed, self.catalog)
        except (NewsError, HistoryError) as exc:
            self.shell.notify(str(exc), error=True)
            return
        self._show_feed(feed)
        self.shell.page.update()

    async def _on_import(self, e: ft.Event[ft.Control]) -> None:
        self.shell.state.touch()
        path = (self.import_path.value or "").strip()
        if not path:
            self.shell.notify("Enter the path of a MIND news.tsv first.", error=True)
            return
        self.status.value = f"Importing {path}…"
        self.status.color = None
        self.shell.page.update()
        try:
            report = await asyncio.to_thread(self.news.import_news_tsv, path)
        except (NewsError, HistoryError) as exc:
            self.status.value = str(exc)
            self.status.color = DANGER
            self.shell.page.update()
            return
        self.status.value = report.summary()
        self.catalog = IMPORTED
        await self._load_feed()
