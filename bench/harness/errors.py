"""What goes wrong while driving the app, by kind: each driver's `error_kind` names these in
the reports ("app-error", "unexpected", "typing"); `SetupError` means no run could be made."""

from __future__ import annotations


class SetupError(RuntimeError):
    """The run cannot be made: the app server did not start, too few usable diagnoses."""


class TypingError(RuntimeError):
    """A text field did not read back what was typed, in any of the tries (kind "typing")."""


class AppError(RuntimeError):
    """The app itself showed a failure in its status line (kind "app-error")."""


class UnexpectedError(RuntimeError):
    """The app showed something the driver did not expect (kind "unexpected")."""


def short(exc: BaseException, limit: int) -> str:
    """The exception's message on one line, cut to `limit` characters."""
    return " ".join(str(exc).split())[:limit]
