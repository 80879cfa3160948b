"""The real app in web mode, driven in Chromium with Playwright: create a patient, enter two
diagnoses by typing words of their titles, get suggestions with a DDI warning, accept two, save,
reload, find the visit on the patient's timeline.

Flutter web paints everything on a canvas. Its semantics tree (turned on here by clicking the
`flt-semantics-placeholder` "Enable accessibility" element) mirrors the widgets as
`<flt-semantics>` elements, and `ft.Semantics(identifier=...)` becomes their
`flt-semantics-identifier` attribute: that is what the selectors use. Every request that does not
go to the app's own 127.0.0.1 server is aborted, so the app is shown to work offline.

Uses Debian's Chromium at /usr/bin/chromium (no `playwright install`): without it the test is
skipped, or fails when POCKETREC_REQUIRE_BROWSER=1. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.runtime import BundleError, Recommender, load_bundle
from app.state import CodeIndex

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHIPPED = ROOT / "assets" / "bundles" / "medication-demo"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 1000}
LOAD_TIMEOUT_MS = 90_000  # first load: ~10 MB of wasm, fonts and the Flutter engine
STEP_TIMEOUT_MS = 20_000
PATIENT = "Browser Test Patient"
KIOSK_PIN = "2468"


# ------------------------------------------------------------------ setup


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium) so the browser test cannot run"
        if os.environ.get("POCKETREC_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; POCKETREC_REQUIRE_BROWSER=1 makes that a failure")
        pytest.skip(reason)
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM


@pytest.fixture(scope="module")
def bundle_dir(request) -> Path:
    """The shipped bundle when it is there and sound, else the tiny test bundle
    ($POCKETREC_BROWSER_BUNDLE=tiny forces the tiny one, or names another bundle folder)."""
    choice = os.environ.get("POCKETREC_BROWSER_BUNDLE", "")
    if choice == "tiny":
        return request.getfixturevalue("tiny_bundle")
    if choice:
        return Path(choice)
    if (SHIPPED / "manifest.json").is_file():
        with contextlib.suppress(BundleError):
            load_bundle(SHIPPED)
            return SHIPPED
    return request.getfixturevalue("tiny_bundle")


def _query_for(index: CodeIndex, code: str) -> str | None:
    """Words to type (one or two words of the title, the last maybe cut short) for which the
    type-ahead shows `code` among its first three options."""
    words = [w for w in index.title(code).replace(",", " ").split() if w.isalpha() and len(w) > 2]
    tries = [w.lower() for w in words[:4]]
    tries += [f"{a.lower()} {b.lower()[:5]}" for a, b in itertools.pairwise(words[:4])]
    for query in sorted(tries, key=lambda q: (" " not in q, len(q))):  # two words first
        if code in [o.code for o in index.search(query, limit=3)]:
            return query
    return None


@pytest.fixture(scope="module")
def scenario(bundle_dir: Path) -> dict:
    """Two diagnoses (and what to type for them) whose suggestions contain a DDI pair, found by
    running the bundle's model offline over pairs of frequent diagnoses."""
    bundle = load_bundle(bundle_dir)
    recommender = Recommender(bundle)
    titles = bundle.titles
    index = CodeIndex(
        (c, titles.get(c, c)) for c in bundle.vocabs["diagnoses"] if c not in ("<pad>", "<unk>")
    )
    candidates = []
    for code in list(index_codes(bundle))[:60]:
        query = _query_for(index, code)
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


def index_codes(bundle) -> list[str]:
    return [c for c in bundle.vocabs["diagnoses"] if c not in ("<pad>", "<unk>")]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(tmp_path: Path, bundle_dir: Path, env_extra: dict | None = None, **run_args):
    """`app.main.run(web=True, ...)` in a subprocess on a free 127.0.0.1 port."""
    port = _free_port()
    db = tmp_path / "pocketrec.db"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(
        POCKETREC_NO_BROWSER="1",  # serve only; Playwright is the browser
        FLET_FORCE_WEB_SERVER="1",
        FLET_WEB_NO_CDN="1",
        FLET_LOG_LEVEL="error",  # handler errors go to the server log
        PYTHONUNBUFFERED="1",
        **(env_extra or {}),
    )
    args = ", ".join(f"{k}={v!r}" for k, v in run_args.items())
    code = (
        "from app.main import run; "
        f"run(web=True, port={port}, db={str(db)!r}, bundle={str(bundle_dir)!r}, {args})"
    )
    log = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                assert response.status == 200
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"the app did not start on {url}:\n{log.read()[-4000:]}")
            time.sleep(0.25)
    try:
        yield {"url": url, "db": db, "port": port, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory):
    with serve(tmp_path_factory.mktemp("browser"), bundle_dir) as running:
        yield running


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


# ------------------------------------------------------------------ driving Flutter's DOM


def sel(identifier: str) -> str:
    return f'[flt-semantics-identifier="{identifier}"]'


