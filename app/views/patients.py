"""Patients: find one by name (or id prefix; case- and accent-insensitive), or create one with
the profile the model reads. Every profile field is a drop-down: the values the model knows, or,
for a field it does not read, common values (labelled as not used by the model)."""

from __future__ import annotations

import asyncio

import flet as ft

from app.medication.state import PatientForm
from app.storage.errors import HistoryError
from app.storage.migrations import PROFILE_FIELDS
from app.views.common import Shell, heading, ident, muted, tid

FIELD_LABELS = {
    "gender": "Gender",
    "age_band": "Age band",
    "insurance": "Insurance",
    "language": "Language",
    "marital_status": "Marital status",
    "race": "Race",
    "religion": "Religion",
}
UNKNOWN = "(unknown)"
# a data source's own spelling of "unknown": folded into UNKNOWN, never offered as a value
UNKNOWN_VALUES = {"?", "unknown", "unk", "none", "not specified", "unobtainable"}
# a field the model does not read still gets a drop-down (no free text beside the others)
COMMON_VALUES = {
    "religion": (
        "BUDDHIST", "CATHOLIC", "CHRISTIAN", "HINDU", "JEWISH", "MUSLIM", "NONE", "OTHER",
        "PROTESTANT",
    ),
}  # fmt: skip


class PatientsView:
    route = "/patients"
    title = "Patients"

    def __init__(self, shell: Shell):
        self.shell = shell
        self.state = shell.state
        self.search = ft.TextField(
            label="Find a patient",
            hint_text="name or id",
            prefix_icon=ft.Icons.SEARCH,
            on_change=self._on_search,
            width=420,
        )
        # a new Column for every new list (see `_set_rows`)
        self.results = ft.Container(content=ft.Column(spacing=0))
        self.name = ft.TextField(
            label="Name", width=420, on_submit=self._on_create, on_change=self._on_name
        )
        self.fields: dict[str, ft.Dropdown] = {}
        options = self.state.medication.profile_options()
        for name in PROFILE_FIELDS:
            label = FIELD_LABELS[name]
            known = [v for v in options.get(name, []) if v.strip().lower() not in UNKNOWN_VALUES]
            values = known or list(COMMON_VALUES.get(name, ("OTHER",)))
            if not known:
                label += " (not used by this model)"
            self.fields[name] = ft.Dropdown(
                label=label,
                # wide enough for the longer label on one line: at 200 px it wrapped onto the
                # field's border (a phone's 280 px still hold it)
                width=200 if known else 270,
                value=UNKNOWN,
                options=[ft.DropdownOption(key=v, text=v) for v in [UNKNOWN, *values]],
            )
        self.form_error = ft.Text("", color=ft.Colors.RED_800)
        self.root = ft.Column(
            [
                heading("Patients"),
                tid("patient-search", self.search),
                tid("patient-results", self.results),
                ft.Divider(),
                heading("New patient", 18),
                tid("new-patient-name", self.name),
                ft.Row(
                    [tid(ident("new-patient", n), c) for n, c in self.fields.items()],
                    wrap=True,
                    spacing=12,
                    run_spacing=12,
                ),
                tid(
                    "new-patient-create",
                    ft.FilledButton(
                        "Create patient", icon=ft.Icons.PERSON_ADD, on_click=self._on_create
                    ),
                ),
                tid("new-patient-error", self.form_error),
            ],
            spacing=14,
            scroll=ft.ScrollMode.AUTO,
            expand=True,
        )

    # -- showing

    def refresh(self) -> None:
        self._show_results()

    def reset(self) -> None:
        """Forget what was typed (the kiosk's idle timeout, "Close patient")."""
        self.search.value = ""
        self.name.value = ""
        for control in self.fields.values():
            control.value = UNKNOWN
        self.form_error.value = ""
        self._show_results()

    def _show_results(self) -> None:
        """The rows for the search text (all patients, or a hint, when it is empty)."""
        text = (self.search.value or "").strip()
        if not text and self.state.kiosk.enabled:
            self._set_rows([], muted("Type a name to find a patient.", "patient-hint"))
            return
        rows = self.state.medication.search_patients(text, limit=20)
        if not rows:
            if text:
                line = muted(f'No patient found for "{text}".', "patient-none")
            else:
                line = muted("No patients yet: create one below.", "patient-hint")
            self._set_rows([], line)
            return
        self._set_rows(rows)

    def _set_rows(self, rows: list[dict], line: ft.Control | None = None) -> None:
        """A new Column each time: Flet 1.0 left the rows of a shorter new list behind on the
        page (dead, untappable duplicates) when the old Column's list was changed while the
        view was off screen ("Close patient" resets it) and the view came back."""
        need = getattr(self.shell, "need_fonts", None)
        if need is not None:  # names in other scripts: their fonts first
            need(*(row["display_name"] for row in rows), self.search.value or "")
        controls = [self._row(i, row) for i, row in enumerate(rows)] or ([line] if line else [])
        self.results.content = ft.Column(controls, spacing=0)

    def _row(self, i: int, row: dict) -> ft.Control:
        return tid(
            ident("patient-result", i),
            ft.ListTile(
                leading=ft.Icon(ft.Icons.PERSON),
                title=ft.Text(row["display_name"]),
                subtitle=ft.Text(_profile_line(row), size=12),
                on_click=self._opener(row["id"]),
                dense=True,
            ),
        )

    # -- handlers

    def _on_search(self, e: ft.Event[ft.TextField]) -> None:
        self.state.touch()
        self._show_results()

    def _on_name(self, e: ft.Event[ft.TextField]) -> None:
        self.state.touch()
        need = getattr(self.shell, "need_fonts", None)
        if need is not None:
            need(self.name.value or "")

    def _opener(self, patient_id: str):
        async def open_patient(e: ft.Event[ft.ListTile]) -> None:
            self.state.touch()
            try:
                await asyncio.to_thread(self.state.medication.open_patient, patient_id)
            except HistoryError as exc:
                self.shell.notify(str(exc), error=True)
                return
            self.shell.patient_changed()
            await self.shell.go("/visit")

        return open_patient

    def _form(self) -> PatientForm:
        values = {}
        for name, control in self.fields.items():
            value = (control.value or "").strip()
            values[name] = "" if value == UNKNOWN else value
        return PatientForm(display_name=self.name.value or "", **values)

    async def _on_create(self, e: ft.Event[ft.Control]) -> None:
        self.state.touch()
        form = self._form()
        errors = form.errors()
        if errors:
            self.form_error.value = "; ".join(errors)
            return
        self.form_error.value = ""
        try:
            patient = await asyncio.to_thread(self.state.medication.create_patient, form)
        except (ValueError, HistoryError) as exc:
            self.form_error.value = str(exc)
            return
        self.reset()
        self.shell.notify(f"Created {patient['display_name']}")
        self.shell.patient_changed()
        await self.shell.go("/visit")


def _profile_line(row: dict) -> str:
    parts = [f"{FIELD_LABELS[n]}: {row[n]}" for n in PROFILE_FIELDS if row.get(n)]
    return " · ".join(parts) or "no profile"
