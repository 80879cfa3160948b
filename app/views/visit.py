"""The visit: diagnoses and procedures by type-ahead, the model's ranked suggestions (re-scored
on every change of the codes) with their probabilities, grouped DDI warnings and "why", the
clinician's decisions (each undoable), a note, Save.

The layout is a `ResponsiveRow`: codes beside the suggestions from the "lg" breakpoint (992 px)
up, one column below it; a suggestion is two lines (name and score, then the bar and the
decision buttons) so that no width squeezes a drug name into a column of letters."""

from __future__ import annotations

import asyncio

import flet as ft

from app.medication.codes import CodeOption
from app.medication.visit import DDI_LEVELS, DDI_SOURCE, NOTICE, SuggestResult, unknown_text
from app.storage.errors import HistoryError
from app.views.common import (
    DANGER,
    MUTED,
    SEARCH_LIMIT,
    OptionList,
    Shell,
    heading,
    ident,
    muted,
    no_patient,
    tid,
)
from app.views.suggestions import DDI_LOOK, DECISION_LOOK, SuggestionRow, ddi_row
from contract.bundle import BundleError

KIND_NAMES = {"dx": "Diagnoses", "px": "Procedures"}
WIDE = {"xs": 12, "lg": 5}  # the codes column
NARROW = {"xs": 12, "lg": 7}  # the suggestions column
CHIP_LINES = 3  # a chip's label wraps up to here, then is cut (its tooltip has it all)


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
                self.options.more_box,
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
                chip(f"{code} — {title(code)}", on_delete=self._remover(code), delete="Remove"),
            )
            for code in codes
        ] or [muted("none yet")]

    def _on_change(self, e: ft.Event[ft.TextField]) -> None:
        self.view.state.touch()
        medication = self.view.state.medication
        query = self.field.value or ""
        self._found = medication.search_codes(query, self.kind, limit=SEARCH_LIMIT)
        self.options.show(self._found, _no_match(medication, query, self.kind))

    async def _on_submit(self, e: ft.Event[ft.TextField]) -> None:
        if self._found:
            await self._pick(self._found[0])

    async def _pick(self, option: CodeOption) -> None:
        self.view.state.touch()
        visit = self.view.state.medication.visit
        if visit is None:
            return
        self.clear()
        # no focus() back into the field: arriving with (or after) the re-scored list it
        # re-attached the field's text input while the next code was typed, and dropped keys
        self.view.scored(lambda: visit.add_code(self.kind, option.code))
        self.show_chips()
        self.view.page.update()

    def _remover(self, code: str):
        def remove(e: ft.Event[ft.IconButton]) -> None:
            self.view.state.touch()
            visit = self.view.state.medication.visit
            if visit is not None:
                self.view.scored(lambda: visit.remove_code(self.kind, code))
            self.show_chips()

        return remove


def chip(text: str, on_delete, delete: str, leading: ft.Control | None = None) -> ft.Control:
    """A code or decision as a chip: its text wraps onto up to CHIP_LINES lines (then an
    ellipsis), the whole text in its tooltip (hover, or a long press on a touch screen), and a
    delete button (`delete`: its tooltip). Built of a Row, not `ft.Chip`: Flutter's chip
    measures a label's height at the width before its icons, so a label that wraps lost its
    last line without an ellipsis."""
    return ft.Container(
        ft.Row(
            [
                *([leading] if leading else []),
                ft.Container(
                    ft.Text(text, size=13, max_lines=CHIP_LINES, overflow=ft.TextOverflow.ELLIPSIS),
                    expand=True,
                    expand_loose=True,  # as wide as the text, at most what the row leaves
                ),
                ft.IconButton(
                    ft.Icons.CLOSE,
                    icon_size=18,
                    tooltip=delete,
                    on_click=on_delete,
                    visual_density=ft.VisualDensity.COMPACT,
                ),
            ],
            tight=True,
            spacing=4,
            vertical_alignment=ft.CrossAxisAlignment.CENTER,
        ),
        tooltip=text,
        border=ft.Border.all(1, ft.Colors.OUTLINE_VARIANT),
        border_radius=8,
        padding=ft.Padding.only(left=12 if leading is None else 8, right=2, top=3, bottom=3),
    )


