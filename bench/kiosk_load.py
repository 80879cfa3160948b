"""Kiosk load: many clinicians on ONE pocketrec server at the same time, then a check that every
visit the UI confirmed is in the database, whole.

One app server (`app.main.run(web=True, ...)`, a fresh temp SQLite DB, the shipped bundle) on a
free 127.0.0.1 port; one headless Chromium with `--sessions` browser contexts, each its own Flet
session, driven concurrently with Playwright's asyncio API. Every context first loads the app
(all at once; a context that has not shown the new-patient field within `--load-timeout` seconds
counts as failed to load and is reported, never silently dropped). Once every context has loaded
or failed, all of them loop for `--seconds`: look a unique name up (no patient found), create
the patient with that name, add one or two diagnoses by typing words of their titles and picking
them from the type-ahead (typed again, as a person would, when the option has not shown after a
while; every such retry is recorded with what the field then held), press Suggest, accept one
or two of the suggested drug classes, press Save, wait for "Saved visit <id>", close
the patient. An iteration under way when the time is up is allowed to finish within
`--grace` seconds; after that everything still running is cancelled (global deadline), and a
watchdog thread kills the server and exits if even that hangs.

Per visit it records the Suggest latency on the browser's clock (a capture listener stamps the
click's `pointerdown`, a MutationObserver stamps the first DOM batch in which the status line
says "... at or above the threshold" and the suggestion rows are there, the way
bench/app_latency.py detects a refreshed list), any error or timeout with the step it happened
in, and, only after the status line confirms the save, the patient's name and the visit id
prefix the UI showed.

Flutter web paints on a canvas; its semantics tree (switched on by clicking the
`flt-semantics-placeholder` element) mirrors the widgets as elements whose
`flt-semantics-identifier` attribute is the app's `ft.Semantics(identifier=...)`: the selectors
use that. Every request not addressed to the app's own server is aborted with `page.route`. The
server, Chromium, the page's JavaScript probes and the CPU accounting come from
bench/flet_driver.py, shared with bench/app_latency.py and the browser tests.

After the run the server is stopped and the database opened with `app.history.History`: for
each session's patients, every confirmed visit must be there (else it is LOST) and whole: its
suggestions, its decisions and its `save_visit` audit row (else PARTIAL); `PRAGMA
integrity_check` must say ok. The exit status is 1 when anything is lost or partial, when the
integrity check fails, when a visit's content differs from what was entered or when a patient
the UI confirmed is missing; 2 when the run could not be made at all.

Usage: python bench/kiosk_load.py [--sessions 20] [--seconds 120]
Writes bench/results/kiosk_load.json (atomically): config, machine, raw samples, the DB check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.history import History  # noqa: E402
from bench import flet_driver as fd  # noqa: E402
from bench.flet_driver import (  # noqa: E402
    CHECK_PAUSE_MS,
    CHROMIUM_ARGS,
    DONE_TEXT,
    FOCUS_PAUSE_MS,
    HOST,
    KEY_DELAY_MS,
    TEXT_BY_ID_JS,
    VIEWPORT,
    AppServer,
    SetupError,
    TypingError,
    ident,
    sel,
)

BUNDLE = fd.SHIPPED_BUNDLE
OUT = ROOT / "bench" / "results" / "kiosk_load.json"
FOCUS_WAIT_MS = 10_000  # no focus in the field by then: click it again
QUIET_MS = 400  # type-ahead options unchanged this long: the server has answered every key
QUIET_MAX_MS = 6_000
POLL_MS = 100
SAVED_RE = re.compile(r"Saved visit ([0-9a-f]{8})")
DX_POOL = 40  # frequent diagnoses to draw from
OPTION_WAIT_MS = 10_000  # no type-ahead option by then: look at the field, type again
TYPEAHEAD_TRIES = 3

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
SHOWN_IDS = [
    "current-patient",
    "new-patient-error",
    "patient-search",
    "new-patient-name",
    "dx-search",
    "visit-status",
]
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


class HarnessError(RuntimeError):
    """Something the app showed that the script did not expect (kind "unexpected")."""


class AppError(RuntimeError):
    """The app itself reported a failure in its status line (kind "app-error")."""


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
        now = await page.evaluate(fd.IDS_UNDER_JS, identifier)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= QUIET_MS / 1000:
            return
        await page.wait_for_timeout(POLL_MS)


async def open_app(page, url: str, timeout_ms: int, step_ms: int) -> None:
    """Load the app, switch Flutter's semantics tree on, wait for the new-patient field."""
    await page.goto(url, wait_until="commit", timeout=timeout_ms)
    await page.wait_for_selector(fd.PLACEHOLDER, state="attached", timeout=timeout_ms)
    await page.evaluate(fd.CLICK_PLACEHOLDER_JS)
    await page.wait_for_selector(
        f"{sel('new-patient-name')} input", state="attached", timeout=max(step_ms, timeout_ms)
    )


