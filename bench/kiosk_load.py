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

The selectors are the app's `ft.Semantics(identifier=...)` test identifiers in Flutter's
semantics tree (see bench/harness/browser.py). Every request not addressed to the app's own
server is aborted with `page.route`. The server, Chromium, the page helpers and probes
(bench/harness/browser_async.py), the session loop and the CPU accounting come from
bench/harness/, shared with bench/kiosk_protocol_load.py, bench/app_latency.py and the browser
tests.

After the run the server is stopped and the database checked (bench/harness/kiosk_session.py
`check_database`): for each session's patients, every confirmed visit must be there (else it is
LOST) and whole: its suggestions, its decisions and its `save_visit` audit row (else PARTIAL);
`PRAGMA integrity_check` must say ok. The exit status is 1 when anything is lost or partial,
when the integrity check fails, when a visit's content differs from what was entered or when a
patient the UI confirmed is missing; 2 when the run could not be made at all.

Usage: python bench/kiosk_load.py [--sessions 20] [--seconds 120]
Writes bench/results/kiosk_load.json (atomically): config, machine, raw samples, the DB check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness.app_ui import SAVED_RE, ident  # noqa: E402
from bench.harness.browser import (  # noqa: E402
    CHROMIUM_ARGS,
    KEY_DELAY_MS,
    VIEWPORT,
    chromium_missing,
    is_app_request,
    launch_chromium,
    sel,
)
from bench.harness.browser_async import (  # noqa: E402
    close_leftover_patient,
    error_kind,
    open_app,
    shown_on_page,
    tap,
    timed_suggest,
    type_text,
    wait_node,
    wait_opened,
    wait_quiet,
    wait_saved,
    wait_text,
)
from bench.harness.bundles import diagnosis_pool  # noqa: E402
from bench.harness.db_check import db_failures  # noqa: E402
from bench.harness.errors import AppError, SetupError, UnexpectedError  # noqa: E402
from bench.harness.errors import short as short_message  # noqa: E402
from bench.harness.kiosk_session import (  # noqa: E402
    DX_POOL,
    KioskSession,
    common_summary,
    fmt_ms,
    markdown_table,
    run_sessions,
    serve_and_check,
    session_errors,
    session_record,
    visits_of,
)
from bench.harness.measure import machine_info, summarize  # noqa: E402
from bench.harness.script import exit_on_sigterm  # noqa: E402
from bench.harness.server import HOST, SHIPPED_BUNDLE, AppServer  # noqa: E402
from contract.files import atomic_write_json  # noqa: E402

BUNDLE = SHIPPED_BUNDLE
OUT = ROOT / "bench" / "results" / "kiosk_load.json"
OPTION_WAIT_MS = 10_000  # no type-ahead option by then: look at the field, type again
TYPEAHEAD_TRIES = 3
SHORT = 300  # characters of an error message kept


def short(exc: BaseException) -> str:
    return short_message(exc, SHORT)


# ------------------------------------------------------------------ one session


class Session(KioskSession):
    """One browser context = one Flet session = one clinician at a kiosk."""

    def __init__(self, index: int, args, url: str, pool: list[tuple[str, str]], browser):
        super().__init__(index, url, pool, args.seed)
        self.args = args
        self.browser = browser
        self.step_ms = int(args.step_timeout * 1000)
        self.context = None
        self.page = None
        self.blocked: Counter[str] = Counter()
        self.external_websockets: list[str] = []
        self.reloads = 0

    async def offline(self, route) -> None:
        url = route.request.url
        if is_app_request(url, self.url):
            await route.continue_()
        else:
            self.blocked[url] += 1
            await route.abort()

    def on_websocket(self, ws) -> None:
        if not ws.url.startswith(f"ws://{HOST}:"):
            self.external_websockets.append(ws.url)

    async def open(self) -> None:
        self.context = await self.browser.new_context(viewport=VIEWPORT, service_workers="block")
        self.page = await self.context.new_page()
        await self.page.route("**/*", self.offline)
        self.page.on("websocket", self.on_websocket)
        timeout_ms = int(self.args.load_timeout * 1000)
        await asyncio.wait_for(
            open_app(self.page, self.url, timeout_ms, self.step_ms), self.args.load_timeout + 5
        )

    def describe_error(self, exc: BaseException) -> tuple[str, str]:
        return error_kind(exc), short(exc)

    async def shown_at_error(self) -> dict:
        return await shown_on_page(self.page)

    def visit_fields(self) -> dict:
        return {"retypes": 0, "typeahead_retries": [], "suggest_call_ms": None}

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
        try:
            await close_leftover_patient(self.page, self.step_ms)
        except Exception as exc:
            self.give_up("reload", error_kind(exc), short(exc))

    async def visit_steps(self, sample: dict, patient: dict, name: str, chosen: list) -> None:
        page, ms = self.page, self.step_ms
        # look the name up first, as at a front desk: the list of everyone shrinks to "No
        # patient found" and the new-patient form stays where it is on screen (under a long
        # list it is below the fold, and a click there can land on another patient's row)
        sample["retypes"] += await type_text(page, "patient-search", name, ms)
        await wait_node(page, "patient-none", ms)
        sample["retypes"] += await type_text(page, "new-patient-name", name, ms)
        await tap(page, "new-patient-create", ms)
        shown = await wait_opened(page, ms)
        if name not in shown:
            raise UnexpectedError(f"Create patient opened {shown!r}, not {name!r}")
        await wait_node(page, "dx-search", ms)
        patient["created_confirmed"] = sample["patient_confirmed"] = True

        sample["step"] = "diagnosis"
        for code, query in chosen:
            await self.add_diagnosis(sample, code, query)

        sample["step"] = "suggest"
        rec = await timed_suggest(page, ms)
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
        status = await wait_saved(page, ms)
        saved = SAVED_RE.search(status or "")
        if saved is None:
            raise AppError(f"Save showed {status!r}")
        save_ms = (time.monotonic() - t_save) * 1e3
        self.record_saved(sample, patient, saved.group(1), save_ms)

        sample["step"] = "close-patient"
        await tap(page, "close-patient", ms)
        await wait_node(page, "new-patient-name", ms)
        await page.wait_for_selector(
            f"{sel('new-patient-name')} input", state="attached", timeout=ms
        )

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


