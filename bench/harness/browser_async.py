"""Driving the kiosk's web page with Playwright's asyncio API, for the many concurrent
browser sessions of bench/kiosk_load.py: the asyncio twin of bench/harness/browser.py (whose
JavaScript probes it reuses) plus the probes of a visit (patient opened, save done, the Suggest
latency recorder).

Every helper is bounded by the caller's step timeout; a field is typed into only once Flutter
has moved the focus to it (checked by identifier, not by element: Flutter may replace the
field's <input>), and read back after typing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.harness.app_ui import DONE_TEXT, SHOWN_IDS
from bench.harness.browser import (
    ALL_IDS_JS,
    CHECK_PAUSE_MS,
    CLICK_PLACEHOLDER_JS,
    FOCUS_PAUSE_MS,
    IDS_UNDER_JS,
    KEY_DELAY_MS,
    PLACEHOLDER,
    TEXT_BY_ID_JS,
    sel,
)
from bench.harness.errors import AppError, TypingError, UnexpectedError

FOCUS_WAIT_MS = 10_000  # no focus in the field by then: click it again
QUIET_MS = 400  # type-ahead options unchanged this long: the server has answered every key
QUIET_MAX_MS = 6_000
POLL_MS = 100

WAIT_TEXT_JS = f"""([id, needle]) => {{
  const text = ({TEXT_BY_ID_JS})(id);
  return text !== null && text.toLowerCase().includes(needle.toLowerCase());
}}"""

# After Save: resolves to the status text once it is neither the Suggest result nor "Saving…".
SAVE_DONE_JS = f"""([id, doneText]) => {{
  const text = ({TEXT_BY_ID_JS})(id) || '';
  if (!text || text.includes('Saving') || text.includes(doneText)) return false;
  return text;
}}"""

# After Create patient: resolves to the header's patient text once a patient is open.
OPENED_JS = f"""(id) => {{
  const text = ({TEXT_BY_ID_JS})(id);
  return text && !text.includes('No patient open') ? text : false;
}}"""

# True once the focused element is a text field under the node carrying the identifier.
FOCUSED_JS = """(id) => {
  const active = document.activeElement;
  return !!active && /^(INPUT|TEXTAREA)$/.test(active.tagName)
    && !!active.closest(`[flt-semantics-identifier="${id}"]`);
}"""

# At an error: the texts and field values the page shows for a few identifiers.
SHOWN_JS = f"""(ids) => Object.fromEntries(ids.map(id => {{
  const field = document.querySelector(
    `[flt-semantics-identifier="${{id}}"] input, [flt-semantics-identifier="${{id}}"] textarea`);
  return [id, field ? {{value: field.value}} : ({TEXT_BY_ID_JS})(id)];
}}))"""

# Installed just before the Suggest click; window.__kiosk ends with browser-clock stamps.
SUGGEST_RECORDER_JS = f"""(doneText) => {{
  const textOf = {TEXT_BY_ID_JS};
  const rowSel = '[flt-semantics-identifier^="suggestion-"]';
  const before = [...document.querySelectorAll(rowSel)];
  const statusBefore = textOf('visit-status') || '';
  const rec = {{click: null, scoring: null, done: null, failed: null, rows: null,
               status: null, batches: 0}};
  window.__kiosk = rec;
  window.addEventListener('pointerdown', () => {{
    if (rec.click === null) rec.click = performance.now();
  }}, {{capture: true, once: true}});
  const observer = new MutationObserver(() => {{
    rec.batches += 1;
    if (rec.click === null || rec.done !== null || rec.failed !== null) return;
    const now = performance.now();
    const status = textOf('visit-status') || '';
    if (rec.scoring === null && status.includes('Scoring')) rec.scoring = now;
    const rows = [...document.querySelectorAll(rowSel)];
    const replaced = before.every(el => !el.isConnected);
    if (rows.length && replaced && status.includes(doneText)) {{
      rec.done = now;
      rec.rows = rows.map(r => r.getAttribute('flt-semantics-identifier'));
      rec.status = status;
      observer.disconnect();
    }} else if (status && status !== statusBefore && !status.includes('Scoring')
               && !status.includes(doneText) && rec.scoring !== null) {{
      rec.failed = status;
      observer.disconnect();
    }}
  }});
  observer.observe(document.body, {{subtree: true, childList: true, attributes: true,
                                   characterData: true}});
  return true;
}}"""


def error_kind(exc: BaseException) -> str:
    """The report's name for what went wrong in a page."""
    from playwright.async_api import TimeoutError as PlaywrightTimeoutError

    if isinstance(exc, PlaywrightTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, AppError):
        return "app-error"
    if isinstance(exc, TypingError):
        return "typing"
    if isinstance(exc, UnexpectedError):
        return "unexpected"
    return type(exc).__name__


# ------------------------------------------------------------------ driving one page


async def wait_node(page, identifier: str, timeout_ms: int):
    await page.wait_for_selector(sel(identifier), state="attached", timeout=timeout_ms)
    return page.locator(sel(identifier)).first


async def tap(page, identifier: str, timeout_ms: int) -> None:
    """Click the tappable element under the node `identifier`, or the node itself."""
    node = await wait_node(page, identifier, timeout_ms)
    inner = node.locator("[flt-tappable], [role=button], input").first
    if await inner.count():
        await inner.click(timeout=timeout_ms)
    else:
        await node.click(force=True, timeout=timeout_ms)