# ------------------------------------------------------------------ one session


class KioskSession:
    """What a session keeps in either kiosk driver (this script's browser contexts, the
    protocol clients of bench/kiosk_protocol_load.py): its load state, the samples and
    patients `check_database` reads, and the loop of visits."""

    def __init__(self, index: int, url: str, pool: list[tuple[str, str]], seed: int):
        self.index = index
        self.url = url
        self.pool = pool
        self.rng = random.Random(seed * 1000 + index)
        self.loaded = False
        self.load_s: float | None = None
        self.load_error: str | None = None
        self.settled = asyncio.Event()
        self.samples: list[dict] = []
        self.patients: list[dict] = []
        self.dead: str | None = None

    async def one_visit(self, iteration: int, window_start: float) -> bool:
        raise NotImplementedError

    async def recover(self) -> None:
        raise NotImplementedError

    async def visits(self, go: asyncio.Event, window: dict) -> None:
        """Once `go` is set: visit after visit until the window ends or the session is dead;
        after a failed one, `recover()`."""
        await go.wait()
        if not self.loaded:
            return
        iteration = 0
        while time.monotonic() < window["end"] and self.dead is None:
            iteration += 1
            ok = await self.one_visit(iteration, window["start"])
            if not ok and time.monotonic() < window["end"]:
                await self.recover()

    def new_visit(
        self, iteration: int, name: str, chosen: list[tuple[str, str]], window_start: float, **extra
    ) -> tuple[dict, dict]:
        """The records of a visit about to start, kept: its sample (`extra`: the driver's own
        fields) and its new patient."""
        sample: dict = {
            "session": self.index,
            "iteration": iteration,
            "patient": name,
            "diagnoses": [code for code, _ in chosen],
            "typed": [query for _, query in chosen],
            "accepted": [],
            "t_start_s": time.monotonic() - window_start,
            "t_end_s": None,
            "visit_s": None,
            **extra,
            "suggest_ms": None,
            "click_to_scoring_ms": None,
            "rows": None,
            "patient_confirmed": False,
            "visit_prefix": None,
            "save_confirmed": False,
            "save_ms": None,
            "step": "new-patient",
            "error": None,
        }
        patient = {
            "name": name,
            "created_confirmed": False,
            "visits_believed_saved": 0,
            "visit_prefixes": [],
        }
        self.samples.append(sample)
        self.patients.append(patient)
        return sample, patient

    def give_up(self, step: str, kind: str, message: str) -> None:
        """`step`, bringing the session back after a failure, failed too: the session stops,
        recorded as an error."""
        self.dead = f"{step} failed: {kind}: {message}"
        error = {"kind": f"{kind}:{step}", "message": message}
        self.samples.append(
            {"session": self.index, "iteration": None, "step": step, "error": error}
        )


