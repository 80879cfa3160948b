"""What the command prints on stderr: one-line errors and the stages' log lines."""

from __future__ import annotations

import logging
import sys


def fail(message: str) -> int:
    """Print `pocketrec: error: message` and give the exit code for bad input (2)."""
    print(f"pocketrec: error: {message}", file=sys.stderr)
    return 2


class _Prefixed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # "[pocketrec] ..." as the stages printed before they logged; the export stage and
        # warnings keep their own tag
        tag = "pocketrec export" if record.name.startswith("export") else "pocketrec"
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"[{tag}] {text}"


def configure_logging(level: int = logging.INFO) -> None:
    """One stderr handler for the library loggers (`distill`, `export`, `app`), once."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Prefixed())
    for name in ("distill", "export", "app"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "_pocketrec", False) for h in logger.handlers):
            handler._pocketrec = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
