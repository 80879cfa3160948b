"""Patients: find one by name (or id prefix), or create one with the profile the model reads."""

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
        self.results = ft.Column(spacing=0)
        self.name = ft.TextField(label="Name", width=420, on_submit=self._on_create)
        self.fields: dict[str, ft.Dropdown | ft.TextField] = {}
        options = self.state.medication.profile_options()
        for name in PROFILE_FIELDS:
            label = FIELD_LABELS[name]
            if options.get(name):
                values = [UNKNOWN, *options[name]]
                control: ft.Dropdown | ft.TextField = ft.Dropdown(
                    label=label,
                    width=200,
                    value=UNKNOWN,
                    options=[ft.DropdownOption(key=v, text=v) for v in values],
                )
            else:
                control = ft.TextField(label=label, width=200)
            self.fields[name] = control
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
        """Forget what was typed (the kiosk's idle timeout)."""
        self.search.value = ""
        self.name.value = ""
        for control in self.fields.values():
            control.value = UNKNOWN if isinstance(control, ft.Dropdown) else ""
        self.form_error.value = ""
        self.results.controls = []

    def _show_results(self) -> None:
        text = (self.search.value or "").strip()
        if not text and self.state.kiosk.enabled:
            self.results.controls = [muted("Type a name to find a patient.")]
            return
        rows = self.state.medication.search_patients(text, limit=20)
        if not rows:
            self.results.controls = [muted("No patient found.", "patient-none")]
            return
        self.results.controls = [
            tid(
                ident("patient-result", i),
                ft.ListTile(
                    leading=ft.Icon(ft.Icons.PERSON),
                    title=ft.Text(row["display_name"]),
                    subtitle=ft.Text(_profile_line(row), size=12),
                    on_click=self._opener(row["id"]),
                    dense=True,
                ),
            )
            for i, row in enumerate(rows)
        ]

    # -- handlers

    def _on_search(self, e: ft.Event[ft.TextField]) -> None:
        self.state.touch()
        self._show_results()

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