class Session(KioskSession):
    """One browser context = one Flet session = one clinician at a kiosk."""

    def __init__(self, index: int, args, url: str, pool: list[tuple[str, str]], seed: int):
        super().__init__(index, url, pool, seed)
        self.args = args
        self.step_ms = int(args.step_timeout * 1000)
        self.context = None
        self.page = None
        self.blocked: Counter[str] = Counter()
        self.external_websockets: list[str] = []
        self.reloads = 0

    async def offline(self, route) -> None:
        url = route.request.url
        if fd.is_app_request(url, self.url):
            await route.continue_()
        else:
            self.blocked[url] += 1
            await route.abort()

    def on_websocket(self, ws) -> None:
        if not ws.url.startswith(f"ws://{HOST}:"):
            self.external_websockets.append(ws.url)

    async def load(self, browser, t0: float) -> None:
        try:
            self.context = await browser.new_context(viewport=VIEWPORT, service_workers="block")
            self.page = await self.context.new_page()
            await self.page.route("**/*", self.offline)
            self.page.on("websocket", self.on_websocket)
            timeout_ms = int(self.args.load_timeout * 1000)
            await asyncio.wait_for(
                open_app(self.page, self.url, timeout_ms, self.step_ms),
                self.args.load_timeout + 5,
            )
            self.loaded = True
            self.load_s = time.monotonic() - t0
        except Exception as exc:  # reported, not raised: the other sessions go on
            self.load_error = f"{error_kind(exc)}: {short(exc)}"
            self.load_s = time.monotonic() - t0
        finally:
            self.settled.set()

    async def run(self, browser, t0: float, go: asyncio.Event, window: dict) -> None:
        await self.load(browser, t0)
        await self.visits(go, window)

    async def recover(self) -> None:
        """After a failure: reload the page (a new Flet session) and go on from the start."""
        self.reloads += 1
        try:
            await asyncio.wait_for(
                open_app(self.page, self.url, int(self.args.load_timeout * 1000), self.step_ms),
                self.args.load_timeout + 5,
            )
        except Exception as exc:
            self.give_up("reload", error_kind(exc), short(exc))
            return
        # Flet may resume the same server session after a reload: close a patient left open
        try:
            await self.page.wait_for_selector(
                f"{sel('new-patient-name')} input, {sel('close-patient')} [role=button]",
                state="attached",
                timeout=self.step_ms,
            )
            if await self.page.locator(sel("close-patient")).count():
                await tap(self.page, "close-patient", self.step_ms)
                await self.page.wait_for_selector(
                    f"{sel('new-patient-name')} input", state="attached", timeout=self.step_ms
                )
        except Exception as exc:
            self.give_up("reload", error_kind(exc), short(exc))

    async def one_visit(self, iteration: int, window_start: float) -> bool:
        page, ms = self.page, self.step_ms
        name = f"Kiosk S{self.index:02d} P{iteration:03d}"
        chosen = self.rng.sample(self.pool, self.rng.choice((1, 2)))
        extra = {"retypes": 0, "typeahead_retries": [], "suggest_call_ms": None}
        sample, patient = self.new_visit(iteration, name, chosen, window_start, **extra)
        started = time.monotonic()
        try:
            # look the name up first, as at a front desk: the list of everyone shrinks to "No
            # patient found" and the new-patient form stays where it is on screen (under a long
            # list it is below the fold, and a click there can land on another patient's row)
            sample["retypes"] += await type_text(page, "patient-search", name, ms)
            await wait_node(page, "patient-none", ms)
            sample["retypes"] += await type_text(page, "new-patient-name", name, ms)
            await tap(page, "new-patient-create", ms)
            handle = await page.wait_for_function(
                OPENED_JS, arg="current-patient", timeout=ms, polling=POLL_MS
            )
            shown = await handle.json_value()
            if name not in shown:
                raise HarnessError(f"Create patient opened {shown!r}, not {name!r}")
            await wait_node(page, "dx-search", ms)
            patient["created_confirmed"] = sample["patient_confirmed"] = True

            sample["step"] = "diagnosis"
            for code, query in chosen:
                await self.add_diagnosis(sample, code, query)

            sample["step"] = "suggest"
            rec = await self.timed_suggest()
            sample["suggest_ms"] = rec["done"] - rec["click"]
            sample["suggest_call_ms"] = rec["call_ms"]
            if rec["scoring"] is not None:
                sample["click_to_scoring_ms"] = rec["scoring"] - rec["click"]
            rows = [r.removeprefix("suggestion-") for r in rec["rows"]]
            sample["rows"] = len(rows)

            sample["step"] = "accept"
            for code in rows[: min(len(rows), self.rng.choice((1, 2)))]:
                await tap(page, ident("accept", code), ms)
                await wait_text(page, ident("status", code), "Accepted", ms)
                sample["accepted"].append(code)

            sample["step"] = "save"
            t_save = time.monotonic()
            await tap(page, "visit-save", ms)
            handle = await page.wait_for_function(
                SAVE_DONE_JS, arg=["visit-status", DONE_TEXT], timeout=ms, polling=POLL_MS
            )
            status = await handle.json_value()
            saved = SAVED_RE.search(status or "")
            if saved is None:
                raise AppError(f"Save showed {status!r}")
            sample["save_ms"] = (time.monotonic() - t_save) * 1e3
            sample["visit_prefix"] = saved.group(1)
            sample["save_confirmed"] = True
            patient["visits_believed_saved"] += 1
            patient["visit_prefixes"].append(saved.group(1))

            sample["step"] = "close-patient"
            await tap(page, "close-patient", ms)
            await wait_node(page, "new-patient-name", ms)
            await page.wait_for_selector(
                f"{sel('new-patient-name')} input", state="attached", timeout=ms
            )
            sample["step"] = "done"
            return True
        except asyncio.CancelledError:
            sample["error"] = {"kind": f"cut-at-deadline:{sample['step']}", "message": ""}
            raise
        except Exception as exc:
            sample["error"] = {
                "kind": f"{error_kind(exc)}:{sample['step']}",
                "message": short(exc),
            }
            with contextlib.suppress(Exception):
                shown = await asyncio.wait_for(page.evaluate(SHOWN_JS, SHOWN_IDS), 5)
                sample["error"]["shown"] = shown
            with contextlib.suppress(Exception):
                ids = await asyncio.wait_for(page.evaluate(fd.ALL_IDS_JS), 5)
                sample["error"]["identifiers"] = ids[:60]
            return False
        finally:
            sample["t_end_s"] = time.monotonic() - window_start
            sample["visit_s"] = time.monotonic() - started

    async def add_diagnosis(self, sample: dict, code: str, query: str) -> None:
        """Type words of the title and pick the code from the type-ahead. When the option has
        not shown within OPTION_WAIT_MS, look at the field and type again, as a person would
        (at most TYPEAHEAD_TRIES times); each such retry is recorded with what the field held."""
        page, ms = self.page, self.step_ms
        option = ident("dx", "option", code)
        field = page.locator(f"{sel('dx-search')} input").first
        for attempt in range(1, TYPEAHEAD_TRIES + 1):
            sample["retypes"] += await type_text(page, "dx-search", query, ms)
            try:
                await wait_node(page, option, OPTION_WAIT_MS)
                break
            except Exception as exc:
                if error_kind(exc) != "timeout":
                    raise
                held = None
                with contextlib.suppress(Exception):
                    held = await field.input_value(timeout=5_000)
                sample["typeahead_retries"].append({"typed": query, "field_held": held})
                if attempt == TYPEAHEAD_TRIES:
                    raise TimeoutError(
                        f"option {option} not shown after typing {query!r} {attempt} times; "
                        f"the field then held {held!r}"
                    ) from exc
        await wait_quiet(page, "dx-options")
        await tap(page, option, ms)
        await wait_node(page, ident("dx", "chip", code), ms)

    async def timed_suggest(self) -> dict:
        page, ms = self.page, self.step_ms
        await page.evaluate(SUGGEST_RECORDER_JS, DONE_TEXT)
        t_call = time.monotonic()
        await tap(page, "visit-suggest", ms)
        await page.wait_for_function(
            "() => window.__kiosk && (window.__kiosk.done !== null"
            " || window.__kiosk.failed !== null)",
            timeout=ms,
            polling=50,
        )
        call_ms = (time.monotonic() - t_call) * 1e3
        rec = await page.evaluate("() => window.__kiosk")
        if rec["failed"] is not None:
            raise AppError(f"Suggest showed {rec['failed']!r}")
        if rec["click"] is None:
            raise HarnessError("the Suggest click never reached the page as a pointerdown")
        rec["call_ms"] = call_ms
        return rec


