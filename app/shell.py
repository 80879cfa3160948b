"""The app's shell around the views: a navigation rail, the header, routes, notifications, the
banner about the open visit (a restored draft, a visit saved in another tab), the watch that
keeps the draft and the kiosk's idle timeout, and the lock screen. One `PocketrecApp` per page
(browser tab or window); all logic lives in `app.state.AppState` and the domains' states, the
views in `app.views`.

Activity for the idle timeout: keys, taps (every tappable control's handler), pointer moves and
wheel scrolls anywhere on the page (a GestureDetector around it), and touch or wheel scrolling
in every scrollable column, the moves and scrolls at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib

import flet as ft

from app.fonts import FontLoader
from app.medication.visit import local_time
from app.state import AppState
from app.views.common import tid
from app.views.export import ExportView
from app.views.lock import LockView
from app.views.model import ModelView
from app.views.news import NewsView
from app.views.patients import PatientsView
from app.views.timeline import TimelineView
from app.views.visit import VisitView

START_ROUTE = "/patients"
IDLE_CHECK_SECONDS = 1.0  # the watch's tick: idle timeout, draft written when it changed
OTHER_SAVES_EVERY = 2  # ticks between looks for visits saved in another tab
ACTIVITY_INTERVAL_MS = 1000  # pointer moves and scrolls reach the server at most this often
NARROW_WIDTH = 600  # below it: a compact rail and header (phones)
BANNER_ONE_ROW = 720  # from it up: the banner's buttons beside its text, else under it
BUNDLE_NAME_FROM = 900  # the bundle's name in the header only from this width up
NAV = (
    ("/patients", "Patients", ft.Icons.PEOPLE_OUTLINE, ft.Icons.PEOPLE),
    ("/visit", "Visit", ft.Icons.MEDICAL_SERVICES_OUTLINED, ft.Icons.MEDICAL_SERVICES),
    ("/timeline", "Timeline", ft.Icons.HISTORY, ft.Icons.HISTORY),
    ("/model", "Model", ft.Icons.INFO_OUTLINE, ft.Icons.INFO),
    ("/export", "Export", ft.Icons.DOWNLOAD_OUTLINED, ft.Icons.DOWNLOAD),
    ("/news", "News", ft.Icons.NEWSPAPER_OUTLINED, ft.Icons.NEWSPAPER),
)


class PocketrecApp:
    """The shell around the views: rail, header, routes, notifications, kiosk watch."""

    def __init__(self, page: ft.Page, state: AppState):
        self.page = page
        self.state = state
        self.route = START_ROUTE
        self.closed = False
        self.views = {
            v.route: v
            for v in (
                PatientsView(self),
                VisitView(self),
                TimelineView(self),
                ModelView(self),
                ExportView(self),
                NewsView(self),
            )
        }
        self.lock = LockView(self, self._unlocked)
        self.rail = ft.NavigationRail(
            selected_index=0,
            label_type=ft.NavigationRailLabelType.ALL,
            min_width=88,
            destinations=[
                ft.NavigationRailDestination(
                    icon=tid(f"nav-{route.strip('/')}", ft.Icon(icon)),
                    selected_icon=tid(f"nav-{route.strip('/')}", ft.Icon(selected)),
                    label=label,
                )
                for route, label, icon, selected in NAV
            ],
            on_change=self._on_rail,
        )
        # one line, cut with an ellipsis: a long name never pushes "Close patient" (which hides
        # the patient's data on a shared kiosk) off a phone's screen
        self.patient_text = ft.Text(
            "No patient open",
            size=14,
            max_lines=1,
            no_wrap=True,
            overflow=ft.TextOverflow.ELLIPSIS,
        )
        self.bundle_text = ft.Text(
            f"· {state.medication.bundle.name}", size=14, color=ft.Colors.GREY_700
        )
        self.close_button = ft.TextButton(
            "Close patient", icon=ft.Icons.CLOSE, on_click=self._on_close_patient
        )
        # hide the Semantics wrapper, not its content: Flet 1.0 shows an error box for a
        # Semantics whose content is invisible
        self.close_box = tid("close-patient", self.close_button)
        self.title_text = ft.Text("pocketrec", size=22, weight=ft.FontWeight.BOLD)
        self.person_icon = ft.Icon(ft.Icons.PERSON)
        # the patient and Close patient take what the title leaves, right-aligned; the name
        # shrinks (loose: no wider than it is), the button never
        self.header = ft.Row(
            [
                self.title_text,
                self.bundle_text,
                ft.Container(
                    ft.Row(
                        [
                            self.person_icon,
                            ft.Container(
                                tid("current-patient", self.patient_text),
                                expand=True,
                                expand_loose=True,
                            ),
                            self.close_box,
                        ],
                        alignment=ft.MainAxisAlignment.END,
                        vertical_alignment=ft.CrossAxisAlignment.CENTER,
                    ),
                    expand=True,
                ),
            ],
            vertical_alignment=ft.CrossAxisAlignment.CENTER,
        )
        # the banner about the open visit: a restored draft (with Discard), a visit saved in
        # another tab. Its text wraps; the buttons sit beside it on wide windows and under it,
        # right-aligned, on narrow ones (`_fit`), so both stay on the screen at any width
        self.banner_text = ft.Text("", size=14)
        self.discard_box = tid(
            "draft-discard",
            ft.TextButton("Discard draft", icon=ft.Icons.DELETE_OUTLINE, on_click=self._on_discard),
        )
        self.banner_message = ft.Row(
            [
                ft.Icon(ft.Icons.INFO_OUTLINE, color=ft.Colors.BLUE_800),
                # loose: the text's semantics node is the text's size (an expanded, empty node
                # once kept a changed label out of Flutter web's semantics tree)
                ft.Container(
                    tid("visit-banner-text", self.banner_text), expand=True, expand_loose=True
                ),
            ],
            vertical_alignment=ft.CrossAxisAlignment.CENTER,
        )
        self.banner_buttons = ft.Row(
            [
                self.discard_box,
                tid("banner-dismiss", ft.TextButton("OK", on_click=self._on_dismiss_banner)),
            ],
            spacing=4,
            tight=True,
            alignment=ft.MainAxisAlignment.END,
        )
        self.banner_box = ft.Container()
        self.banner = ft.Container(
            tid("visit-banner", self.banner_box),
            bgcolor=ft.Colors.BLUE_50,
            border=ft.Border.all(1, ft.Colors.BLUE_200),
            border_radius=8,
            padding=ft.Padding.symmetric(horizontal=10, vertical=4),
            visible=False,
        )
        self._banner_dismissed: tuple = ()
        self._ticks = 0
        self.body = ft.Container(expand=True, padding=ft.Padding.only(top=8))
        self.rail_box = ft.Row([self.rail, ft.VerticalDivider(width=1)], spacing=0)

    # -- building

    def mount(self) -> None:
        page = self.page
        page.title = "pocketrec"
        page.theme_mode = ft.ThemeMode.LIGHT
        page.theme = ft.Theme(color_scheme_seed=ft.Colors.BLUE)
        # the shipped Noto fonts, each once text in its script is shown (`need_fonts`)
        self.fonts = FontLoader(page)
        page.padding = 12
        page.on_route_change = self._on_route_change
        page.on_keyboard_event = self._on_key
        page.on_close = self._on_page_close
        page.on_resize = self._on_resize
        if self.state.kiosk.enabled:
            page.window.full_screen = True
        for view in self.views.values():
            _watch_scrolling(view.root, self._on_activity)
        page.add(
            # pointer moves and wheel scrolls anywhere on the page are activity (throttled);
            # no tap recognizer here: taps reach the server through their controls' handlers
            ft.GestureDetector(
                content=ft.Row(
                    [
                        self.rail_box,
                        ft.Column([self.header, self.banner, self.body], expand=True),
                    ],
                    expand=True,
                    vertical_alignment=ft.CrossAxisAlignment.START,
                ),
                expand=True,
                hover_interval=ACTIVITY_INTERVAL_MS,
                on_hover=self._on_activity,
                on_scroll=self._on_activity,
            )
        )
        self._fit(page.width)
        self.show(page.route)
        page.run_task(self._watch)

    def show(self, route: str | None) -> None:
        """Display the view for `route` (unknown routes: the start screen)."""
        route = route if route in self.views else START_ROUTE
        self.route = route
        locked = self.state.kiosk.locked
        self.rail_box.visible = not locked
        self.header.visible = not locked
        self._show_banner()
        if locked:
            self.lock.refresh()
            self.body.content = self.lock.root
        else:
            self.rail.selected_index = [r for r, *_ in NAV].index(route)
            view = self.views[route]
            view.refresh()
            self.body.content = view.root
        self._show_patient()
        self.page.update()

    def _show_patient(self) -> None:
        patient = self.state.medication.patient
        self.patient_text.value = patient["display_name"] if patient else "No patient open"
        if patient:
            self.need_fonts(patient["display_name"], patient.get("religion") or "")
        self.close_box.visible = patient is not None
        self._show_banner()

    def _banner_state(self) -> tuple:
        med = self.state.medication
        if med.patient is None or self.state.kiosk.locked:
            return ()
        return (med.patient["id"], med.draft_restored, len(med.other_saves))

    def _show_banner(self) -> bool:
        """The banner for the open visit; returns whether it changed."""
        med = self.state.medication
        key = self._banner_state()
        lines = []
        if key and key != self._banner_dismissed:
            if med.draft_restored:
                lines.append(
                    f"Draft restored: the unsaved visit as it was at "
                    f"{local_time(med.draft_restored)}. Save it, or discard it."
                )
            for v in med.other_saves:
                shown = ", ".join(med.title(c) for c in v["diagnoses"][:2]) or "no diagnoses"
                lines.append(
                    f"A visit of {v['created']} ({shown}) was saved in another tab; it is now "
                    "in this patient's history and the suggestions are re-scored with it."
                )
        text = "\n".join(lines)
        visible = bool(lines)
        discard = bool(key) and bool(med.draft_restored)
        changed = (
            text != self.banner_text.value
            or visible != self.banner.visible
            or discard != self.discard_box.visible
        )
        self.banner_text.value = text
        self.banner.visible = visible
        self.discard_box.visible = discard
        return changed

    # -- the Shell interface for views

    async def go(self, route: str) -> None:
        if route == self.page.route:
            self.show(route)
        else:
            await self.page.push_route(route)

    def notify(self, message: str, error: bool = False) -> None:
        self.page.show_dialog(
            ft.SnackBar(
                ft.Text(message),
                bgcolor=ft.Colors.RED_800 if error else None,
                duration=ft.Duration(seconds=3),
            )
        )

    def patient_changed(self) -> None:
        self._show_patient()

    def need_fonts(self, *texts: str) -> None:
        """Views call this with text they are about to show (names, titles): the fonts of its
        scripts are registered with the page first (the page update carries them)."""
        self.fonts.need(*texts)

    # -- handlers

    async def _on_rail(self, e: ft.Event[ft.NavigationRail]) -> None:
        self.state.touch()
        index = e.control.selected_index or 0
        await self.go(NAV[index][0])

    def _on_route_change(self, e: ft.RouteChangeEvent) -> None:
        self.state.touch()
        self.show(e.route)

    def _on_key(self, e: ft.KeyboardEvent) -> None:
        # every key press: only the idle clock changes, so skip Flet's automatic whole-page
        # diff after the handler (under 20 kiosk sessions it was half the server's CPU)
        ft.context.disable_auto_update()
        self.state.touch()

    def _on_activity(self, e: ft.Event[ft.Control]) -> None:
        """A tap, a pointer move or a scroll: activity for the idle timeout, nothing else."""
        ft.context.disable_auto_update()
        self.state.touch()

    def _on_resize(self, e: ft.Event[ft.Page]) -> None:
        width = getattr(e, "width", None) or self.page.width
        self._fit(width)
        view = self.views.get(self.route)
        if view is not None and hasattr(view, "on_resize"):
            view.on_resize(width)

    def _fit(self, width: float | None) -> None:
        """Phones: a compact rail (icons only) and no app name or person icon in the header;
        below BUNDLE_NAME_FROM no bundle name, so the patient's name has room (it is cut with
        an ellipsis, never "Close patient"); the banner's buttons under its text below
        BANNER_ONE_ROW."""
        width = width or 0
        narrow = 0 < width < NARROW_WIDTH
        self.rail.label_type = (
            ft.NavigationRailLabelType.NONE if narrow else ft.NavigationRailLabelType.ALL
        )
        self.rail.min_width = 56 if narrow else 88
        self.bundle_text.visible = not width or width >= BUNDLE_NAME_FROM
        self.title_text.visible = not narrow
        self.person_icon.visible = not narrow
        one_row = not width or width >= BANNER_ONE_ROW
        if self.banner_box.content is not None and one_row == self.banner_message.expand:
            return  # the banner's controls move to a new parent only when the layout changes
        self.banner_message.expand = one_row
        self.banner_box.content = (
            ft.Row(
                [self.banner_message, self.banner_buttons],
                vertical_alignment=ft.CrossAxisAlignment.CENTER,
            )
            if one_row
            else ft.Column(
                [self.banner_message, self.banner_buttons],
                spacing=0,
                horizontal_alignment=ft.CrossAxisAlignment.END,
            )
        )

    async def _on_discard(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        med = self.state.medication
        if med.patient is None:
            return
        try:
            await asyncio.to_thread(med.discard_draft)
        except Exception as exc:  # a HistoryError: the draft stays, say why
            self.notify(str(exc), error=True)
            return
        self.notify("Draft discarded")
        self.show(self.route)

    def _on_dismiss_banner(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        self._banner_dismissed = self._banner_state()
        self._show_banner()

    async def _on_close_patient(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        # what was entered stays as the patient's draft
        await asyncio.to_thread(self.state.medication.close_patient)
        self._reset_views()
        await self.go(START_ROUTE)

    async def _unlocked(self) -> None:
        await self.go(START_ROUTE)

    def _on_page_close(self, e: ft.Event[ft.Page]) -> None:
        self.closed = True

    # -- kiosk

    def _reset_views(self) -> None:
        for view in self.views.values():
            view.reset()
        self.lock.reset()

    def _needs_reset(self) -> bool:
        s = self.state
        return (
            s.medication.patient is not None
            or self.route != START_ROUTE
            or bool(self.views[START_ROUTE].search.value)
            or (not s.kiosk.locked and s.kiosk.pins.has_pin())
        )

    async def _watch(self) -> None:
        """Once a second: the open visit's draft written when it changed; every few seconds a
        look for visits of the open patient saved in another tab; in kiosk mode, after the idle
        timeout, back to the start screen with nothing of the last patient left on it (the
        draft kept, and locked again when a PIN is set)."""
        while not self.closed:
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            self._ticks += 1
            try:
                await self._tick()
            except Exception:  # the session is gone (tab closed): stop watching
                if self.closed:
                    return
                with contextlib.suppress(Exception):
                    self.page.update()

    async def _tick(self) -> None:
        med = self.state.medication
        with contextlib.suppress(Exception):  # a full disk: the next tick tries again
            await asyncio.to_thread(med.sync_draft)
        if self._ticks % OTHER_SAVES_EVERY == 0 and med.visit is not None:
            taken = await asyncio.to_thread(med.check_other_saves)
            if taken:
                self.show(self.route)  # the rebuilt visit, re-scored, and the banner
                return
        if self.state.idle_expired():
            if not self._needs_reset():
                self.state.touch()
            else:
                await asyncio.to_thread(self.state.on_idle)
                self._reset_views()
                await self.go(START_ROUTE)
                return
        if self._show_banner():  # e.g. the visit was saved: the draft banner goes
            self.page.update(self.banner)


def _watch_scrolling(control: ft.Control, handler) -> None:
    """Every scrollable column or list under `control` reports its scrolling (touch as well as
    the wheel) to `handler`, throttled, unless it has its own handler."""
    stack = [control]
    seen = set()
    while stack:
        c = stack.pop()
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        if isinstance(c, ft.Column | ft.ListView | ft.Row) and getattr(c, "scroll", None):
            if c.on_scroll is None:
                c.scroll_interval = ACTIVITY_INTERVAL_MS
                c.on_scroll = handler
        for name in ("content", "controls"):
            child = getattr(c, name, None)
            if isinstance(child, ft.Control):
                stack.append(child)
            elif isinstance(child, list):
                stack.extend(x for x in child if isinstance(x, ft.Control))
