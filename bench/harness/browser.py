"""Driving the real app's web page in Chromium with Playwright, shared by the browser tests
(tests/test_browser.py, tests/test_web_offline.py) and bench/app_latency.py; the asyncio twin
that bench/kiosk_load.py uses is bench/harness/browser_async.py, the server they load the page
from bench/harness/server.py. It is test tooling, so it lives here and not in app/, which ships
without it.

- the browser: Debian's Chromium at /usr/bin/chromium (`launch_chromium`, `chromium_missing`);
- the page: Flutter web paints on a canvas. Its semantics tree, switched on by clicking the
  `flt-semantics-placeholder` element (`enable_semantics`), mirrors the widgets as elements whose
  `flt-semantics-identifier` attribute is the app's `ft.Semantics(identifier=...)` (`sel`).
  `wait_for`, `click`, `type_into`, `settle`, `text_of` and `wait_text` use Playwright's sync
  API; the page's JavaScript probes (`TEXT_BY_ID_JS`, `IDS_UNDER_JS`, ...) serve both APIs.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bench.harness.errors import TypingError

CHROMIUM = Path("/usr/bin/chromium")
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
KEY_DELAY_MS = 35  # Flutter drops keys typed faster right after a focus change
FOCUS_TIMEOUT_MS = 5_000
FOCUS_PAUSE_MS = 150  # after the field has the focus, before typing
CHECK_PAUSE_MS = 100  # after typing, before reading the field back

PLACEHOLDER = "flt-semantics-placeholder"
CLICK_PLACEHOLDER_JS = f"document.querySelector('{PLACEHOLDER}').click()"

# The text under an element (or null): Flutter puts it in text nodes or aria-label attributes.
TEXT_JS = r"""(el) => el ? [el, ...el.querySelectorAll('*')]
    .map(n => (n.getAttribute('aria-label') || '') + ' ' + (n.children.length ? '' : n.textContent))
    .join(' ').replace(/\s+/g, ' ').trim() : null"""

# The text under the node carrying an identifier, null if absent.
TEXT_BY_ID_JS = f"""(id) => ({TEXT_JS})(
    document.querySelector(`[flt-semantics-identifier="${{id}}"]`))"""

ALL_IDS_JS = """() => [...document.querySelectorAll('[flt-semantics-identifier]')]
  .map(e => e.getAttribute('flt-semantics-identifier'))"""

# The identifiers under the node carrying an identifier, joined by ",".
IDS_UNDER_JS = """(id) => [...document.querySelectorAll(
    `[flt-semantics-identifier="${id}"] [flt-semantics-identifier]`)]
  .map(e => e.getAttribute('flt-semantics-identifier')).join(',')"""

# The size and identifiers of the whole semantics DOM.
SNAPSHOT_JS = """() => document.querySelector('flt-semantics-host')?.innerHTML.length + ':'
  + [...document.querySelectorAll('[flt-semantics-identifier]')]
    .map(e => e.getAttribute('flt-semantics-identifier')).join(',')"""


# ------------------------------------------------------------------ selectors and addresses


def sel(identifier: str) -> str:
    return f'[flt-semantics-identifier="{identifier}"]'


def is_app_request(url: str, base: str) -> bool:
    """Whether the page asks the app server at `base` for `url` (or its own memory)."""
    return url.startswith((base, "blob:", "data:"))


# ------------------------------------------------------------------ the browser


def chromium_missing() -> str | None:
    """Why the app cannot be driven in a browser here, or None."""
    if CHROMIUM.exists():
        return None
    return f"{CHROMIUM} is missing (apt-get install chromium): cannot drive the app in a browser"


def launch_chromium(pw, args: list[str] = CHROMIUM_ARGS):
    """Chromium from Playwright's sync or async API (a coroutine to await for the latter)."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=args)


# ------------------------------------------------------------------ driving a page (sync API)


def enable_semantics(
    page,
    ready: str = "[flt-semantics-identifier]",
    load_timeout_ms: int = LOAD_TIMEOUT_MS,
    timeout_ms: int = STEP_TIMEOUT_MS,
) -> None:
    """Flutter builds its semantics DOM only once asked: click its placeholder, then wait for
    the selector `ready`."""
    page.wait_for_selector(PLACEHOLDER, state="attached", timeout=load_timeout_ms)
    page.evaluate(CLICK_PLACEHOLDER_JS)
    page.wait_for_selector(ready, state="attached", timeout=timeout_ms)


