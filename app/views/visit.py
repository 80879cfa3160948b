"""The visit: diagnoses and procedures by type-ahead, the model's ranked suggestions with their
probabilities, DDI warnings and "why", the clinician's decisions, a note, Save."""

from __future__ import annotations

import asyncio

import flet as ft

from app.medication.codes import CodeOption
from app.medication.visit import Suggestion, SuggestResult
from app.storage.errors import HistoryError
from app.views.common import (
    DANGER,
    DANGER_BG,
    MUTED,
    OptionList,
    Shell,
    heading,
    ident,
    muted,
    no_patient,
    tid,
)
from contract.bundle import BundleError

KIND_NAMES = {"dx": "Diagnoses", "px": "Procedures"}
DECISION_LOOK = {
    "accepted": ("Accepted", ft.Colors.GREEN_800, ft.Icons.CHECK_CIRCLE),
    "added": ("Added", ft.Colors.GREEN_800, ft.Icons.ADD_CIRCLE),
    "rejected": ("Rejected", ft.Colors.GREY_700, ft.Icons.CANCEL),
}
BAR_WIDTH = 150


class CodePicker:
    """A type-ahead field for one kind of code, its options and the chosen codes as chips."""

    def __init__(self, view: VisitView, kind: str):
        self.view = view
        self.kind = kind
        self.field = ft.TextField(
            label=f"Add {KIND_NAMES[kind].lower()}",
            hint_text="type words of the title, or the code",
            on_change=self._on_change,
            on_submit=self._on_submit,
            dense=True,
        )
        self.options = OptionList(kind, self._pick)
        self.chips = ft.Row(wrap=True, spacing=6, run_spacing=6)
        self.root = ft.Column(
            [
                ft.Text(KIND_NAMES[kind], weight=ft.FontWeight.BOLD),
                tid(ident(kind, "chips"), self.chips),
                tid(ident(kind, "search"), self.field),
                tid(ident(kind, "options"), self.options.column),
            ],
            spacing=6,
        )
        self._found: list[CodeOption] = []

    def clear(self) -> None:
        self.field.value = ""
        self.options.clear()
        self._found = []

    def show_chips(self) -> None:
        visit = self.view.state.medication.visit
        codes = [] if visit is None else visit.codes(self.kind)
        title = self.view.state.medication.title
        self.chips.controls = [
            tid(
                ident(self.kind, "chip", code),
                ft.Chip(
                    label=ft.Text(f"{code} — {title(code)}", size=13),
                    on_delete=self._remover(code),
                    delete_icon_tooltip="Remove",
                ),
            )
            for code in codes
        ] or [muted("none yet")]

    def _on_change(self, e: ft.Event[ft.TextField]) -> None:
        self.view.state.touch()
        self._found = self.view.state.medication.search_codes(self.field.value or "", self.kind)
        self.options.show(self._found)

    async def _on_submit(self, e: ft.Event[ft.TextField]) -> None:
        if self._found:
            await self._pick(self._found[0])

    async def _pick(self, option: CodeOption) -> None:
        self.view.state.touch()
        visit = self.view.state.medication.visit
        if visit is None:
            return
        visit.add_code(self.kind, option.code)
        self.clear()
        self.show_chips()
        self.view.show_stale()
        await self.field.focus()

    def _remover(self, code: str):
        def remove(e: ft.Event[ft.Chip]) -> None:
            self.view.state.touch()
            visit = self.view.state.medication.visit
            if visit is not None:
                visit.remove_code(self.kind, code)
            self.show_chips()
            self.view.show_stale()

        return remove


