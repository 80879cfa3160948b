"""The app's shell around the views: a navigation rail, the header, routes, notifications, and
the kiosk's idle watch and lock screen. One `PocketrecApp` per page (browser tab or window);
all logic lives in `app.state.AppState` and the domains' states, the views in `app.views`.
"""

from __future__ import annotations

import asyncio

import flet as ft

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
IDLE_CHECK_SECONDS = 1.0
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
        self.patient_text = ft.Text("No patient open", size=14)
        self.close_button = ft.TextButton(
            "Close patient", icon=ft.Icons.CLOSE, on_click=self._on_close_patient
        )
        # hide the Semantics wrapper, not its content: Flet 1.0 shows an error box for a
        # Semantics whose content is invisible
        self.close_box = tid("close-patient", self.close_button)
        self.header = ft.Row(
            [
                ft.Text("pocketrec", size=22, weight=ft.FontWeight.BOLD),
                ft.Text(f"· {state.medication.bundle.name}", size=14, color=ft.Colors.GREY_700),
                ft.Container(expand=True),
                ft.Icon(ft.Icons.PERSON),
                tid("current-patient", self.patient_text),
                self.close_box,
            ],
            vertical_alignment=ft.CrossAxisAlignment.CENTER,
        )
        self.body = ft.Container(expand=True, padding=ft.Padding.only(top=8))
        self.rail_box = ft.Row([self.rail, ft.VerticalDivider(width=1)], spacing=0)

    # -- building

    def mount(self) -> None:
        page = self.page
        page.title = "pocketrec"
        page.theme_mode = ft.ThemeMode.LIGHT
        page.theme = ft.Theme(color_scheme_seed=ft.Colors.BLUE)
        page.padding = 12
        page.on_route_change = self._on_route_change
        page.on_keyboard_event = self._on_key
        page.on_close = self._on_page_close
        if self.state.kiosk.enabled:
            page.window.full_screen = True
        page.add(
            ft.Row(
                [self.rail_box, ft.Column([self.header, self.body], expand=True)],
                expand=True,
                vertical_alignment=ft.CrossAxisAlignment.START,
            )
        )
        self.show(page.route)
        if self.state.kiosk.enabled:
            page.run_task(self._watch_idle)

    def show(self, route: str | None) -> None:
        """Display the view for `route` (unknown routes: the start screen)."""
        route = route if route in self.views else START_ROUTE
        self.route = route
        locked = self.state.kiosk.locked
        self.rail_box.visible = not locked
        self.header.visible = not locked
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
        self.close_box.visible = patient is not None

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

    async def _on_close_patient(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        self.state.medication.close_patient()
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

    async def _watch_idle(self) -> None:
        """Kiosk: after the idle timeout, back to the start screen with nothing of the last
        patient left on it (and locked again when a PIN is set)."""
        while not self.closed:
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            if not self.state.idle_expired():
                continue
            if not self._needs_reset():
                self.state.touch()
                continue
            self.state.on_idle()
            self._reset_views()
            try:
                await self.go(START_ROUTE)
            except Exception:  # the session is gone (tab closed): stop watching
                return