def _no_match(medication, query: str, kind: str) -> str | None:
    """The "no match" line for a search of non-empty text (None for empty text)."""
    if not query.strip():
        return None
    explain = getattr(medication, "no_match_text", None)
    return explain(query, kind) if explain else f"No match for {query.strip()!r}."


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
        self.show_all = ft.TextButton("", on_click=self._on_show_all, icon=ft.Icons.UNFOLD_MORE)
        self.show_all_box = tid("suggestions-show-all", self.show_all)
        self.warnings = ft.Column(spacing=4)
        self.unknown = ft.Text("", size=12, color=MUTED)
        self.unknown_box = tid("unknown-codes", self.unknown)  # hidden while there are none
        self.suggestion_list = ft.Column(spacing=6)
        self.decisions = ft.Row(wrap=True, spacing=6, run_spacing=6)
        self.drug_field = ft.TextField(
            label="Add a drug class",
            hint_text="ATC code or words of its name",
            on_change=self._on_drug_search,
            dense=True,
        )
        self.drug_options = OptionList("drug", self._pick_drug)
        self.rows: dict[str, SuggestionRow] = {}
        notice = tid(
            "visit-notice",
            ft.Container(
                ft.Row(
                    [
                        ft.Icon(ft.Icons.INFO_OUTLINE, color=MUTED, size=16),
                        ft.Text(NOTICE, size=12, color=MUTED, expand=True),
                    ],
                ),
                padding=ft.Padding.symmetric(horizontal=8, vertical=4),
                bgcolor=ft.Colors.BLUE_GREY_50,
                border_radius=6,
            ),
        )
        left = ft.Column(
            [
                heading("Visit"),
                tid("visit-patient", self.patient_line),
                self.pickers["dx"].root,
                self.pickers["px"].root,
            ],
            spacing=12,
            col=WIDE,
        )
        right = ft.Column(
            [
                ft.Row(
                    [
                        heading("Suggestions", 18),
                        tid(
                            "visit-suggest",
                            ft.IconButton(
                                ft.Icons.REFRESH,
                                tooltip="The list re-scores by itself on every change of the "
                                "codes; this runs the model once more",
                                on_click=self._on_suggest,
                            ),
                        ),
                        self.busy,
                    ],
                    spacing=4,
                ),
                ft.Row(
                    [tid("visit-status", self.status), self.show_all_box],
                    wrap=True,
                    spacing=8,
                    vertical_alignment=ft.CrossAxisAlignment.CENTER,
                ),
                tid("ddi-warnings", self.warnings),
                self.unknown_box,
                tid("suggestions", self.suggestion_list),
                ft.Divider(),
                ft.Text("Add a drug class the model did not suggest", weight=ft.FontWeight.BOLD),
                tid("drug-search", self.drug_field),
                tid("drug-options", self.drug_options.column),
                self.drug_options.more_box,
                ft.Text("Decisions", weight=ft.FontWeight.BOLD),
                tid("visit-decisions", self.decisions),
                tid("visit-note", self.note),
                tid(
                    "visit-save",
                    ft.FilledButton("Save visit", icon=ft.Icons.SAVE, on_click=self._on_save),
                ),
            ],
            spacing=10,
            col=NARROW,
        )
        self.right = right
        self.body = ft.Column(
            [notice, ft.ResponsiveRow([left, right], spacing=24, run_spacing=16)],
            expand=True,
            spacing=10,
            scroll=ft.ScrollMode.AUTO,
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
        if visit is not self._shown_visit or visit.stale:
            if visit is not self._shown_visit:  # a new visit: start from a clean form
                self._shown_visit = visit
                for picker in self.pickers.values():
                    picker.clear()
                self.note.value = visit.note
                self.drug_field.value = ""
                self.drug_options.clear()
            self._show_result(visit.rescore() if visit.stale else visit.result(), rebuild=True)
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

    def scored(self, change) -> None:
        """Apply `change` (a VisitState call that re-scores) and show the new list; errors
        go to the status line."""
        try:
            change()
        except (ValueError, BundleError) as exc:
            self._message(str(exc), error=True)
            return
        visit = self.state.medication.visit
        if visit is not None:
            self._show_result(visit.result(), rebuild=True)

    def _message(self, text: str, error: bool = False) -> None:
        self.status.value = text
        self.status.color = DANGER if error else None

    def _show_result(self, result: SuggestResult, rebuild: bool) -> None:
        if rebuild:
            rows: dict[str, SuggestionRow] = {}
            for rank, s in enumerate(result.suggestions, start=1):
                row = self.rows.get(s.code)
                if row is None:
                    row = SuggestionRow(self, rank, s)
                else:
                    row.show(rank, s)
                rows[s.code] = row
            self.rows = rows
            controls: list[ft.Control] = [row.root for row in rows.values()]
            empty = (
                "The model knows none of the entered codes, nor their ICD categories: it has "
                "nothing to suggest from. The visit can still be saved."
                if not result.visit_read
                else "Enter a diagnosis or procedure: the suggestions appear as you add them."
            )
            self.suggestion_list.controls = controls or [muted(empty)]
            self.unknown.value = unknown_text(result.unknown_codes, result.via_category)
            self.unknown_box.visible = bool(result.unknown_codes)
            if not result.visit_read:
                self._message("No suggestions: the model knows none of the entered codes.", True)
            else:
                self._message(result.summary() if result.suggestions else "")
        else:
            for s in result.suggestions:
                if s.code in self.rows:
                    self.rows[s.code].show_decision(s.decision)
        visit = self.state.medication.visit
        shown_all = visit is not None and visit.show_all
        self.show_all_box.visible = bool(result.hidden) or (shown_all and result.n_suggested > 0)
        if result.hidden:
            self.show_all.content = (
                f"Show all {result.n_suggested} at or above the threshold ({result.hidden} more)"
            )
        else:
            self.show_all.content = f"Show the first {visit.top_k if visit else 10} only"
        self._show_warnings(result)
        self._show_decisions()

    def _show_warnings(self, result: SuggestResult) -> None:
        groups = result.warnings_by_level()
        if not groups:
            self.warnings.controls = []
            return
        controls: list[ft.Control] = [
            tid(
                "ddi-source",
                ft.Text(f"Drug-drug interactions: {DDI_SOURCE}.", size=11, color=MUTED),
            )
        ]
        for level, warnings in groups:
            color = DDI_LOOK[level][0]
            n = len(warnings)
            controls.append(
                tid(
                    ident("ddi-group", level),
                    ft.ExpansionTile(
                        title=ft.Text(
                            f"{DDI_LEVELS[level]}: {n} pair{'s' if n != 1 else ''}",
                            size=13,
                            color=color,
                            weight=ft.FontWeight.BOLD,
                        ),
                        leading=ft.Icon(DDI_LOOK[level][3], color=color, size=18),
                        controls=[ddi_row(w) for w in warnings],
                        expanded=level == "accepted",
                        dense=True,
                        min_tile_height=36,
                        visual_density=ft.VisualDensity.COMPACT,
                        tile_padding=ft.Padding.symmetric(horizontal=4),
                        controls_padding=ft.Padding.only(left=8, right=8, bottom=6),
                    ),
                )
            )
        self.warnings.controls = controls

    def _show_decisions(self) -> None:
        visit = self.state.medication.visit
        if visit is None or not visit.decisions:
            self.decisions.controls = [muted("none yet")]
            return
        name = self.state.medication.bundle.label_name
        self.decisions.controls = [
            tid(
                ident("decision", code),
                chip(
                    f"{DECISION_LOOK[d][0]}: {code} {name(code)}",
                    on_delete=self._undoer(code),
                    delete="Remove" if d == "added" else "Undo",
                    leading=ft.Icon(DECISION_LOOK[d][2], color=DECISION_LOOK[d][1], size=18),
                ),
            )
            for code, d in visit.decisions.items()
        ]

    def _undoer(self, code: str):
        def undo(e: ft.Event[ft.IconButton]) -> None:
            self.decide("undo", code)

        return undo

    # -- handlers

    def decide(self, action: str, code: str) -> None:
        self.state.touch()
        visit = self.state.medication.visit
        if visit is None:
            return
        getattr(visit, action)(code)
        self._show_result(visit.result(), rebuild=False)

    def _on_show_all(self, e: ft.Event[ft.TextButton]) -> None:
        self.state.touch()
        visit = self.state.medication.visit
        if visit is not None:
            self._show_result(visit.set_show_all(not visit.show_all), rebuild=True)

    def _on_note(self, e: ft.Event[ft.TextField]) -> None:
        self.state.touch()
        if self.state.medication.visit is not None:
            self.state.medication.visit.note = self.note.value or ""

    def _on_drug_search(self, e: ft.Event[ft.TextField]) -> None:
        self.state.touch()
        medication = self.state.medication
        query = self.drug_field.value or ""
        found = medication.search_drugs(query, limit=SEARCH_LIMIT)
        self.drug_options.show(found, _no_match(medication, query, "drug"))

    def _pick_drug(self, option: CodeOption) -> None:
        self.drug_field.value = ""
        self.drug_options.clear()
        self.decide("add", option.code)

    def _on_suggest(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        visit = self.state.medication.visit
        if visit is not None:
            self.scored(visit.rescore)

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
        self._message(message, error)
        if busy:
            self.page.update(self.busy, self.status)
        else:
            self.page.update()