def enable_semantics(page) -> None:
    """Flutter builds its semantics DOM only once asked: click its placeholder."""
    page.wait_for_selector("flt-semantics-placeholder", state="attached", timeout=LOAD_TIMEOUT_MS)
    page.evaluate("document.querySelector('flt-semantics-placeholder').click()")
    page.wait_for_selector("[flt-semantics-identifier]", state="attached", timeout=STEP_TIMEOUT_MS)


def wait_for(page, identifier: str, timeout: int = STEP_TIMEOUT_MS):
    page.wait_for_selector(sel(identifier), state="attached", timeout=timeout)
    return page.locator(sel(identifier)).first


def click(page, identifier: str) -> None:
    """Click the tappable node (button, list tile, rail destination) carrying `identifier`."""
    node = wait_for(page, identifier)
    target = node.locator("[flt-tappable], [role=button], input").first
    if target.count():
        target.click()
    else:
        node.click(force=True)  # bubbles to the tappable ancestor (e.g. a rail destination)


def type_into(page, identifier: str, text: str, tries: int = 3) -> None:
    """Focus the text field carrying `identifier` and type `text` key by key.

    Flutter attaches its text editing to the `<input>` only once the framework has moved the
    focus there, so keys typed right after the click can be lost: wait for the focus, then
    check the field's value and type again when it is not what was typed."""
    wait_for(page, identifier)
    field = page.locator(f"{sel(identifier)} input, {sel(identifier)} textarea").first
    for _ in range(tries):
        field.click()
        page.wait_for_function(
            "e => document.activeElement === e", arg=field.element_handle(), timeout=5_000
        )
        page.wait_for_timeout(150)
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        page.keyboard.type(text, delay=35)
        page.wait_for_timeout(100)
        if field.input_value() == text:
            return
    raise AssertionError(f"typing {text!r} into {identifier!r} gave {field.input_value()!r}")


TEXT_JS = """e => [e, ...e.querySelectorAll('*')]
    .map(n => (n.getAttribute('aria-label') || '') + ' ' + (n.children.length ? '' : n.textContent))
    .join(' ')"""


def settle(page, quiet_ms: int = 300, timeout_ms: int = 5_000) -> None:
    """Wait until the semantics DOM stops changing (the server has answered every keystroke)."""
    snapshot = "() => document.querySelector('flt-semantics-host')?.innerHTML.length + ':' + "
    snapshot += "[...document.querySelectorAll('[flt-semantics-identifier]')]"
    snapshot += ".map(e => e.getAttribute('flt-semantics-identifier')).join(',')"
    deadline = time.monotonic() + timeout_ms / 1000
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = page.evaluate(snapshot)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_ms / 1000:
            return
        page.wait_for_timeout(50)


def text_of(page, identifier: str) -> str:
    """The text under a node: Flutter puts it in text nodes or in aria-label attributes."""
    node = wait_for(page, identifier)
    return " ".join(node.evaluate(TEXT_JS).split())


def wait_text(page, identifier: str, needle: str, timeout: int = STEP_TIMEOUT_MS) -> str:
    deadline = time.monotonic() + timeout / 1000
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = text_of(page, identifier)
            if needle.lower() in last.lower():
                return last
        page.wait_for_timeout(150)
    raise AssertionError(f"{identifier!r} never showed {needle!r}; last text: {last!r}")


def screenshot(page, name: str) -> Path:
    """Let the canvas catch up with the semantics tree, then save a PNG."""
    page.wait_for_timeout(600)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    # the viewport only: a full-page shot resizes the window, and Flutter repaints it blank
    page.screenshot(path=str(path))
    return path


@contextlib.contextmanager
def app_page(browser, running: dict, name: str):
    """A fresh page on the app with every non-local request aborted (the app must work
    offline); on failure: a screenshot, the identifiers present and the server log."""
    blocked: list[str] = []
    local = f"http://127.0.0.1:{running['port']}"

    def offline(route) -> None:
        url = route.request.url
        if url.startswith((local, "blob:", "data:")):
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
        page.goto(running["url"], timeout=LOAD_TIMEOUT_MS)
        enable_semantics(page)
        yield page
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, f"{name}-failure.png")
            ids = page.evaluate(
                "[...document.querySelectorAll('[flt-semantics-identifier]')]"
                ".map(e => e.getAttribute('flt-semantics-identifier'))"
            )
            (ARTIFACTS / f"{name}-failure-identifiers.txt").write_text("\n".join(ids) + "\n")
            running["log"].flush()
            running["log"].seek(0)
            (ARTIFACTS / f"{name}-failure-server.log").write_text(running["log"].read())
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

        # suggestions, ranked, with probability bars and the DDI warning
        click(page, "visit-suggest")
        a, b, _, _ = scenario["ddi"]
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
        assert str(server["db"].parent / "exports") in text_of(page, "export-message")

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
        assert KIOSK_PIN not in (tmp_path / "pocketrec.settings.json").read_text()
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
        wait_for(page, "pin-input", timeout=15_000)
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
        wait_text(page, "news-basis", "popular and recent", timeout=90_000)
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
    with sqlite3.connect(running["db"]) as conn:
        clicks = conn.execute("SELECT count(*) FROM news_clicks").fetchone()[0]
    assert clicks == 3
