"""The controls a phone must reach, in the real app at 360 px wide (web mode, Chromium,
Playwright): the header's "Close patient" beside a long patient name (cut with an ellipsis, the
button never pushed off the screen: it hides the patient's data on a shared kiosk), both buttons
of the "Draft restored" banner (its text wraps, the buttons go under it) and the Export view's
"Export all history" (the buttons wrap). Each is inside the viewport and answers a tap; then the
same at exactly 600 px, where "Close patient" once showed as "Cl".

One server and one page; fixtures and helpers from tests/test_browser_clinic.py, screenshots in
test-artifacts/layout-*.png.
"""

from __future__ import annotations

import pytest
from test_browser_clinic import (  # noqa: F401
    add_dx,
    app_page,
    browser,
    bundle_dir,
    chromium,
    create_patient,
    draft_of,
    open_patient,
    screenshot,
    server,
    wait_draft,
)

from bench.harness.browser import click, settle, text_of, wait_for, wait_text

pytestmark = pytest.mark.browser

PHONE = {"width": 360, "height": 740}
LONG_NAME = "Maria Fernanda Gonzalez-Lopez de la Vega"

# the node's rectangle in CSS pixels (Flutter clips a semantics node to what is on screen)
BOX_JS = """(id) => { const e = document.querySelector(`[flt-semantics-identifier="${id}"]`);
  if (!e) return null; const r = e.getBoundingClientRect();
  return {x: r.x, y: r.y, w: r.width, h: r.height}; }"""


def on_screen(page, identifier: str, min_width: float) -> dict:
    """The node's box, asserted wholly inside the viewport and at least `min_width` wide (a
    button cut at the screen's edge shows as a narrower node, one pushed off it as none)."""
    wait_for(page, identifier)
    settle(page)
    size = page.viewport_size
    box = page.evaluate(BOX_JS, identifier)
    assert box is not None, f"{identifier} is not on the page"
    assert box["w"] >= min_width, f"{identifier} is cut: {box} at {size}"
    assert box["x"] >= 0 and box["x"] + box["w"] <= size["width"], (identifier, box, size)
    assert box["y"] >= 0 and box["y"] + box["h"] <= size["height"], (identifier, box, size)
    return box


def test_phone_reaches_close_patient_the_draft_banner_and_export_all(browser, server):  # noqa: F811
    with app_page(browser, server, "layout-phone", viewport=PHONE) as page:
        create_patient(page, LONG_NAME)
        close = on_screen(page, "close-patient", min_width=100)
        assert "Close patient" in text_of(page, "close-patient")
        name = on_screen(page, "current-patient", min_width=40)
        assert name["x"] + name["w"] <= close["x"] + 1, "the name runs under Close patient"
        code = add_dx(page, "hypertension")
        wait_draft(server.db, lambda d: d["diagnoses"] == [code])
        screenshot(page, "layout-360-header.png")

        # Close patient answers; reopened, the draft banner: text wrapped, both buttons on
        # the screen. Discard answers...
        click(page, "close-patient")
        wait_text(page, "current-patient", "No patient open")
        open_patient(page, "gonzalez", LONG_NAME)
        wait_text(page, "visit-banner-text", "Draft restored")
        text = on_screen(page, "visit-banner-text", min_width=150)
        assert text["h"] > 30, f"the banner's text is one cut line: {text}"
        on_screen(page, "draft-discard", min_width=100)
        on_screen(page, "banner-dismiss", min_width=40)
        screenshot(page, "layout-360-draft-banner.png")
        click(page, "draft-discard")
        wait_text(page, "dx-chips", "none yet")
        assert draft_of(server.db) is None

        # ... and so does OK, on a new draft
        code = add_dx(page, "hypertension")
        wait_draft(server.db, lambda d: d["diagnoses"] == [code])
        click(page, "close-patient")
        wait_text(page, "current-patient", "No patient open")
        open_patient(page, "gonzalez", LONG_NAME)
        wait_text(page, "visit-banner-text", "Draft restored")
        on_screen(page, "banner-dismiss", min_width=40)
        click(page, "banner-dismiss")
        page.wait_for_selector('[flt-semantics-identifier="visit-banner-text"]', state="detached")
        assert draft_of(server.db)["diagnoses"] == [code]  # OK keeps the draft

        # Export: both buttons on the screen (wrapped), Export all history answers
        click(page, "nav-export")
        on_screen(page, "export-patient", min_width=120)
        on_screen(page, "export-all", min_width=120)
        screenshot(page, "layout-360-export.png")
        click(page, "export-all")
        wait_text(page, "export-message", "Wrote")

        # exactly 600 px (the rail and header switch there): Close patient whole as well
        page.set_viewport_size({"width": 600, "height": 900})
        page.wait_for_timeout(500)
        on_screen(page, "close-patient", min_width=100)
        on_screen(page, "export-all", min_width=120)
        screenshot(page, "layout-600-export.png")
