"""The real app in web mode, driven in Chromium with Playwright: create a patient, enter two
diagnoses by typing words of their titles, get suggestions with a DDI warning, accept two, save,
reload, find the visit on the patient's timeline.

Flutter web paints everything on a canvas. Its semantics tree (turned on here by clicking the
`flt-semantics-placeholder` "Enable accessibility" element) mirrors the widgets as
`<flt-semantics>` elements, and `ft.Semantics(identifier=...)` becomes their
`flt-semantics-identifier` attribute: that is what the selectors use. Every request that does not
go to the app's own 127.0.0.1 server is aborted, so the app is shown to work offline.

Uses Debian's Chromium at /usr/bin/chromium (no `playwright install`): without it the test is
skipped, or fails when POCKETREC_REQUIRE_BROWSER=1. Screenshots go to test-artifacts/. The server,
Chromium and the page helpers come from bench/harness/, shared with the benchmarks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from app.medication.bundle import load_bundle
from app.medication.recommender import Recommender
from bench.harness.browser import (
    ALL_IDS_JS,
    LOAD_TIMEOUT_MS,
    STEP_TIMEOUT_MS,
    TEXT_JS,
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
from bench.harness.bundles import diagnosis_codes, diagnosis_index, sound_bundle, typeahead_query
from bench.harness.errors import SetupError
from bench.harness.server import AppServer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
PATIENT = "Browser Test Patient"
KIOSK_PIN = "2468"


# ------------------------------------------------------------------ setup


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
    """The shipped bundle when it is there and sound, else the tiny test bundle
    ($POCKETREC_BROWSER_BUNDLE=tiny forces the tiny one, or names another bundle folder)."""
    chosen = sound_bundle(os.environ.get("POCKETREC_BROWSER_BUNDLE", ""))
    return chosen or request.getfixturevalue("tiny_bundle")


@pytest.fixture(scope="module")
def scenario(bundle_dir: Path) -> dict:
    """Two diagnoses (and what to type for them) whose suggestions contain a DDI pair, found by
    running the bundle's model offline over pairs of frequent diagnoses."""
    bundle = load_bundle(bundle_dir)
    recommender = Recommender(bundle)
    titles = bundle.titles
    index = diagnosis_index(bundle)
    candidates = []
    for code in diagnosis_codes(bundle)[:60]:
        query = typeahead_query(index, code)
        if query and code in titles:
            candidates.append((code, query))
        if len(candidates) >= 30:
            break
    for (a, qa), (b, qb) in itertools.combinations(candidates, 2):
        rec = recommender.recommend([a, b], [], top_k=10)
        if rec.ddi and len(rec.suggested) >= 2:
            return {
                "codes": [a, b],
                "queries": [qa, qb],
                "titles": [titles[a], titles[b]],
                "ddi": rec.ddi[0],
                "accept": [d["code"] for d in rec.suggested[:2]],
            }
    pytest.fail(f"no pair of diagnoses in {bundle_dir} gives a DDI pair among its suggestions")


@contextlib.contextmanager
def serve(tmp_path: Path, bundle_dir: Path, env_extra: dict | None = None, **run_args):
    """`app.main.run(web=True, ...)` in a subprocess on a free 127.0.0.1 port, its DB and log
    in `tmp_path`; the test fails when it does not start."""
    server = AppServer(bundle_dir, tmp_path, env=env_extra, run_args=run_args, poll_s=0.25)
    try:
        server.start()
        try:
            server.wait_ready()
        except SetupError as exc:
            pytest.fail(str(exc))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory):
    with serve(tmp_path_factory.mktemp("browser"), bundle_dir) as running:
        yield running


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = launch_chromium(pw)
        try:
            yield launched
        finally:
            launched.close()


# ------------------------------------------------------------------ pages and artifacts


def screenshot(page, name: str) -> Path:
    """Let the canvas catch up with the semantics tree, then save a PNG."""
    page.wait_for_timeout(600)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    # the viewport only: a full-page shot resizes the window, and Flutter repaints it blank
    page.screenshot(path=str(path))
    return path