def error_kind(exc: BaseException) -> str:
    from playwright.async_api import TimeoutError as PlaywrightTimeoutError

    if isinstance(exc, PlaywrightTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, AppError):
        return "app-error"
    if isinstance(exc, TypingError):
        return "typing"
    if isinstance(exc, HarnessError):
        return "unexpected"
    return type(exc).__name__


def short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text[:limit]


# ------------------------------------------------------------------ the whole drive


async def drive(args, server: AppServer, pool, hard_deadline: float) -> dict:
    """Launch Chromium, run every session, close everything; returns what was measured."""
    from playwright.async_api import async_playwright

    out: dict = {"sessions": [], "browser": {}}
    sessions = [Session(i + 1, args, server.url, pool, args.seed) for i in range(args.sessions)]
    window: dict = {"start": None, "end": None}
    go = asyncio.Event()
    async with async_playwright() as pw:
        t = time.monotonic()
        browser = await fd.launch_chromium(pw)
        out["browser"] = {"launch_s": time.monotonic() - t, "version": browser.version}
        tasks: list[asyncio.Task] = []
        try:
            t0 = time.monotonic()
            tasks = [asyncio.create_task(s.run(browser, t0, go, window)) for s in sessions]
            await fd.run_window(
                out,
                sessions,
                tasks,
                go,
                window,
                t0=t0,
                load_backstop_s=args.load_timeout + 60,
                seconds=args.seconds,
                grace_s=args.grace,
                hard_deadline=hard_deadline,
                server_pid=server.proc.pid if server.proc else None,
                describe=lambda exc: f"{error_kind(exc)}: {short(exc)}",
            )
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            for s in sessions:
                if s.context is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(s.context.close(), 30)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), 60)
    out["sessions"] = sessions
    out["window"] = window
    return out


