"""Timeline: the open patient's saved visits, newest first, with titles and decisions."""

from __future__ import annotations

import asyncio

import flet as ft

from app.medication.codes import CodeOption
from app.medication.state import TimelineEntry
from app.storage.errors import HistoryError
from app.views.common import MUTED, Shell, heading, ident, muted, no_patient, tid


class TimelineView:
    route = "/timeline"
    title = "Timeline"

    def __init__(self, shell: Shell):
        self.shell = shell
        self.state = shell.state
        self.title_text = heading("Timeline")
        self.entries = ft.Column(spacing=10)
        self.root = ft.Column(
            [self.title_text, tid("timeline", self.entries)],
            spacing=12,
            scroll=ft.ScrollMode.AUTO,
            expand=True,
        )

    def refresh(self) -> None:
        """Shown: load the visits in the background (the database may be slow on a device)."""
        if self.state.medication.patient is None:
            self.title_text.value = "Timeline"
            self.entries.controls = [no_patient()]
            return
        self.title_text.value = f"Timeline · {self.state.medication.patient['display_name']}"
        self.entries.controls = [ft.ProgressRing(width=24, height=24)]
        self.shell.page.run_task(self._load)

    def reset(self) -> None:
        self.entries.controls = []

    async def _load(self) -> None:
        try:
            entries = await asyncio.to_thread(self.state.medication.timeline)
        except HistoryError as exc:
            self.entries.controls = [ft.Text(str(exc), color=ft.Colors.RED_800)]
        else:
            self.entries.controls = [_card(i, entry) for i, entry in enumerate(entries)] or [
                muted("No saved visits yet.", "timeline-empty")
            ]
        self.shell.page.update()


def _codes(options: list[CodeOption]) -> str:
    return "; ".join(o.label for o in options) or "none"


def _card(i: int, entry: TimelineEntry) -> ft.Control:
    lines: list[ft.Control] = [
        ft.Text(entry.created, weight=ft.FontWeight.BOLD, size=15),
        ft.Text(f"Diagnoses: {_codes(entry.diagnoses)}", size=13),
        ft.Text(f"Procedures: {_codes(entry.procedures)}", size=13),
        ft.Text(f"Accepted drugs: {_codes(entry.accepted)}", size=13, color=ft.Colors.GREEN_900),
    ]
    if entry.added:
        lines.append(ft.Text(f"Added drugs: {_codes(entry.added)}", size=13))
    if entry.rejected:
        lines.append(ft.Text(f"Rejected: {_codes(entry.rejected)}", size=13, color=MUTED))
    if entry.note:
        lines.append(ft.Text(f"Note: {entry.note}", size=13, italic=True))
    if entry.bundle_name:
        lines.append(ft.Text(f"Model: {entry.bundle_name}", size=11, color=MUTED))
    return tid(
        ident("timeline-visit", i),
        ft.Container(
            ft.Column(lines, spacing=4),
            padding=12,
            border=ft.Border.all(1, ft.Colors.BLUE_GREY_100),
            border_radius=8,
        ),
    )