class SuggestionRow:
    """One ranked drug class: name, probability bar, decision buttons and the "why" expander."""

    def __init__(self, view: VisitView, rank: int, s: Suggestion):
        self.view = view
        self.code = s.code
        self.status = ft.Text("", size=13, weight=ft.FontWeight.BOLD, width=72)
        self.why = ft.ExpansionTile(
            title=ft.Text("Why?", size=13),
            subtitle=ft.Text("score drop when each input is left out", size=11, color=MUTED),
            controls=[muted("Open to compute.")],
            dense=True,
            on_change=self._on_why,
            tile_padding=ft.Padding.symmetric(horizontal=8),
        )
        self._basis_loaded = False
        bar_color = ft.Colors.BLUE_700 if s.suggested else ft.Colors.BLUE_GREY_300
        self.root = tid(
            ident("suggestion", s.code),
            ft.Container(
                ft.Column(
                    [
                        ft.Row(
                            [
                                ft.Text(f"{rank}.", width=26, color=MUTED),
                                ft.Column(
                                    [
                                        ft.Text(s.name, weight=ft.FontWeight.W_500, size=14),
                                        ft.Text(
                                            s.code
                                            + (
                                                "  ·  suggested"
                                                if s.suggested
                                                else "  ·  below threshold"
                                            ),
                                            size=12,
                                            color=MUTED,
                                        ),
                                    ],
                                    spacing=0,
                                    expand=True,
                                ),
                                tid(
                                    ident("probability", s.code),
                                    ft.Column(
                                        [
                                            ft.ProgressBar(
                                                value=s.probability,
                                                width=BAR_WIDTH,
                                                bar_height=8,
                                                color=bar_color,
                                                bgcolor=ft.Colors.BLUE_GREY_50,
                                                border_radius=4,
                                            ),
                                            ft.Text(f"{s.probability:.0%}", size=12),
                                        ],
                                        spacing=2,
                                        horizontal_alignment=ft.CrossAxisAlignment.END,
                                    ),
                                ),
                                tid(ident("status", s.code), self.status),
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
                            ],
                            vertical_alignment=ft.CrossAxisAlignment.CENTER,
                        ),
                        tid(ident("why", s.code), self.why),
                    ],
                    spacing=0,
                ),
                padding=ft.Padding.symmetric(horizontal=8, vertical=4),
                border=ft.Border.all(1, ft.Colors.BLUE_GREY_100),
                border_radius=8,
            ),
        )
        self.show_decision(s.decision)

    def show_decision(self, decision: str | None) -> None:
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

    async def _on_why(self, e: ft.Event[ft.ExpansionTile]) -> None:
        self.view.state.touch()
        visit = self.view.state.medication.visit
        if visit is None or self._basis_loaded or not _is_true(e.data):
            return
        self.why.controls = [ft.ProgressRing(width=18, height=18)]
        self.view.page.update()
        try:
            items = await asyncio.to_thread(visit.basis, self.code)
        except (ValueError, BundleError) as exc:
            self.why.controls = [ft.Text(str(exc), color=DANGER)]
        else:
            self._basis_loaded = True
            self.why.controls = [
                tid(
                    ident("basis", self.code, i),
                    ft.Row(
                        [
                            ft.Text(
                                f"{item.drop:+.1%}",
                                width=64,
                                color=ft.Colors.GREEN_800 if item.drop > 0 else MUTED,
                                weight=ft.FontWeight.BOLD,
                            ),
                            ft.Text(f"{item.kind}: {item.label}", size=13, expand=True),
                        ],
                    ),
                )
                for i, item in enumerate(items)
            ] or [muted("No inputs to leave out.")]
        # a handler that called update() itself gets no automatic update at its end
        self.view.page.update()


def _is_true(data: object) -> bool:
    return data is True or str(data).lower() == "true"