# ------------------------------------------------------------------ the database check


def check_database(db: Path, sessions: list[Session]) -> dict:
    """Every confirmed visit present and whole; content as entered; integrity_check."""
    report: dict = {
        "visits_confirmed": 0,
        "visits_in_db": 0,
        "visits_in_db_total": 0,
        "lost": 0,
        "partial": 0,
        "mismatched": 0,
        "unconfirmed_in_db": 0,
        "patients_attempted": 0,
        "patients_confirmed": 0,
        "patients_confirmed_missing": 0,
        "patients_duplicated": 0,
        "problems": [],
    }
    expected: dict[str, list[dict]] = {}
    for s in sessions:
        for sample in s.samples:
            if sample.get("save_confirmed"):
                expected.setdefault(sample["patient"], []).append(sample)
    history = History(db)
    try:
        for s in sessions:
            for patient in s.patients:
                name = patient["name"]
                report["patients_attempted"] += 1
                report["patients_confirmed"] += patient["created_confirmed"]
                rows = [r for r in history.search_patients(name) if r["display_name"] == name]
                if len(rows) > 1:
                    report["patients_duplicated"] += 1
                    report["problems"].append(f"{name}: {len(rows)} patients with this name")
                if not rows and patient["created_confirmed"]:
                    report["patients_confirmed_missing"] += 1
                    report["problems"].append(f"{name}: confirmed by the UI, not in the DB")
                visits, audit_ids = [], set()
                for row in rows:
                    visits += history.timeline(row["id"])
                    audit_ids |= {
                        a["visit_id"]
                        for a in history.audit(row["id"])
                        if a["action"] == "save_visit"
                    }
                report["visits_in_db"] += len(visits)
                by_prefix = {v["id"][:8]: v for v in visits}
                for v in visits:
                    whole = bool(v["suggestions"]) and bool(v["decisions"]) and v["id"] in audit_ids
                    if not whole:
                        report["partial"] += 1
                        report["problems"].append(
                            f"{name}: visit {v['id'][:8]} is partial (suggestions "
                            f"{len(v['suggestions'])}, decisions {len(v['decisions'])}, audit "
                            f"{v['id'] in audit_ids})"
                        )
                confirmed = expected.get(name, [])
                report["visits_confirmed"] += len(confirmed)
                matched = set()
                for sample in confirmed:
                    visit = by_prefix.get(sample["visit_prefix"])
                    if visit is None:
                        report["lost"] += 1
                        report["problems"].append(
                            f"{name}: confirmed visit {sample['visit_prefix']} is LOST"
                        )
                        continue
                    matched.add(visit["id"])
                    accepted = sorted(
                        ident(c) for c, d in visit["decisions"].items() if d == "accepted"
                    )
                    if visit["diagnoses"] != sample["diagnoses"] or accepted != sorted(
                        sample["accepted"]
                    ):
                        report["mismatched"] += 1
                        report["problems"].append(
                            f"{name}: visit {visit['id'][:8]} has diagnoses {visit['diagnoses']} "
                            f"accepted {accepted}; entered {sample['diagnoses']} "
                            f"accepted {sorted(sample['accepted'])}"
                        )
                report["unconfirmed_in_db"] += len([v for v in visits if v["id"] not in matched])
        (report["visits_in_db_total"],) = history.db.conn.execute(
            "SELECT count(*) FROM visits"
        ).fetchone()
    finally:
        history.close()
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        report["integrity_check"] = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        counts = {}
        for table in ("patients", "visits", "suggestions", "decisions", "audit"):
            (counts[table],) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        report["table_rows"] = counts
    finally:
        conn.close()
    report["problems"] = report["problems"][:200]
    return report