async def type_text(page, identifier: str, text: str, timeout_ms: int, tries: int = 3) -> int:
    """Focus the field, wait until Flutter has moved the focus there, type key by key, read it
    back; click and type again when the focus does not come or it reads otherwise. Returns how
    many extra attempts it took. The focus is checked by identifier, not by element: Flutter
    may replace the field's <input> (the app refocuses a field after a pick)."""
    await wait_node(page, identifier, timeout_ms)
    field = page.locator(f"{sel(identifier)} input, {sel(identifier)} textarea").first
    seen = None
    for attempt in range(tries):
        await field.click(timeout=timeout_ms)
        try:
            await page.wait_for_function(
                FOCUSED_JS, arg=identifier, timeout=min(timeout_ms, FOCUS_WAIT_MS), polling=50
            )
        except Exception as exc:
            if error_kind(exc) != "timeout":
                raise
            seen = "(no focus)"
            continue
        await page.wait_for_timeout(FOCUS_PAUSE_MS)
        await page.keyboard.press("Control+A")
        await page.keyboard.press("Delete")
        await page.keyboard.type(text, delay=KEY_DELAY_MS)
        await page.wait_for_timeout(CHECK_PAUSE_MS)
        seen = await field.input_value(timeout=timeout_ms)
        if seen == text:
            return attempt
    raise TypingError(f"typing {text!r} into {identifier} gave {seen!r} after {tries} tries")


async def wait_text(page, identifier: str, needle: str, timeout_ms: int) -> None:
    await page.wait_for_function(
        WAIT_TEXT_JS, arg=[identifier, needle], timeout=timeout_ms, polling=POLL_MS
    )


async def wait_quiet(page, identifier: str) -> None:
    """Until the identifiers under `identifier` stay unchanged for QUIET_MS (at most
    QUIET_MAX_MS: a list still changing then is tapped anyway, as a person would)."""
    deadline = time.monotonic() + QUIET_MAX_MS / 1000
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = await page.evaluate(IDS_UNDER_JS, identifier)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= QUIET_MS / 1000:
            return
        await page.wait_for_timeout(POLL_MS)


async def open_app(page, url: str, timeout_ms: int, step_ms: int) -> None:
    """Load the app, switch Flutter's semantics tree on, wait for the new-patient field."""
    await page.goto(url, wait_until="commit", timeout=timeout_ms)
    await page.wait_for_selector(PLACEHOLDER, state="attached", timeout=timeout_ms)
    await page.evaluate(CLICK_PLACEHOLDER_JS)
    await page.wait_for_selector(
        f"{sel('new-patient-name')} input", state="attached", timeout=max(step_ms, timeout_ms)
    )


async def close_leftover_patient(page, step_ms: int) -> None:
    """After a reload: Flet may resume the same server session, so close a patient left open
    and wait for the new-patient field."""
    await page.wait_for_selector(
        f"{sel('new-patient-name')} input, {sel('close-patient')} [role=button]",
        state="attached",
        timeout=step_ms,
    )
    if await page.locator(sel("close-patient")).count():
        await tap(page, "close-patient", step_ms)
        await page.wait_for_selector(
            f"{sel('new-patient-name')} input", state="attached", timeout=step_ms
        )


async def wait_opened(page, timeout_ms: int) -> str:
    """After Create patient: the header's patient text once a patient is open."""
    handle = await page.wait_for_function(
        OPENED_JS, arg="current-patient", timeout=timeout_ms, polling=POLL_MS
    )
    return await handle.json_value()


async def wait_saved(page, timeout_ms: int) -> str:
    """After Save: the status text once it is neither the Suggest result nor "Saving…"."""
    handle = await page.wait_for_function(
        SAVE_DONE_JS, arg=["visit-status", DONE_TEXT], timeout=timeout_ms, polling=POLL_MS
    )
    return await handle.json_value()


async def timed_suggest(page, timeout_ms: int) -> dict:
    """Press Suggest with the recorder installed (SUGGEST_RECORDER_JS); its browser-clock
    stamps, the rows' identifiers and `call_ms` (Playwright's click call -> seen)."""
    await page.evaluate(SUGGEST_RECORDER_JS, DONE_TEXT)
    t_call = time.monotonic()
    await tap(page, "visit-suggest", timeout_ms)
    await page.wait_for_function(
        "() => window.__kiosk && (window.__kiosk.done !== null || window.__kiosk.failed !== null)",
        timeout=timeout_ms,
        polling=50,
    )
    call_ms = (time.monotonic() - t_call) * 1e3
    rec = await page.evaluate("() => window.__kiosk")
    if rec["failed"] is not None:
        raise AppError(f"Suggest showed {rec['failed']!r}")
    if rec["click"] is None:
        raise UnexpectedError("the Suggest click never reached the page as a pointerdown")
    rec["call_ms"] = call_ms
    return rec


async def shown_on_page(page) -> dict:
    """At an error, what could be read in 5 s each: the texts and field values of SHOWN_IDS
    (`shown`), the first 60 identifiers on the page (`identifiers`)."""
    out: dict = {}
    with contextlib.suppress(Exception):
        out["shown"] = await asyncio.wait_for(page.evaluate(SHOWN_JS, SHOWN_IDS), 5)
    with contextlib.suppress(Exception):
        ids = await asyncio.wait_for(page.evaluate(ALL_IDS_JS), 5)
        out["identifiers"] = ids[:60]
    return out