def wait_for(page, identifier: str, timeout_ms: int = STEP_TIMEOUT_MS):
    page.wait_for_selector(sel(identifier), state="attached", timeout=timeout_ms)
    return page.locator(sel(identifier)).first


def click(
    page, identifier: str, timeout_ms: int = STEP_TIMEOUT_MS, click_timeout_ms: int | None = None
) -> None:
    """Click the tappable node (button, list tile, rail destination) carrying `identifier`.
    `click_timeout_ms` bounds the click itself (None: Playwright's default)."""
    node = wait_for(page, identifier, timeout_ms)
    target = node.locator("[flt-tappable], [role=button], input").first
    if target.count():
        target.click(timeout=click_timeout_ms)
    else:  # bubbles to the tappable ancestor (e.g. a rail destination)
        node.click(force=True, timeout=click_timeout_ms)


class Pauses:
    """The deliberate waits of typing (key delays and fixed pauses) in ms, and how many times
    a field had to be typed again."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.retypes = 0

    def wait(self, page, ms: int) -> None:
        self.ms += ms
        page.wait_for_timeout(ms)


def type_into(
    page,
    identifier: str,
    text: str,
    tries: int = 3,
    pauses: Pauses | None = None,
    timeout_ms: int = STEP_TIMEOUT_MS,
    click_timeout_ms: int | None = None,
) -> None:
    """Focus the text field carrying `identifier` and type `text` key by key.

    Flutter attaches its text editing to the `<input>` only once the framework has moved the
    focus there, so keys typed right after the click can be lost: wait for the focus, then
    check the field's value and type again when it is not what was typed."""
    pauses = pauses or Pauses()
    wait_for(page, identifier, timeout_ms)
    field = page.locator(f"{sel(identifier)} input, {sel(identifier)} textarea").first
    for attempt in range(tries):
        pauses.retypes += attempt > 0
        field.click(timeout=click_timeout_ms)
        try:
            page.wait_for_function(
                "e => document.activeElement === e",
                arg=field.element_handle(),
                timeout=FOCUS_TIMEOUT_MS,
            )
        except PlaywrightTimeout:
            # a click that Flutter did not turn into focus (a busy machine, a field scrolled
            # into view by the click itself): click again, within the same tries
            if attempt == tries - 1:
                raise
            continue
        pauses.wait(page, FOCUS_PAUSE_MS)
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        page.keyboard.type(text, delay=KEY_DELAY_MS)
        pauses.ms += KEY_DELAY_MS * len(text)
        pauses.wait(page, CHECK_PAUSE_MS)
        if field.input_value() == text:
            return
    raise TypingError(f"typing {text!r} into {identifier!r} gave {field.input_value()!r}")


def wait_quiet(
    page, js: str, arg=None, quiet_ms: int = 300, timeout_ms: int = 5_000, poll_ms: int = 50
) -> float:
    """Until `js` (evaluated with `arg`) gives the same value for `quiet_ms`, or `timeout_ms`
    has passed; returns the ms it had been unchanged by then."""
    deadline = time.monotonic() + timeout_ms / 1000
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = page.evaluate(js, arg)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_ms / 1000:
            break
        page.wait_for_timeout(poll_ms)
    return (time.monotonic() - since) * 1e3 if last is not None else 0.0


def settle(page, quiet_ms: int = 300, timeout_ms: int = 5_000) -> None:
    """Wait until the semantics DOM stops changing (the server has answered every keystroke)."""
    wait_quiet(page, SNAPSHOT_JS, quiet_ms=quiet_ms, timeout_ms=timeout_ms)


def text_of(page, identifier: str, timeout_ms: int = STEP_TIMEOUT_MS) -> str:
    """The text under a node, white space folded."""
    return wait_for(page, identifier, timeout_ms).evaluate(TEXT_JS)


def wait_text(page, identifier: str, needle: str, timeout_ms: int = STEP_TIMEOUT_MS) -> str:
    """The node's text once it contains `needle` (case-insensitive)."""
    deadline = time.monotonic() + timeout_ms / 1000
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = text_of(page, identifier)
            if needle.lower() in last.lower():
                return last
        page.wait_for_timeout(150)
    raise AssertionError(f"{identifier!r} never showed {needle!r}; last text: {last!r}")