def db_failures(db_check: dict) -> list[str]:
    """What `check_database` found wrong, as the verdict names it."""
    failures = [
        f"{db_check[key]} {label}"
        for key, label in (
            ("lost", "lost"),
            ("partial", "partial"),
            ("mismatched", "mismatched"),
            ("patients_confirmed_missing", "confirmed patients missing"),
        )
        if db_check[key]
    ]
    if db_check["integrity_check"] != ["ok"]:
        failures.append("integrity_check not ok")
    return failures


# ------------------------------------------------------------------ report


def fmt_ms(st: dict, key: str) -> str:
    return f"{st[key]:.0f} ms" if st.get("n") else "n/a"


def table(result: dict) -> str:
    s = result["summary"]
    db = result["db_check"]
    lat = s["suggest_ms"]
    sessions = str(s["sessions_requested"])
    if s["sessions_loaded"] != s["sessions_requested"]:
        sessions += f" ({s['sessions_loaded']} loaded)"
    errors = "; ".join(f"{k} ×{n}" for k, n in sorted(s["errors_by_kind"].items())) or "none"
    head = [
        "sessions",
        "seconds",
        "visits confirmed",
        "visits in DB",
        "lost",
        "partial",
        "errors/timeouts by kind",
        "suggest p50",
        "suggest p95",
        "suggest max",
        "visits/min",
    ]
    row = [
        sessions,
        f"{s['seconds']:g}",
        str(db["visits_confirmed"]),
        str(db["visits_in_db"]),
        str(db["lost"]),
        str(db["partial"]),
        errors,
        fmt_ms(lat, "p50"),
        fmt_ms(lat, "p95"),
        fmt_ms(lat, "max"),
        f"{s['visits_per_min']:.1f}",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| " + " | ".join(row) + " |",
        "",
    ]
    call = s["suggest_call_ms"]
    visit = s["visit_s"]
    lines.append(
        f"Suggest latency: browser clock, Suggest pointerdown -> refreshed list and status in "
        f"the DOM (n={lat.get('n', 0)}); Playwright click call -> seen: p50 "
        f"{fmt_ms(call, 'p50')}, p95 {fmt_ms(call, 'p95')}."
    )
    if visit.get("n"):
        lines.append(
            f"One whole visit (type name, create, 1-2 diagnoses, Suggest, accept, Save, close): "
            f"p50 {visit['p50']:.1f} s, p95 {visit['p95']:.1f} s (confirmed visits)."
        )
    load = s["load_s"]
    if load.get("n"):
        lines.append(
            f"Sessions loaded {s['sessions_loaded']}/{s['sessions_requested']} (all started at "
            f"once; slowest ready after {load['max']:.1f} s, load timeout "
            f"{result['config']['load_timeout_s']:g} s)."
        )
    for failure in s["load_failures"][:5]:
        lines.append(f"Load failure: {failure}")
    lines.append(
        f"Measured window {s['window_s']:.1f} s (iterations started before {s['seconds']:g} s "
        f"may finish within the {result['config']['grace_s']:g} s grace); "
        f"{s['iterations']} visits started, {s['reloads']} page reloads after errors, "
        f"{s['cut_at_deadline']} sessions cut at the deadline."
    )
    lines.append(
        f"Type-ahead: the option had not shown {OPTION_WAIT_MS / 1000:g} s after typing "
        f"{s['typeahead_retries']} times (typed again each time); in "
        f"{s['typeahead_text_lost']} of them the field no longer held the text that had been "
        f"typed and read back. Fields typed again because they read back wrong at once: "
        f"{s['retypes_on_readback']}."
    )
    busy = s.get("machine_busy")
    split = s.get("cpu_share_by_group")
    if busy is not None:
        extra = ""
        if split:
            parts = [f"{g} {v:.2f}" for g, v in sorted(split.items(), key=lambda kv: -kv[1])]
            extra = " (in CPUs: " + ", ".join(parts) + ")"
        lines.append(
            f"Machine CPU busy during the window: {busy:.0%} of {result['machine']['cpus']} "
            f"CPUs{extra}."
        )
    lines.append(
        f"DB check: visits in DB for these patients {db['visits_in_db']} (whole DB "
        f"{db['visits_in_db_total']}), saved but not confirmed {db['unconfirmed_in_db']}, "
        f"content mismatches {db['mismatched']}, confirmed patients missing "
        f"{db['patients_confirmed_missing']}, duplicated {db['patients_duplicated']}; "
        f"integrity_check: {', '.join(db['integrity_check'])}."
    )
    blocked = result["blocked_requests"]
    lines.append(
        "Requests to other hosts (aborted): "
        + (", ".join(f"{u} ×{n}" for u, n in blocked.items()) or "none")
    )
    lines.append(f"Verdict: {result['verdict']}.")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20, help="concurrent browser contexts")
    ap.add_argument("--seconds", type=float, default=120.0, help="how long each session loops")
    ap.add_argument("--load-timeout", type=float, default=240.0, help="per context, seconds")
    ap.add_argument("--step-timeout", type=float, default=30.0, help="per UI step, seconds")
    ap.add_argument("--grace", type=float, default=90.0, help="to finish the last visit")
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.sessions < 1 or args.seconds <= 0:
        ap.error("--sessions must be at least 1 and --seconds positive")
    missing = fd.chromium_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    bundle = args.bundle.resolve()
    pool = fd.diagnosis_pool(bundle, DX_POOL)

    fd.exit_on_sigterm()
    started = time.monotonic()
    budget = args.load_timeout + 60 + args.seconds + args.grace + 30
    hard_deadline = started + budget
    holder: dict = {}
    watchdog = fd.start_watchdog(budget + 90, holder)

    with tempfile.TemporaryDirectory(prefix="pocketrec-kiosk-load-") as tmp_name:
        server = AppServer(bundle, Path(tmp_name))
        holder["server"] = server
        try:
            server.start()
            server_start_s = server.wait_ready()
            run = asyncio.run(drive(args, server, pool, hard_deadline))
        except (HarnessError, SetupError) as exc:
            print(f"cannot run: {exc}", file=sys.stderr)
            return 2
        finally:
            server_rc = server.stop()
            holder["server"] = None
        server_log = server.log_tail(6000)
        db_check = check_database(server.db, run["sessions"])
    watchdog.cancel()

    sessions: list[Session] = run["sessions"]
    samples = [x for s in sessions for x in s.samples]
    visits = [x for x in samples if x.get("iteration") is not None]
    errors = Counter(x["error"]["kind"] for x in samples if x.get("error"))
    for s in sessions:
        if s.load_error is not None:
            errors[s.load_error.split(":", 1)[0] + ":load"] += 1
    blocked: Counter[str] = Counter()
    for s in sessions:
        blocked.update(s.blocked)
    busy, cpu_split = fd.cpu_shares(run, run["window_s"])
    confirmed = [x for x in visits if x["save_confirmed"]]
    retries = [r for x in visits for r in x.get("typeahead_retries", [])]
    summary = {
        "sessions_requested": args.sessions,
        "sessions_loaded": sum(s.loaded for s in sessions),
        "load_failures": [f"session {s.index}: {s.load_error}" for s in sessions if s.load_error],
        "load_s": fd.summarize([s.load_s for s in sessions if s.loaded]),
        "seconds": args.seconds,
        "window_s": run["window_s"],
        "iterations": len(visits),
        "visits_confirmed_by_ui": len(confirmed),
        "reloads": sum(s.reloads for s in sessions),
        "typeahead_retries": len(retries),
        "typeahead_text_lost": sum(r["field_held"] != r["typed"] for r in retries),
        "retypes_on_readback": sum(x.get("retypes", 0) for x in visits),
        "dead_sessions": [f"session {s.index}: {s.dead}" for s in sessions if s.dead],
        "cut_at_deadline": run["cut_at_deadline"],
        "errors_by_kind": dict(errors),
        "suggest_ms": fd.summarize(
            [x["suggest_ms"] for x in visits if x["suggest_ms"] is not None]
        ),
        "suggest_call_ms": fd.summarize(
            [x["suggest_call_ms"] for x in visits if x["suggest_call_ms"] is not None]
        ),
        "save_ms": fd.summarize([x["save_ms"] for x in confirmed]),
        "visit_s": fd.summarize([x["visit_s"] for x in confirmed]),
        "visits_per_min": len(confirmed) / (run["window_s"] / 60.0),
        "machine_busy": busy,
        "cpu_share_by_group": cpu_split,
    }
    failures = db_failures(db_check)
    verdict = "FAIL (" + ", ".join(failures) + ")" if failures else "PASS (nothing lost or partial)"
    if summary["sessions_loaded"] < args.sessions:
        verdict += (
            f"; only {summary['sessions_loaded']} of {args.sessions} sessions loaded: "
            "this machine did not sustain the requested load"
        )
    machine = fd.machine_info()
    machine["chromium"] = run["browser"].get("version")
    machine["loadavg_end"] = run.get("loadavg_end")
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": os.path.relpath(bundle, ROOT),
        "config": {
            "sessions": args.sessions,
            "seconds": args.seconds,
            "load_timeout_s": args.load_timeout,
            "step_timeout_s": args.step_timeout,
            "grace_s": args.grace,
            "seed": args.seed,
            "viewport": VIEWPORT,
            "chromium_args": CHROMIUM_ARGS,
            "key_delay_ms": KEY_DELAY_MS,
            "diagnosis_pool": [{"code": c, "typed": q} for c, q in pool],
            "server_start_s": server_start_s,
            "server_exit_code": server_rc,
            "browser_launch_s": run["browser"].get("launch_s"),
            "load_phase_s": run.get("load_phase_s"),
            "wall_s": time.monotonic() - started,
        },
        "machine": machine,
        "method": {
            "load": "All contexts created and loading at once; each must show the new-patient "
            "field (semantics on) within the load timeout. The loop window starts once every "
            "context has loaded or failed.",
            "visit": "Type a unique patient name into Find a patient until 'No patient found', "
            "type it as the new patient's name, Create patient, wait for it in the header (a "
            "different patient there is an error at once); 1 or 2 diagnoses (random, from "
            "frequent ones): type words of the title, wait for the option (typed again after "
            f"{OPTION_WAIT_MS / 1000:g} s without it, at most {TYPEAHEAD_TRIES} times, each "
            "retry recorded with what the field held) and for the list to settle, tap it, wait "
            "for its chip; Suggest; accept "
            "the first 1 or 2 rows, each until its status reads Accepted; Save until the status "
            "line reads 'Saved visit <8 hex>' (only then it counts as confirmed); Close patient.",
            "suggest_latency": "Browser clock: capture-phase pointerdown of the Suggest click "
            "-> first DOM mutation batch in which the status line says 'at or above the "
            "threshold' and suggestion rows are present (the rows present before, if any, "
            "detached).",
            "errors": "kind:step; 'timeout' = a Playwright wait ran past the step timeout, "
            "'app-error' = the app showed an error in its status line, 'typing' = a field did "
            "not read back the typed text in 3 tries (each: click, focus, select all, delete, "
            "type), 'unexpected' = the page "
            "showed something else than expected, 'cut-at-deadline' = still running at the end "
            "of the grace period. After an error the page is reloaded (a new Flet session).",
            "db_check": "Server stopped, then app.history.History on the DB: patients looked up "
            "by exact name; a confirmed visit is matched by the id prefix the UI showed; lost = "
            "confirmed but absent; partial = any visit of these patients lacking suggestions, "
            "decisions or its save_visit audit row; mismatched = diagnoses or accepted drugs "
            "differ from what was entered; then PRAGMA integrity_check.",
            "offline": "page.route aborts every request not addressed to the app server.",
        },
        "summary": summary,
        "db_check": db_check,
        "verdict": verdict,
        "blocked_requests": dict(blocked),
        "external_websockets": sorted({u for s in sessions for u in s.external_websockets}),
        "sessions": [
            {
                "session": s.index,
                "loaded": s.loaded,
                "load_s": s.load_s,
                "load_error": s.load_error,
                "reloads": s.reloads,
                "dead": s.dead,
                "patients": s.patients,
            }
            for s in sessions
        ],
        "samples": samples,
        "task_errors": run.get("task_errors", []),
        "server_log_tail": server_log,
    }
    result["table_markdown"] = table(result)
    fd.write_json_atomic(args.out, result)
    print(result["table_markdown"])
    print(
        f"\nwrote {os.path.relpath(args.out.resolve(), ROOT)} ({result['config']['wall_s']:.0f} s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