@contextlib.contextmanager
def app_page(browser, running: AppServer, name: str):
    """A fresh page on the app with every non-local request aborted (the app must work
    offline); on failure: a screenshot, the identifiers present and the server log."""
    blocked: list[str] = []
    local = f"http://127.0.0.1:{running.port}"

    def offline(route) -> None:
        url = route.request.url
        if is_app_request(url, local):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    ARTIFACTS.mkdir(exist_ok=True)
    for stale in ARTIFACTS.glob(f"{name}-failure*"):
        stale.unlink()
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.route("**/*", offline)
    try:
        page.goto(running.url, timeout=LOAD_TIMEOUT_MS)
        enable_semantics(page)
        yield page
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, f"{name}-failure.png")
            ids = page.evaluate(ALL_IDS_JS)
            (ARTIFACTS / f"{name}-failure-identifiers.txt").write_text("\n".join(ids) + "\n")
            (ARTIFACTS / f"{name}-failure-server.log").write_text(running.log_tail(None))
        raise
    finally:
        context.close()
        (ARTIFACTS / f"{name}-blocked-requests.txt").write_text("".join(f"{u}\n" for u in blocked))


# ------------------------------------------------------------------ the tests


def test_visit_flow_in_chromium(browser, server, scenario):
    started = time.monotonic()
    with app_page(browser, server, "visit") as page:
        # a new patient
        type_into(page, "new-patient-name", PATIENT)
        click(page, "new-patient-create")
        wait_text(page, "current-patient", PATIENT)
        wait_for(page, "dx-search")

        # two diagnoses, each by typing words of its title and picking it from the list
        for code, query in zip(scenario["codes"], scenario["queries"], strict=True):
            type_into(page, "dx-search", query)
            settle(page)
            click(page, f"dx-option-{code}")
            wait_for(page, f"dx-chip-{code}")
        chips = text_of(page, "dx-chips")
        for title in scenario["titles"]:
            assert title in chips

        # suggestions, ranked, with probability bars (scored as the codes came in; the
        # refresh button scores once more), and the DDI warning in its folded group
        click(page, "visit-suggest")
        wait_text(page, "visit-status", "at or above the threshold")
        a, b, _, _ = scenario["ddi"]
        click(page, "ddi-group-suggested")
        warning = wait_text(page, f"ddi-warning-{a}-{b}", "Interaction")
        assert a in warning and b in warning
        for code in scenario["accept"]:
            wait_for(page, f"suggestion-{code}")
            assert "%" in text_of(page, f"probability-{code}")
        shot = screenshot(page, "visit-suggestions-ddi.png")
        assert shot.stat().st_size > 10_000

        # the "why" of the first suggestion: leave-one-out drops of the two diagnoses
        first = scenario["accept"][0]
        click(page, f"why-{first}")
        wait_for(page, f"basis-{first}-1")

        # accept two, save
        for code in scenario["accept"]:
            click(page, f"accept-{code}")
            wait_text(page, f"status-{code}", "Accepted")
        type_into(page, "visit-note", "seen in the browser test")
        screenshot(page, "visit-accepted.png")
        click(page, "visit-save")
        wait_text(page, "visit-status", "Saved visit")

        # reload, find the patient, open the timeline
        page.reload(timeout=LOAD_TIMEOUT_MS)
        enable_semantics(page)
        click(page, "nav-patients")
        type_into(page, "patient-search", PATIENT.split()[0])
        settle(page)
        wait_text(page, "patient-result-0", PATIENT)
        click(page, "patient-result-0")
        wait_text(page, "current-patient", PATIENT)
        click(page, "nav-timeline")
        entry = wait_text(page, "timeline-visit-0", scenario["accept"][0])
        for code in scenario["accept"]:
            assert code in entry
        for title in scenario["titles"]:
            assert title in entry
        assert "seen in the browser test" in entry
        screenshot(page, "timeline.png")

        # export this patient: the written files are listed
        click(page, "nav-export")
        click(page, "export-patient")
        wait_text(page, "export-paths", "pocketrec.json")
        assert str(server.db.parent / "exports") in text_of(page, "export-message")

        # the model card and its metrics
        click(page, "nav-model")
        wait_text(page, "model-card", "Model card")
        screenshot(page, "model.png")
    elapsed = time.monotonic() - started
    assert elapsed < 120, f"the browser flow took {elapsed:.0f} s"


def page_text(page) -> str:
    return page.evaluate(f"() => ({TEXT_JS})(document.querySelector('flt-semantics-host'))")


