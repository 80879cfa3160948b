"""One ranked suggestion of the visit screen (`SuggestionRow`: the name with its bar, then
the decision buttons, so that no width squeezes a drug name into a column of letters or the
bar into a sliver, and its "why") and one DDI warning (`ddi_row`)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import flet as ft

from app.medication.visit import DdiWarning, Suggestion
from app.views.common import DANGER, DANGER_BG, MUTED, ident, muted, tid
from contract.bundle import BundleError


class RowHost(Protocol):
    """What a row asks of the visit view around it (app.views.visit.VisitView)."""

    state: Any
    page: ft.Page

    def decide(self, action: str, code: str) -> None: ...


__all__ = ["DDI_LOOK", "DECISION_LOOK", "SuggestionRow", "ddi_row"]

DECISION_LOOK = {
    "accepted": ("Accepted", ft.Colors.GREEN_800, ft.Icons.CHECK_CIRCLE),
    "added": ("Added", ft.Colors.GREEN_800, ft.Icons.ADD_CIRCLE),
    "rejected": ("Rejected", ft.Colors.GREY_700, ft.Icons.CANCEL),
}
DDI_LOOK = {  # level -> (text colour, background, border, icon)
    "accepted": (DANGER, DANGER_BG, DANGER, ft.Icons.WARNING_AMBER_ROUNDED),
    "with_accepted": (
        ft.Colors.ORANGE_900,
        ft.Colors.ORANGE_50,
        ft.Colors.ORANGE_300,
        ft.Icons.WARNING_AMBER_ROUNDED,
    ),
    "suggested": (
        ft.Colors.BLUE_GREY_800,
        ft.Colors.BLUE_GREY_50,
        ft.Colors.BLUE_GREY_200,
        ft.Icons.INFO_OUTLINE,
    ),
}


class SuggestionRow:
    """One ranked drug class in two parts: rank, name, code, the probability bar under them
    and the score; the decision and its buttons (accept, reject, undo, why); then the "why"
    expander."""

    def __init__(self, view: RowHost, rank: int, s: Suggestion):
        self.view = view
        self.code = s.code
        self.status = ft.Text("", size=13, weight=ft.FontWeight.BOLD)
        self.undo = tid(
            ident("undo", s.code),
            ft.IconButton(ft.Icons.UNDO, tooltip="Undo the decision", on_click=self._on_undo),
        )
        self.why = ft.Column(spacing=4, visible=False)  # filled on the first "Why?" tap
        self._basis_loaded = False
        self.rank = ft.Text("", width=28, color=MUTED)
        self.where = ft.Text("", size=12, color=MUTED)
        self.percent = ft.Text("", size=14, weight=ft.FontWeight.BOLD)
        self.bar = ft.ProgressBar(bar_height=8, bgcolor=ft.Colors.BLUE_GREY_50, border_radius=4)
        self.root = tid(
            ident("suggestion", s.code),
            ft.Container(
                ft.Column(
                    [
                        ft.Row(
                            [
                                self.rank,
                                # the bar under the name, as wide as the name's column at any
                                # width (beside the buttons a phone squeezed it to a sliver)
                                ft.Column(
                                    [
                                        tid(
                                            ident("name", s.code),
                                            ft.Text(s.name, weight=ft.FontWeight.W_500, size=14),
                                        ),
                                        self.where,
                                        ft.Container(self.bar, padding=ft.Padding.only(top=4)),
                                    ],
                                    spacing=0,
                                    expand=True,
                                ),
                                tid(ident("probability", s.code), self.percent),
                            ],
                            vertical_alignment=ft.CrossAxisAlignment.START,
                        ),
                        ft.Row(
                            [
                                ft.Container(width=28),
                                # the status at its own size, then a spacer: an expanded
                                # status node kept "Accepted" out of Flutter web's semantics
                                tid(ident("status", s.code), self.status),
                                ft.Container(expand=True),
                                tid(
                                    ident("accept", s.code),
                                    ft.IconButton(
                                        ft.Icons.CHECK,
                                        tooltip="Accept",
                                        icon_color=ft.Colors.GREEN_800,
                                        on_click=self._on_accept,
                                    ),
                                ),
                                tid(
                                    ident("reject", s.code),
                                    ft.IconButton(
                                        ft.Icons.CLOSE,
                                        tooltip="Reject",
                                        icon_color=ft.Colors.GREY_800,
                                        on_click=self._on_reject,
                                    ),
                                ),
                                self.undo,
                                tid(
                                    ident("why", s.code),
                                    ft.IconButton(
                                        ft.Icons.HELP_OUTLINE,
                                        tooltip="Why? The base rate and what each input does",
                                        on_click=self._on_why,
                                    ),
                                ),
                            ],
                            spacing=0,
                            vertical_alignment=ft.CrossAxisAlignment.CENTER,
                        ),
                        ft.Container(self.why, padding=ft.Padding.only(left=28, bottom=4)),
                    ],
                    spacing=0,
                ),
                padding=ft.Padding.symmetric(horizontal=8, vertical=4),
                border=ft.Border.all(1, ft.Colors.BLUE_GREY_100),
                border_radius=8,
            ),
        )
        self.show(rank, s)

    def show(self, rank: int, s: Suggestion) -> None:
        """This row for `s` at `rank` (the same controls across re-scores: only what changed
        goes to the page); a "why" computed for earlier inputs is dropped."""
        self.rank.value = f"{rank}."
        self.where.value = f"{s.code}  ·  {'suggested' if s.suggested else 'below the threshold'}"
        self.percent.value = f"{s.probability:.0%}"
        self.bar.value = s.probability
        self.bar.color = ft.Colors.BLUE_700 if s.suggested else ft.Colors.BLUE_GREY_300
        if self._basis_loaded:
            self._basis_loaded = False
            self.why.visible = False
            self.why.controls = []
        self.show_decision(s.decision)

    def show_decision(self, decision: str | None) -> None:
        self.undo.visible = decision is not None
        if decision is None:
            self.status.value = ""
            return
        text, color, _ = DECISION_LOOK[decision]
        self.status.value = text
        self.status.color = color

    def _on_accept(self, e: ft.Event[ft.IconButton]) -> None:
        self.view.decide("accept", self.code)

    def _on_reject(self, e: ft.Event[ft.IconButton]) -> None:
        self.view.decide("reject", self.code)

    def _on_undo(self, e: ft.Event[ft.IconButton]) -> None:
        self.view.decide("undo", self.code)

    async def _on_why(self, e: ft.Event[ft.IconButton]) -> None:
        self.view.state.touch()
        visit = self.view.state.medication.visit
        if visit is None:
            return
        self.why.visible = not self.why.visible
        if self._basis_loaded or not self.why.visible:
            return
        self.why.controls = [ft.ProgressRing(width=18, height=18)]
        self.view.page.update()
        try:
            why = await asyncio.to_thread(visit.explain, self.code)
        except (ValueError, BundleError) as exc:
            self.why.controls = [ft.Text(str(exc), color=DANGER)]
        else:
            self._basis_loaded = True
            self.why.controls = [
                tid(ident("base-rate", self.code), ft.Text(why.headline(), size=13)),
                muted("Each input, left out alone:"),
            ] + [
                tid(
                    ident("basis", self.code, i),
                    ft.Column(
                        [
                            ft.Text(f"{item.kind}: {item.label}", size=13),
                            ft.Text(
                                item.effect(),
                                size=12,
                                color=ft.Colors.GREEN_800 if item.drop > 0 else MUTED,
                            ),
                        ],
                        spacing=0,
                    ),
                )
                for i, item in enumerate(why.items)
            ]
        # a handler that called update() itself gets no automatic update at its end
        self.view.page.update()


def ddi_row(w: DdiWarning) -> ft.Control:
    color, bg, border, icon = DDI_LOOK[w.level]
    return tid(
        ident("ddi-warning", w.a, w.b),
        ft.Container(
            ft.Row(
                [
                    ft.Icon(icon, color=color, size=18),
                    ft.Text(w.message, color=color, size=13, expand=True),
                ],
            ),
            bgcolor=bg,
            border=ft.Border.all(1, border),
            border_radius=6,
            padding=ft.Padding.symmetric(horizontal=8, vertical=4),
        ),
    )
