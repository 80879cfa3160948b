"""The clinic's reliability in the real app (web mode, Chromium, Playwright), issue 13:

- drafts: the open visit is kept as it changes, survives "Close patient", the kiosk's idle lock
  and a SIGKILL of the server (at most the last keystrokes lost), is restored with a banner that
  says so, and can be discarded;
- pointer moves count as activity for the idle lock; the Export view is restricted in kiosk mode;
- the patient search: no dead rows after "Close patient", accent-insensitive;
- code search over the whole ICD dictionary (abbreviations, versions marked) and drugs by
  substance;
- a visit saved in another tab: the open one says so and re-scores;
- names in other scripts (CJK, Arabic, emoji) render with the shipped fonts, asked of the app's
  own server only.

Same harness as tests/test_browser.py (bench/harness/); screenshots in test-artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from bench.harness.browser import (
    ALL_IDS_JS,
    LOAD_TIMEOUT_MS,
    VIEWPORT,
    chromium_missing,
    click,
    enable_semantics,
    is_app_request,
    launch_chromium,
    sel,
    settle,
    text_of,
    type_into,
    wait_for,
    wait_text,
)
from bench.harness.bundles import sound_bundle
from bench.harness.errors import SetupError, TypingError
from bench.harness.server import AppServer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
INTL_NAME = "李小龍 علي 😀 Zoë"


@pytest.fixture(scope="module")
def chromium() -> None:
    reason = chromium_missing()
    if reason:
        if os.environ.get("POCKETREC_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; POCKETREC_REQUIRE_BROWSER=1 makes that a failure")
        pytest.skip(reason)
    pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def bundle_dir(request) -> Path:
    chosen = sound_bundle(os.environ.get("POCKETREC_BROWSER_BUNDLE", ""))
    return chosen or request.getfixturevalue("tiny_bundle")


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = launch_chromium(pw)
        try:
            yield launched
        finally:
            launched.close()


def start(bundle_dir: Path, folder: Path, env: dict | None = None, **run_args) -> AppServer:
    server = AppServer(bundle_dir, folder, env=env, run_args=run_args, poll_s=0.25)
    server.start()
    try:
        server.wait_ready()
    except SetupError as exc:
        server.stop()
        pytest.fail(str(exc))
    return server


@contextlib.contextmanager
def serve(bundle_dir: Path, folder: Path, env: dict | None = None, **run_args):
    server = start(bundle_dir, folder, env, **run_args)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
    with serve(bundle_dir, tmp_path_factory.mktemp("clinic")) as running:
        yield running


def screenshot(page, name: str) -> Path:
    page.wait_for_timeout(600)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


@contextlib.contextmanager
def app_page(browser, running: AppServer, name: str, requests: list | None = None, viewport=None):
    """A fresh page on the app, every non-local request aborted (and recorded); on failure a
    screenshot, the identifiers present and the server log."""
    blocked: list[str] = []
    local = f"http://127.0.0.1:{running.port}"

    def offline(route) -> None:
        url = route.request.url
        if requests is not None:
            requests.append(url)
        if is_app_request(url, local):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport=viewport or VIEWPORT)
    page = context.new_page()
    page.route("**/*", offline)
    try:
        page.goto(running.url, timeout=LOAD_TIMEOUT_MS)
        enable_semantics(page)
        yield page
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, f"clinic-{name}-failure.png")
            ids = page.evaluate(ALL_IDS_JS)
            (ARTIFACTS / f"clinic-{name}-failure-identifiers.txt").write_text("\n".join(ids))
            (ARTIFACTS / f"clinic-{name}-failure-server.log").write_text(running.log_tail(None))
        raise
    finally:
        context.close()
        assert not blocked, f"the page asked other hosts: {blocked[:5]}"


def ids(page, prefix: str) -> list[str]:
    return [i for i in page.evaluate(ALL_IDS_JS) if i.startswith(prefix)]


def create_patient(page, name: str) -> None:
    click(page, "nav-patients")
    type_into(page, "new-patient-name", name)
    click(page, "new-patient-create")
    wait_text(page, "current-patient", name.split()[0])
    wait_for(page, "dx-search")


def add_dx(page, query: str) -> str:
    """Type `query` into the diagnosis search, pick the first option; its code."""
    type_into(page, "dx-search", query)
    settle(page)
    first = ids(page, "dx-option-")[0]
    click(page, first)
    code = first.removeprefix("dx-option-")
    wait_for(page, f"dx-chip-{code}")
    return code


def open_patient(page, query: str, name: str) -> None:
    click(page, "nav-patients")
    type_into(page, "patient-search", query)
    settle(page)
    wait_text(page, "patient-result-0", name)
    click(page, "patient-result-0")
    wait_text(page, "current-patient", name.split()[0])


def draft_of(db: Path) -> dict | None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT data FROM drafts").fetchone()
    return None if row is None else json.loads(row[0])


def wait_draft(db: Path, check, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    data = None
    while time.monotonic() < deadline:
        data = draft_of(db)
        if data is not None and check(data):
            return data
        time.sleep(0.2)
    raise AssertionError(f"the draft never matched; last: {data}")


# ------------------------------------------------------------------ drafts


def test_draft_survives_close_and_a_server_crash(browser, bundle_dir, tmp_path):
    running = start(bundle_dir, tmp_path)
    try:
        with app_page(browser, running, "draft") as page:
            create_patient(page, "Draft Patient")
            code = add_dx(page, "hypertension")
            type_into(page, "visit-note", "first part")
            wait_draft(running.db, lambda d: d["note"] == "first part")
            # "Close patient" and back: the draft is restored, and the screen says so
            click(page, "close-patient")
            wait_text(page, "current-patient", "No patient open")
            open_patient(page, "draft", "Draft Patient")
            wait_text(page, "visit-banner-text", "Draft restored")
            wait_for(page, f"dx-chip-{code}")
            screenshot(page, "clinic-draft-restored.png")
            # a last batch of keys, then the server dies at once
            page.locator(f"{sel('visit-note')} textarea, {sel('visit-note')} input").first.click()
            page.keyboard.press("End")
            page.keyboard.type(" second", delay=20)
            os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait(timeout=10)
            running.proc = None
        kept = draft_of(running.db)
        assert kept is not None and kept["diagnoses"] == [code]
        assert kept["note"].startswith("first part")  # at most the last keystrokes are lost

        running = start(bundle_dir, tmp_path)  # the same database, a new server
        with app_page(browser, running, "draft-restart") as page:
            open_patient(page, "draft", "Draft Patient")
            wait_text(page, "visit-banner-text", "Draft restored")
            wait_for(page, f"dx-chip-{code}")
            note = page.locator(f"{sel('visit-note')} textarea, {sel('visit-note')} input").first
            note.click()  # Flutter fills the field's DOM element once it has the focus
            page.wait_for_timeout(400)
            assert note.input_value() == kept["note"]
            click(page, "draft-discard")
            wait_text(page, "dx-chips", "none yet")
            assert not ids(page, "visit-banner-text") or "Draft" not in text_of(
                page, "visit-banner"
            )
        assert draft_of(running.db) is None
    finally:
        running.stop()


# ------------------------------------------------------------------ kiosk


def test_kiosk_pointer_activity_keeps_it_open_and_export_is_restricted(
    browser, bundle_dir, tmp_path
):
    env = {"POCKETREC_IDLE_TIMEOUT": "4"}
    with (
        serve(bundle_dir, tmp_path, env, kiosk=True) as running,
        app_page(browser, running, "kiosk-activity") as page,
    ):
        create_patient(page, "Mouse Patient")
        code = add_dx(page, "hypertension")
        # 7 s of pointer moves (between the rail and the visit) and wheel scrolls over the
        # suggestions, no key: still open (timeout 4 s)
        deadline = time.monotonic() + 7
        x = 40
        while time.monotonic() < deadline:
            x = 900 if x == 40 else 40
            page.mouse.move(x, 500, steps=4)
            page.mouse.wheel(0, 60 if x == 900 else 0)
            page.wait_for_timeout(500)
        assert "Mouse Patient" in text_of(page, "current-patient")
        # hands off: back to the start screen; the draft is hidden, not deleted
        wait_text(page, "current-patient", "No patient open", timeout_ms=15_000)
        assert draft_of(running.db)["diagnoses"] == [code]

        # Export in kiosk mode: no folder field, no whole-history export
        click(page, "nav-export")
        wait_text(page, "export-kiosk", "Kiosk mode")
        assert not ids(page, "export-folder")
        screenshot(page, "clinic-kiosk-export.png")


# ------------------------------------------------------------------ patients, codes, tabs, fonts


def test_patient_search_after_close_has_no_dead_rows_and_ignores_accents(browser, server):
    with app_page(browser, server, "search") as page:
        for name in ("Maria Lopez", "Sam Diabetic", "José Núñez"):
            type_into(page, "new-patient-name", name)
            click(page, "new-patient-create")
            wait_text(page, "current-patient", name.split()[0])
            click(page, "close-patient")
            wait_text(page, "current-patient", "No patient open")
        open_patient(page, "maria", "Maria Lopez")
        click(page, "close-patient")
        wait_text(page, "current-patient", "No patient open")
        type_into(page, "patient-search", "Maria")
        settle(page)
        assert ids(page, "patient-result-") == ["patient-result-0"]
        assert "Maria Lopez" in text_of(page, "patient-results")
        assert "Sam Diabetic" not in text_of(page, "patient-results")
        click(page, "patient-result-0")  # the row answers
        wait_text(page, "current-patient", "Maria")
        click(page, "close-patient")
        type_into(page, "patient-search", "jose nunez")
        settle(page)
        wait_text(page, "patient-result-0", "José Núñez")
        type_into(page, "patient-search", "nobody here")
        wait_text(page, "patient-none", "No patient found")
        screenshot(page, "clinic-patient-search.png")


def test_code_search_finds_everyday_words_and_drug_substances(browser, server):
    with app_page(browser, server, "codes") as page:
        create_patient(page, "Code Search Patient")
        type_into(page, "dx-search", "copd")
        settle(page)
        options = ids(page, "dx-option-")
        assert options, "copd finds nothing"
        first = text_of(page, options[0])
        assert "obstructive" in first.lower() or "airway obstruction" in first.lower()
        assert "ICD-" in first
        type_into(page, "dx-search", "covid")
        settle(page)
        assert "dx-option-icd10cm:U071" in ids(page, "dx-option-")
        assert "not seen by the model" in text_of(page, "dx-option-icd10cm:U071")
        screenshot(page, "clinic-code-search-covid.png")
        click(page, "dx-option-icd10cm:U071")  # a code the model never saw is a valid entry
        wait_for(page, "dx-chip-icd10cm:U071")
        # it is the visit's only code: the model reads nothing of it, and says so
        wait_text(page, "visit-status", "No suggestions")
        settle(page)
        try:
            type_into(page, "drug-search", "furosemide")
        except TypingError:
            # Flutter web (semantics on) can drop this field's focus when the option list first
            # appears under it, so the keys after the first are lost: about one keyboard try in
            # two in a replay, on the views before 2026-12-07's layout changes as after, and
            # all three tries in about one run of this file in five. The test is about what
            # the search finds, so the whole word goes in at once then
            field = page.locator(f"{sel('drug-search')} input").first
            field.click()
            field.fill("furosemide")
        settle(page)
        wait_text(page, "drug-option-C03C", "furosemide")


def test_a_visit_saved_in_another_tab_is_announced_and_used(browser, server):
    with (
        app_page(browser, server, "tab-a") as a,
        app_page(browser, server, "tab-b") as b,
    ):
        create_patient(a, "Two Tabs Patient")
        add_dx(a, "hypertension")
        open_patient(b, "two tabs", "Two Tabs Patient")
        add_dx(b, "atrial fibrillation")
        click(b, "visit-save")
        wait_text(b, "visit-status", "Saved visit")
        wait_text(a, "visit-banner-text", "saved in another tab", timeout_ms=15_000)
        assert "1 earlier visit" in text_of(a, "visit-patient")
        screenshot(a, "clinic-other-tab.png")


def test_names_in_other_scripts_render_with_the_shipped_fonts(browser, server):
    requests: list[str] = []
    with app_page(browser, server, "fonts", requests=requests) as page:
        type_into(page, "new-patient-name", INTL_NAME)
        # the typed name pulls in 8 MB of fallback fonts; on a loaded machine the page can be
        # busy parsing them for a long while, so let them arrive before the click, and give
        # the click itself time (it once timed out at 30 s in a full run)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            any(k in u for u in requests if "/fonts/Noto" in u) for k in ("CJK", "Arabic", "Emoji")
        ):
            page.wait_for_timeout(200)
        page.wait_for_load_state("networkidle", timeout=60_000)
        click(page, "new-patient-create", click_timeout_ms=90_000)
        wait_text(page, "current-patient", "Zoë")
        page.wait_for_timeout(2500)  # the fallback fonts load on first use
        shot = screenshot(page, "clinic-fonts-names.png")
        assert shot.stat().st_size > 10_000
    fonts = [u for u in requests if "/fonts/Noto" in u]
    assert any("CJK" in u for u in fonts) and any("Arabic" in u for u in fonts), fonts
    assert any("Emoji" in u for u in fonts), fonts