def test_kiosk_pin_and_idle_timeout(browser, bundle_dir, tmp_path):
    """Kiosk: the PIN opens it; after the idle timeout the patient's data is gone and the
    kiosk is locked again."""
    env = {"POCKETREC_IDLE_TIMEOUT": "4"}
    with (
        serve(tmp_path, bundle_dir, env, kiosk=True, pin=KIOSK_PIN) as running,
        app_page(browser, running, "kiosk") as page,
    ):
        # only a salted hash is stored (its hex digits may contain "2468" by chance: compare
        # the fields, not the text)
        stored = json.loads((tmp_path / "pocketrec.settings.json").read_text())
        assert KIOSK_PIN not in stored.values()
        assert stored.get("pin_hash", "").startswith("pbkdf2_sha256$")
        type_into(page, "pin-input", "0000")
        click(page, "pin-unlock")
        wait_text(page, "pin-message", "Wrong PIN")
        type_into(page, "pin-input", KIOSK_PIN)
        click(page, "pin-unlock")
        wait_for(page, "new-patient-name")

        type_into(page, "new-patient-name", "Kiosk Patient")
        click(page, "new-patient-create")
        wait_text(page, "current-patient", "Kiosk Patient")
        # hands off: the idle timeout brings the lock screen back, with nothing of the patient
        wait_for(page, "pin-input", timeout_ms=15_000)
        page.wait_for_timeout(300)
        assert "Kiosk Patient" not in page_text(page)
        screenshot(page, "kiosk-locked.png")
        type_into(page, "pin-input", KIOSK_PIN)
        click(page, "pin-unlock")
        wait_text(page, "current-patient", "No patient open")
        assert "Kiosk Patient" not in page_text(page)


def _feed_titles(page) -> list[str]:
    titles = []
    for k in range(10):
        identifier = f"news-item-{k}"
        if not page.locator(sel(identifier)).count():
            break
        titles.append(text_of(page, identifier))
    return titles


def test_news_feed_learns_from_three_opened_items(browser, bundle_dir, tmp_path):
    """The News tab on the shipped news bundle: a cold-start feed, three items opened (each
    shown, each click stored), and a different feed ranked from those clicks."""
    with (
        serve(tmp_path, bundle_dir) as running,
        app_page(browser, running, "news") as page,
    ):
        click(page, "nav-news")
        # the first start encodes the catalog's titles once (a few seconds)
        wait_text(page, "news-basis", "popular and recent", timeout_ms=90_000)
        before = _feed_titles(page)
        assert len(before) == 10
        opened: list[str] = []
        for _ in range(3):
            row = text_of(page, "news-item-0")
            click(page, "news-item-0")
            deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
            shown = ""
            while time.monotonic() < deadline:  # the article panel shows the tapped item
                with contextlib.suppress(Exception):
                    shown = text_of(page, "news-article-title")
                if shown and shown in row and shown not in opened:
                    break
                page.wait_for_timeout(150)
            assert shown and shown in row, f"tapped {row!r}, the article shows {shown!r}"
            opened.append(shown)
            settle(page)
        wait_text(page, "news-basis", "last 3 opened items")
        after = _feed_titles(page)
        assert len(after) == 10 and after != before
        assert "Close to what you opened" in text_of(page, "news-item-0")
        for title in opened:
            # (the reasons of other rows name it: "Close to what you opened: <title> ...")
            assert not any(row.startswith(title) for row in after), f"{title!r} is still listed"
        screenshot(page, "news-feed.png")

        # a MIND news.tsv of the reader's own, imported by path: its catalog becomes the feed
        tsv = tmp_path / "news.tsv"
        tsv.write_text(
            "N1\tsports\tfootball\tLocal team wins the cup final\tA late goal.\t\t[]\t[]\n"
            "N2\tfinance\tmarkets\tMarkets rally on rate cut hopes\tStocks rose.\t\t[]\t[]\n"
            "broken row\n",
            encoding="utf-8",
        )
        type_into(page, "news-import-path", str(tsv))
        click(page, "news-import")
        wait_text(page, "news-status", "2 new and 0 updated articles")
        assert "skipped 1 rows" in text_of(page, "news-status")
        wait_text(page, "news-catalog", "Imported news (2)")
        imported = " ".join(_feed_titles(page))
        assert "Local team wins" in imported and "Markets rally" in imported
    with sqlite3.connect(running.db) as conn:
        clicks = conn.execute("SELECT count(*) FROM news_clicks").fetchone()[0]
    assert clicks == 3
