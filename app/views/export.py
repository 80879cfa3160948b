"""Export: the open patient's history, or all of it, as CSV files and JSON into a folder.

In kiosk mode (a shared device) the folder cannot be typed and the whole history cannot be
exported: the open patient's export goes to a new folder under exports/ beside the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import flet as ft

from app.storage.errors import HistoryError
from app.views.common import DANGER, Shell, heading, ident, muted, tid


class ExportView:
    route = "/export"
    title = "Export"

    def __init__(self, shell: Shell):
        self.shell = shell
        self.state = shell.state
        self.folder = ft.TextField(
            label="Folder",
            hint_text="empty: a new folder under exports/ beside the database",
            width=640,
        )
        self.patient_button = ft.FilledButton(
            "Export this patient", icon=ft.Icons.PERSON, on_click=self._on_patient
        )
        self.all_button = ft.OutlinedButton(
            "Export all history", icon=ft.Icons.FOLDER_ZIP, on_click=self._on_all
        )
        # hide the Semantics wrapper, not its content (Flet 1.0 shows an error box otherwise)
        self.folder_box = tid("export-folder", self.folder)
        self.kiosk_note = ft.Text("", size=13, color=ft.Colors.GREY_700)
        self.message = ft.Text("")
        self.paths = ft.Column(spacing=2)
        self.root = ft.Column(
            [
                heading("Export"),
                muted(
                    "CSV files (one per table) and pocketrec.json, written atomically. "
                    "The files hold patient data: keep them on encrypted storage."
                ),
                self.folder_box,
                tid("export-kiosk", self.kiosk_note),
                ft.Row(
                    [
                        tid("export-patient", self.patient_button),
                        tid("export-all", self.all_button),
                    ],
                    spacing=12,
                    run_spacing=8,
                    wrap=True,  # a phone: one button a line
                ),
                tid("export-message", self.message),
                tid("export-paths", self.paths),
            ],
            spacing=12,
            scroll=ft.ScrollMode.AUTO,
            expand=True,
        )

    def refresh(self) -> None:
        kiosk = self.state.kiosk.enabled
        self.folder_box.visible = not kiosk
        self.all_button.disabled = kiosk
        self.kiosk_note.value = (
            "Kiosk mode: this patient's export goes to a new folder under "
            f"{self.state.history.path.parent / 'exports'}; the folder cannot be chosen and the "
            "whole history cannot be exported here (use `pocketrec app backup` on the device)."
            if kiosk
            else ""
        )
        patient = self.state.medication.patient
        self.patient_button.disabled = patient is None
        name = patient["display_name"] if patient else ""
        label = f"Export {name}" if name else "Export this patient (none open)"
        # a long name is cut, not the button pushed past the screen's edge
        self.patient_button.content = ft.Text(
            label, max_lines=1, no_wrap=True, overflow=ft.TextOverflow.ELLIPSIS, tooltip=label
        )

    def reset(self) -> None:
        self.folder.value = ""
        self.message.value = ""
        self.paths.controls = []

    async def _on_patient(self, e: ft.Event[ft.Control]) -> None:
        await self._export(self.state.medication.export_patient)

    async def _on_all(self, e: ft.Event[ft.Control]) -> None:
        if self.state.kiosk.enabled:  # the button is disabled there; refuse all the same
            return
        await self._export(self.state.medication.export_all)

    async def _export(self, export) -> None:
        self.state.touch()
        # kiosk: never a typed server-side folder
        folder = None if self.state.kiosk.enabled else (self.folder.value or "").strip() or None
        self.message.value = "Exporting…"
        self.message.color = None
        self.paths.controls = []
        self.shell.page.update()
        try:
            written: list[Path] = await asyncio.to_thread(export, folder)
        except (ValueError, HistoryError, OSError) as exc:
            self.message.value = str(exc)
            self.message.color = DANGER
        else:
            self.message.value = (
                f"Wrote {len(written)} files to {written[0].parent}" if written else ""
            )
            self.paths.controls = [
                tid(ident("export-path", i), ft.Text(str(p), size=13))
                for i, p in enumerate(written)
            ]
        self.shell.page.update()  # update() was called above: no automatic one now