# ------------------------------------------------------------------ the whole drive


async def drive(args, server: AppServer, pool, hard_deadline: float) -> dict:
    """Launch Chromium, run every session, close everything; returns what was measured."""
    from playwright.async_api import async_playwright

    out: dict = {"sessions": [], "browser": {}}
    async with async_playwright() as pw:
        t = time.monotonic()
        browser = await launch_chromium(pw)
        out["browser"] = {"launch_s": time.monotonic() - t, "version": browser.version}
        sessions = [Session(i + 1, args, server.url, pool, browser) for i in range(args.sessions)]
        try:
            await run_sessions(
                out,
                sessions,
                load_backstop_s=args.load_timeout + 60,
                seconds=args.seconds,
                grace_s=args.grace,
                hard_deadline=hard_deadline,
                server_pid=server.proc.pid if server.proc else None,
                describe=lambda exc: f"{error_kind(exc)}: {short(exc)}",
            )
        finally:
            for s in sessions:
                if s.context is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(s.context.close(), 30)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), 60)
    return out


# ------------------------------------------------------------------ report


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
    lines = markdown_table(head, row)
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
    missing = chromium_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    bundle = args.bundle.resolve()
    pool = diagnosis_pool(bundle, DX_POOL)

    exit_on_sigterm()
    started = time.monotonic()
    try:
        served = serve_and_check(
            bundle,
            lambda server, hard_deadline: drive(args, server, pool, hard_deadline),
            tmp_prefix="pocketrec-kiosk-load-",
            budget_s=args.load_timeout + 60 + args.seconds + args.grace + 30,
            log_chars=6000,
        )
    except (UnexpectedError, SetupError) as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    run, db_check, server_log = served["run"], served["db_check"], served["server_log"]

    sessions: list[Session] = run["sessions"]
    samples, visits, _ = visits_of(sessions)
    blocked: Counter[str] = Counter()
    for s in sessions:
        blocked.update(s.blocked)
    retries = [r for x in visits for r in x.get("typeahead_retries", [])]
    summary = common_summary(sessions, run, args.sessions, args.seconds) | {
        "load_failures": [f"session {s.index}: {s.load_error}" for s in sessions if s.load_error],
        "iterations": len(visits),
        "reloads": sum(s.reloads for s in sessions),
        "typeahead_retries": len(retries),
        "typeahead_text_lost": sum(r["field_held"] != r["typed"] for r in retries),
        "retypes_on_readback": sum(x.get("retypes", 0) for x in visits),
        "errors_by_kind": dict(Counter(e["kind"] for e in session_errors(sessions))),
        "suggest_call_ms": summarize(
            [x["suggest_call_ms"] for x in visits if x["suggest_call_ms"] is not None]
        ),
    }
    failures = db_failures(db_check)
    verdict = "FAIL (" + ", ".join(failures) + ")" if failures else "PASS (nothing lost or partial)"
    if summary["sessions_loaded"] < args.sessions:
        verdict += (
            f"; only {summary['sessions_loaded']} of {args.sessions} sessions loaded: "
            "this machine did not sustain the requested load"
        )
    machine = machine_info()
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
            "server_start_s": served["server_start_s"],
            "server_exit_code": served["server_exit_code"],
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
            "db_check": "Server stopped, then app.storage.database.History on the DB: patients "
            "looked up by exact name; a confirmed visit is matched by the id prefix the UI "
            "showed; lost = confirmed but absent; partial = any visit of these patients lacking "
            "suggestions, decisions or its save_visit audit row; mismatched = diagnoses or "
            "accepted drugs differ from what was entered; then PRAGMA integrity_check.",
            "offline": "page.route aborts every request not addressed to the app server.",
        },
        "summary": summary,
        "db_check": db_check,
        "verdict": verdict,
        "blocked_requests": dict(blocked),
        "external_websockets": sorted({u for s in sessions for u in s.external_websockets}),
        "sessions": [session_record(s, reloads=s.reloads, patients=s.patients) for s in sessions],
        "samples": samples,
        "task_errors": run.get("task_errors", []),
        "server_log_tail": server_log,
    }
    result["table_markdown"] = table(result)
    atomic_write_json(args.out, result)
    print(result["table_markdown"])
    print(
        f"\nwrote {os.path.relpath(args.out.resolve(), ROOT)} ({result['config']['wall_s']:.0f} s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