class VisitView:
    route = "/visit"
    title = "Visit"

    def __init__(self, shell: Shell):
        self.shell = shell
        self.state = shell.state
        self.page = shell.page
        self.patient_line = ft.Text("", size=14, color=MUTED)
        self.pickers = {kind: CodePicker(self, kind) for kind in ("dx", "px")}
        self.note = ft.TextField(
            label="Note", multiline=True, min_lines=2, max_lines=5, on_change=self._on_note
        )
        self.status = ft.Text("", size=13)
        self.busy = ft.ProgressRing(width=20, height=20, visible=False)
        self.warnings = ft.Column(spacing=6)
        self.unknown = ft.Text("", size=12, color=MUTED)
        self.suggestion_list = ft.Column(spacing=6)
        self.decisions = ft.Text("", size=13)
        self.drug_field = ft.TextField(
            label="Add a drug class",
            hint_text="ATC code or words of its name",
            on_change=self._on_drug_search,
            dense=True,
        )
        self.drug_options = OptionList("drug", self._pick_drug)
        self.rows: dict[str, SuggestionRow] = {}
        left = ft.Column(
            [
                heading("Visit"),
                tid("visit-patient", self.patient_line),
                self.pickers["dx"].root,
                self.pickers["px"].root,
                tid("visit-note", self.note),
                ft.Row(
                    [
                        tid(
                            "visit-suggest",
                            ft.FilledButton(
                                "Suggest", icon=ft.Icons.AUTO_AWESOME, on_click=self._on_suggest
                            ),
                        ),
                        tid(
                            "visit-save",
                            ft.OutlinedButton(
                                "Save visit", icon=ft.Icons.SAVE, on_click=self._on_save
                            ),
                        ),
                        self.busy,
                    ],
                    spacing=12,
                ),
                tid("visit-status", self.status),
            ],
            spacing=12,
            width=440,
            scroll=ft.ScrollMode.AUTO,
        )
        self.right = right = ft.Column(
            [
                heading("Suggestions", 18),
                tid("ddi-warnings", self.warnings),
                tid("unknown-codes", self.unknown),
                tid("suggestions", self.suggestion_list),
                ft.Divider(),
                ft.Text("Add a drug class the model did not suggest", weight=ft.FontWeight.BOLD),
                tid("drug-search", self.drug_field),
                tid("drug-options", self.drug_options.column),
                tid("visit-decisions", self.decisions),
            ],
            spacing=10,
            expand=True,
            scroll=ft.ScrollMode.AUTO,
        )
        self.body = ft.Row(
            [left, ft.VerticalDivider(width=1), right],
            expand=True,
            vertical_alignment=ft.CrossAxisAlignment.START,
            spacing=16,
        )
        self.root = ft.Container(content=self.body, expand=True)
        self._shown_visit = None

    # -- showing

    def refresh(self) -> None:
        visit = self.state.medication.visit
        if visit is None:
            self.root.content = no_patient()
            self._shown_visit = None
            return
        self.root.content = self.body
        if visit is not self._shown_visit:  # a new visit: start from a clean form
            self._shown_visit = visit
            for picker in self.pickers.values():
                picker.clear()
            self.note.value = visit.note
            self.status.value = ""
            self.drug_field.value = ""
            self.drug_options.clear()
            self._show_result(visit.result(), rebuild=True)
        for picker in self.pickers.values():
            picker.show_chips()
        p = visit.patient
        profile = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in visit.profile.items())
        past = len(visit.past)
        self.patient_line.value = (
            f"{p['display_name']} · {profile or 'no profile'} · "
            f"{past} earlier visit{'s' if past != 1 else ''}"
        )

    def reset(self) -> None:
        self._shown_visit = None
        self.rows = {}
        self.suggestion_list.controls = []
        self.warnings.controls = []

    def show_stale(self) -> None:
        visit = self.state.medication.visit
        if visit is not None and visit.stale:
            self.status.value = "The codes changed: press Suggest again."
            self.status.color = MUTED

    def _show_result(self, result: SuggestResult, rebuild: bool) -> None:
        if rebuild:
            self.rows = {}
            controls: list[ft.Control] = []
            for rank, s in enumerate(result.suggestions, start=1):
                row = SuggestionRow(self, rank, s)
                self.rows[s.code] = row
                controls.append(row.root)
            self.suggestion_list.controls = controls or [
                muted("Enter diagnoses and procedures, then press Suggest.")
            ]
            self.unknown.value = (
                "Codes the model does not know (ignored): " + ", ".join(result.unknown_codes)
                if result.unknown_codes
                else ""
            )
        else:
            for s in result.suggestions:
                if s.code in self.rows:
                    self.rows[s.code].show_decision(s.decision)
        self.warnings.controls = [
            tid(
                ident("ddi-warning", w.a, w.b),
                ft.Container(
                    ft.Row(
                        [
                            ft.Icon(ft.Icons.WARNING_AMBER_ROUNDED, color=DANGER),
                            ft.Text(
                                w.message,
                                color=DANGER,
                                weight=ft.FontWeight.BOLD,
                                size=14,
                                expand=True,
                            ),
                        ],
                    ),
                    bgcolor=DANGER_BG,
                    border=ft.Border.all(2, DANGER),
                    border_radius=8,
                    padding=10,
                ),
            )
            for w in result.warnings
        ]
        self._show_decisions()

    def _show_decisions(self) -> None:
        visit = self.state.medication.visit
        if visit is None or not visit.decisions:
            self.decisions.value = ""
            return
        name = self.state.medication.bundle.label_name
        parts = []
        for decision in ("accepted", "added", "rejected"):
            codes = [c for c, d in visit.decisions.items() if d == decision]
            if codes:
                listed = ", ".join(f"{c} {name(c)}" for c in codes)
                parts.append(f"{DECISION_LOOK[decision][0]}: {listed}")
        self.decisions.value = "\n".join(parts)

    # -- handlers

    def decide(self, action: str, code: str) -> None:
        self.state.touch()
        visit = self.state.medication.visit
        if visit is None:
            return
        getattr(visit, action)(code)
        self._show_result(visit.result(), rebuild=False)

    def _on_note(self, e: ft.Event[ft.TextField]) -> None:
        self.state.touch()
        if self.state.medication.visit is not None:
            self.state.medication.visit.note = self.note.value or ""

    def _on_drug_search(self, e: ft.Event[ft.TextField]) -> None:
        self.state.touch()
        self.drug_options.show(self.state.medication.search_drugs(self.drug_field.value or ""))

    def _pick_drug(self, option: CodeOption) -> None:
        self.drug_field.value = ""
        self.drug_options.clear()
        self.decide("add", option.code)

    async def _on_suggest(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        visit = self.state.medication.visit
        if visit is None:
            return
        self._working(True, "Scoring…")
        try:
            result = await asyncio.to_thread(visit.suggest)
        except (ValueError, BundleError) as exc:
            self._working(False, str(exc), error=True)
            return
        self._show_result(result, rebuild=True)
        n = sum(1 for s in result.suggestions if s.suggested)
        self.busy.visible = False
        self.status.value = (
            f"{n} drug class{'es' if n != 1 else ''} at or above the threshold "
            f"{result.threshold:.2f} ({result.backend})."
        )
        self.status.color = None
        # a suggestion changes the right-hand column and the status only
        self.page.update(self.right, self.busy, self.status)

    async def _on_save(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        visit = self.state.medication.visit
        if visit is None:
            return
        visit.note = self.note.value or ""
        self._working(True, "Saving…")
        try:
            visit_id = await asyncio.to_thread(visit.save)
            await asyncio.to_thread(self.state.medication.new_visit)
        except (ValueError, HistoryError) as exc:
            self._working(False, str(exc), error=True)
            return
        self.refresh()
        self._working(False, f"Saved visit {visit_id[:8]}.")
        self.shell.notify("Visit saved")

    def _working(self, busy: bool, message: str, error: bool = False) -> None:
        """Show progress. Flet 1.0 skips its automatic update after a handler that called
        update() itself, so both the start and the end of long work update explicitly. The
        start changes only the ring and the status line: patching just those two spares the
        server a diff of the whole page (the visit view is the largest) before the work."""
        self.busy.visible = busy
        self.status.value = message
        self.status.color = DANGER if error else None
        if busy:
            self.page.update(self.busy, self.status)
        else:
            self.page.update()
