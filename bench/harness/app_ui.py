"""What the app's screens show that the drivers look for, whether they drive a browser page
(bench/harness/browser.py, browser_async.py) or speak the Flet protocol (flet_protocol.py).

The identifiers are the app's own `ident(...)` test identifiers (app/views/common.py), each the
`ft.Semantics(identifier=...)` around a control; the texts are the status lines of the visit
view.
"""

from __future__ import annotations

import re

from app.views.common import OPTIONS_SHOWN, ident

__all__ = ["DONE_TEXT", "OPTIONS_SHOWN", "SAVED_RE", "SHOWN_IDS", "ident"]

DONE_TEXT = "at or above the threshold"  # the status line once a Suggest has finished
SAVED_RE = re.compile(r"Saved visit ([0-9a-f]{8})")  # the status line once a visit is saved

# At an error: the identifiers whose texts (or field values) the reports record.
SHOWN_IDS = [
    "current-patient",
    "new-patient-error",
    "patient-search",
    "new-patient-name",
    "dx-search",
    "visit-status",
]
