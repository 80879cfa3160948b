"""The kiosk's lock screen: the PIN opens the app (checked against its salted hash)."""

from __future__ import annotations

import asyncio

import flet as ft

from app.views.common import DANGER, Shell, heading, tid


class LockView:
    route = "/locked"
    title = "Locked"

    def __init__(self, shell: Shell, on_unlocked):
        self.shell = shell
        self.state = shell.state
        self.on_unlocked = on_unlocked
        self.pin = ft.TextField(
            label="PIN",
            password=True,
            keyboard_type=ft.KeyboardType.NUMBER,
            width=240,
            on_submit=self._on_unlock,
            autofocus=True,
        )
        self.message = ft.Text("", color=DANGER)
        self.root = ft.Container(
            ft.Column(
                [
                    ft.Icon(ft.Icons.LOCK, size=48),
                    heading("pocketrec is locked"),
                    tid("pin-input", self.pin),
                    tid(
                        "pin-unlock",
                        ft.FilledButton(
                            "Unlock", icon=ft.Icons.LOCK_OPEN, on_click=self._on_unlock
                        ),
                    ),
                    tid("pin-message", self.message),
                ],
                horizontal_alignment=ft.CrossAxisAlignment.CENTER,
                spacing=16,
            ),
            alignment=ft.Alignment.CENTER,
            expand=True,
        )

    def refresh(self) -> None:
        self.pin.value = ""

    def reset(self) -> None:
        self.pin.value = ""
        self.message.value = ""

    async def _on_unlock(self, e: ft.Event[ft.Control]) -> None:
        pin = self.pin.value or ""
        self.pin.value = ""
        ok = await asyncio.to_thread(self.state.kiosk.unlock, pin)
        if not ok:
            wait = self.state.kiosk.lockout_remaining()
            self.message.value = (
                f"Too many wrong PINs: wait {wait:.0f} s." if wait else "Wrong PIN."
            )
            return
        self.message.value = ""
        await self.on_unlocked()
