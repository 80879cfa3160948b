"""What the views share: stable test identifiers, the shell interface, small widgets.

`tid(identifier, control)` wraps a control in `ft.Semantics(identifier=...)`. In web mode,
Flutter writes it as the `flt-semantics-identifier` attribute of the node's `<flt-semantics>`
element (once the semantics tree is enabled), with the control's own node (an `<input>`, a
`role="button"` element, the text) inside it; on Android and iOS it is the resource-id /
accessibilityIdentifier. Flet controls have no other attribute that reaches the DOM.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import flet as ft

from app.medication.codes import CodeOption
from app.state import AppState

DANGER = ft.Colors.RED_800
DANGER_BG = ft.Colors.RED_50
MUTED = ft.Colors.GREY_700
OPTIONS_SHOWN = 8
# how many matches a type-ahead asks for: enough to say how many the list leaves out ("+" when
# the search was cut there too); a longer cut costs the search a few ms at most
SEARCH_LIMIT = 500

_UNSAFE = re.compile(r"[^0-9A-Za-z_.:-]")


def ident(*parts: object) -> str:
    """ "dx-option-icd9cm:4019": parts joined by "-", anything unusual replaced by "_"."""
    return "-".join(_UNSAFE.sub("_", str(p)) for p in parts)


def tid(identifier: str, control: ft.Control) -> ft.Semantics:
    """`control` with a stable identifier for tests and native UI automation."""
    return ft.Semantics(identifier=identifier, content=control)


class Shell(Protocol):
    """What a view may ask of the app around it (implemented in app.shell)."""

    state: AppState
    page: ft.Page

    async def go(self, route: str) -> None: ...

    def notify(self, message: str, error: bool = False) -> None: ...

    def patient_changed(self) -> None: ...


def heading(text: str, size: int = 20) -> ft.Text:
    return ft.Text(text, size=size, weight=ft.FontWeight.BOLD)


def muted(text: str, identifier: str | None = None) -> ft.Control:
    control = ft.Text(text, color=MUTED, size=13)
    return tid(identifier, control) if identifier else control


def no_patient(message: str = "Open or create a patient first.") -> ft.Control:
    return tid("no-patient", ft.Text(message, size=16, color=MUTED))


class OptionList:
    """Type-ahead options as tappable rows "code — title", identified `<prefix>-option-<code>`,
    in `column`; under it (`more_box`, to be placed after the column, outside the options'
    identifier) a muted line when the list is cut, identified `<prefix>-more`.

    A row stays the same control while its code stays in the list: each keystroke re-renders
    the list, and a new control under the pointer would swallow a tap made meanwhile."""

    def __init__(self, prefix: str, on_pick: Callable[[CodeOption], Awaitable[None] | None]):
        self.prefix = prefix
        self.on_pick = on_pick
        self.column = ft.Column(spacing=0)
        self.more = ft.Text("", size=12, color=MUTED, italic=True)
        # hide the Semantics wrapper, not its content (Flet 1.0 shows an error box otherwise)
        self.more_box = tid(
            f"{prefix}-more", ft.Container(self.more, padding=ft.Padding.only(left=16, bottom=2))
        )
        self.more_box.visible = False
        self._rows: dict[str, ft.Control] = {}

    def show(self, options: list[CodeOption], empty_text: str | None = None) -> None:
        """The first OPTIONS_SHOWN options and, when there are more, the line saying how many
        ("12 more: keep typing to narrow the list"; "492+ more" when `options` holds
        SEARCH_LIMIT, where the search itself stopped); none and an `empty_text`: that one
        muted line, identified `<prefix>-no-match`."""
        rows = {}
        for option in options[:OPTIONS_SHOWN]:
            rows[option.code] = self._rows.get(option.code) or self._row(option)
        self._rows = rows
        self.column.controls = list(rows.values())
        if not rows and empty_text:
            self.column.controls = [muted(empty_text, identifier=f"{self.prefix}-no-match")]
        more = len(options) - OPTIONS_SHOWN
        self.more_box.visible = more > 0
        if more > 0:
            count = f"{more}+" if len(options) >= SEARCH_LIMIT else f"{more}"
            self.more.value = f"{count} more: keep typing to narrow the list"

    def clear(self) -> None:
        self.show([])

    def _row(self, option: CodeOption) -> ft.Control:
        async def picked(e: ft.Event[ft.ListTile]) -> None:
            result = self.on_pick(option)
            if result is not None:
                await result

        return tid(
            ident(self.prefix, "option", option.code),
            ft.ListTile(title=ft.Text(option.label, size=14), dense=True, on_click=picked),
        )
