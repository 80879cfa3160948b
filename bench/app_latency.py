"""App latency as a clinician sees it: the real app in web mode, driven in Chromium.

1. launch -> first suggestions on screen, `--runs` times, each with a fresh temp SQLite DB, a fresh
   server process and a fresh browser context (empty HTTP cache): t0 just before the server
   process is started; t1 when the first suggestion row is in the page. Split into server start
   (until the HTTP port answers), page ready (browser context, load, Flutter start, semantics on,
   until the first interactive control, the new-patient name field, is in the page), scripted
   input (create a patient, type words of a diagnosis title) and suggest (the tap on the
   type-ahead option until the first row is in the page: the visit re-scores on every change of
   its codes, there is no Suggest press).
2. suggestions after a code is entered: on the last run's visit screen, `--updates` times: type
   a second diagnosis (not timed), tap its option, time the tap until the re-scored list is in
   the page, remove the second diagnosis (not timed).
3. the same step below the UI: `VisitState.add_code()` (which re-scores) in this process,
   `--calls` times.

Flutter web paints on a canvas; its semantics tree (switched on by clicking the
`flt-semantics-placeholder` element) mirrors the widgets as `<flt-semantics>` elements whose
`flt-semantics-identifier` attribute is the app's `ft.Semantics(identifier=...)`. The click ->
update times are taken on the browser's clock: a capture listener stamps the click's
`pointerdown`, a MutationObserver stamps the first DOM batch in which the new rows are there. The
launch splits are taken on this process's clock when Playwright sees each step. The server,
Chromium and the page helpers come from bench/harness/, shared with the browser tests.

With `--cache warm` every launch after an untimed first one reuses one browser context and
one port (the app's files from the browser's cache, as a kiosk's own profile reopens the app);
each launch still starts a fresh server and database.

Usage: python bench/app_latency.py [--runs 5] [--bundle assets/bundles/medication-demo]
       [--cache empty|warm]
Writes bench/results/app_latency.json, or app_latency_warm_cache.json with `--cache warm`
(machine, method, targets, raw samples).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.medication.state import PatientForm  # noqa: E402
from app.state import AppState  # noqa: E402
from bench.harness import browser as web  # noqa: E402
from bench.harness.app_ui import DONE_TEXT, ident  # noqa: E402
from bench.harness.bundles import diagnosis_pool  # noqa: E402
from bench.harness.measure import machine_info, summarize  # noqa: E402
from bench.harness.script import exit_on_sigterm, start_watchdog  # noqa: E402
from bench.harness.server import HOST, SHIPPED_BUNDLE, AppServer  # noqa: E402
from contract.files import atomic_write_json  # noqa: E402

OUT = ROOT / "bench" / "results" / "app_latency.json"
WARM_OUT = ROOT / "bench" / "results" / "app_latency_warm_cache.json"
TARGET_LAUNCH_S = 1.5  # first suggestions on screen after launch
TARGET_UPDATE_MS = 100.0  # suggestions after a code is entered
LOAD_TIMEOUT_MS = 60_000
STEP_TIMEOUT_MS = 15_000
PORT_POLL_S = 0.02
QUIET_MS = 250  # the type-ahead options unchanged this long = the server answered every key
CHROMIUM_ARGS = [
    *web.CHROMIUM_ARGS,
    # offline: every host name but 127.0.0.1 fails to resolve (no request leaves the machine)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
LAUNCH_KEYS = (  # per launch run: seconds, but "suggest_browser" in ms
    "total",
    "server_start",
    "page_ready",
    "scripted_input",
    "scripted_pauses",
    "suggest",
    "suggest_browser",
    "total_minus_input",
)
# Installed in the page before a Suggest click; `window.__bench` ends with browser-clock stamps.
RECORDER_JS = """(cfg) => {
  const rowSel = '[flt-semantics-identifier^="suggestion-"]';
  const statusSel = '[flt-semantics-identifier="visit-status"]';
  const own = (n) => (n.getAttribute('aria-label') || '') + ' '
      + (n.children.length ? '' : n.textContent);
  const textOf = (el) => el
      ? [el, ...el.querySelectorAll('*')].map(own).join(' ').replace(/\\s+/g, ' ').trim() : '';
  const rows = () => [...document.querySelectorAll(rowSel)];
  const listSig = () => rows()
      .map(r => r.getAttribute('flt-semantics-identifier') + '=' + textOf(r)).join('|');
  const before = rows();
  const rec = {
    installed: performance.now(), click: null, scoring: null, done: null, list_changed: null,
    rows_before: before.length, rows_after: null, rows_replaced: null,
    status_before: textOf(document.querySelector(statusSel)), status_after: null,
    first_row: null, mutation_batches: 0,
  };
  const sigBefore = listSig();
  window.__bench = rec;
  window.addEventListener('pointerdown', () => {
    if (rec.click === null) rec.click = performance.now();
  }, {capture: true, once: true});
  const check = () => {
    const now = performance.now();
    rec.mutation_batches += 1;
    if (rec.click === null) return;
    const status = textOf(document.querySelector(statusSel));
    if (rec.scoring === null && status.includes('Scoring')) rec.scoring = now;
    const current = rows();
    const replaced = before.length > 0 && before.every(el => !el.isConnected);
    if (rec.list_changed === null && current.length && (replaced || listSig() !== sigBefore)) {
      rec.list_changed = now;
    }
    const ready = cfg.mode === 'first'
      ? current.length > 0
      : current.length > 0 && status.includes(cfg.doneText) && rec.list_changed !== null;
    if (ready) {
      rec.done = now;
      rec.rows_after = current.length;
      rec.status_after = status;
      rec.first_row = current[0].getAttribute('flt-semantics-identifier');
      rec.rows_replaced = replaced;
      observer.disconnect();
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document.body, {subtree: true, childList: true, attributes: true,
                                   characterData: true});
  return true;
}"""


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------ below the UI


def bench_in_process(bundle: Path, codes: list[tuple[str, str]], calls: int, tmp: Path) -> dict:
    """`VisitState.add_code()` as the option tap calls it (it re-scores; same thread count,
    same DB kind): one base diagnosis plus a second one that changes every call."""
    t = time.perf_counter()
    state = AppState.open(bundle, tmp / "in-process.db")
    open_s = time.perf_counter() - t
    state.medication.create_patient(PatientForm(display_name="Bench In-Process"))
    visit = state.medication.visit
    assert visit is not None
    base, extras = codes[0][0], [c for c, _ in codes[1:]]
    visit.add_code("dx", base)
    t = time.perf_counter()
    first = visit.suggest()
    first_ms = (time.perf_counter() - t) * 1e3
    samples = []
    for i in range(calls):
        extra = extras[i % len(extras)]
        t = time.perf_counter()
        visit.add_code("dx", extra)
        result = visit.result()
        samples.append((time.perf_counter() - t) * 1e3)
        visit.remove_code("dx", extra)
        if not result.suggestions:
            raise BenchError("suggest() returned no suggestions")
    return {
        "app_state_open_s": open_s,
        "first_call_ms": first_ms,
        "backend": first.backend,
        "suggestions_per_call": len(first.suggestions),
        "samples_ms": samples,
        "stats": summarize(samples, "_ms"),
    }


# ------------------------------------------------------------------ driving the page
# (this bench bounds every wait and click by its own step timeout)


def wait_node(page, identifier: str):
    return web.wait_for(page, identifier, STEP_TIMEOUT_MS)


def tap(page, identifier: str) -> None:
    web.click(page, identifier, STEP_TIMEOUT_MS, click_timeout_ms=STEP_TIMEOUT_MS)


def enter_text(page, identifier: str, text: str, pauses: web.Pauses) -> None:
    ms = STEP_TIMEOUT_MS
    web.type_into(page, identifier, text, pauses=pauses, timeout_ms=ms, click_timeout_ms=ms)


def wait_quiet(page, identifier: str, pauses: web.Pauses) -> None:
    """Wait until the identifiers under `identifier` stay the same for QUIET_MS."""
    quiet_ms = web.wait_quiet(page, web.IDS_UNDER_JS, identifier, QUIET_MS, 5_000, poll_ms=40)
    pauses.ms += quiet_ms


def remove_diagnosis(page, code: str) -> None:
    """The chip's Remove button (forced: the chip itself is a disabled checkbox, and
    Playwright counts the button as disabled along with it)."""
    node = wait_node(page, ident("dx", "chip", code))
    node.locator("[role=button]").first.click(force=True, timeout=STEP_TIMEOUT_MS)
    page.wait_for_selector(web.sel(ident("dx", "chip", code)), state="detached", timeout=5_000)


def status_text(page) -> str:
    node = wait_node(page, "visit-status")
    return " ".join((node.text_content() or "").split())


def timed_pick(page, code: str, query: str, mode: str, pauses: web.Pauses) -> dict:
    """Type `query` (not timed), then tap the diagnosis option: the visit re-scores on every
    change of its codes, so the tap is what brings the new suggestions. Browser-clock stamps
    from the tap's pointerdown (see RECORDER_JS) plus this process's view."""
    option = ident("dx", "option", code)
    for attempt in range(3):  # keys typed while a re-scored list is painted can be lost
        if attempt:  # focus something else first, so that the field's focus is new again
            tap(page, "px-search")
            web.settle(page, quiet_ms=300)
        enter_text(page, "dx-search", query, pauses)
        try:
            web.wait_for(page, option, 5_000)
            break
        except Exception:
            if attempt == 2:
                raise
            pauses.retypes += 1
            web.settle(page, quiet_ms=600)
    wait_quiet(page, "dx-options", pauses)
    page.evaluate(RECORDER_JS, {"mode": mode, "doneText": DONE_TEXT})
    t_call = time.monotonic()
    tap(page, option)
    return _recorded(page, t_call)


def timed_suggest(page, mode: str) -> dict:
    """Click the refresh button (score once more); stamps as for `timed_pick`."""
    page.evaluate(RECORDER_JS, {"mode": mode, "doneText": DONE_TEXT})
    t_call = time.monotonic()
    tap(page, "visit-suggest")
    return _recorded(page, t_call)


def _recorded(page, t_call: float) -> dict:
    page.wait_for_function(
        "() => window.__bench && window.__bench.done !== null", timeout=STEP_TIMEOUT_MS
    )
    t_seen = time.monotonic()
    rec = page.evaluate("() => window.__bench")
    if rec["click"] is None:
        raise BenchError("the Suggest click never reached the page as a pointerdown")
    rec["click_to_done_ms"] = rec["done"] - rec["click"]
    rec["click_to_scoring_ms"] = None if rec["scoring"] is None else rec["scoring"] - rec["click"]
    rec["click_to_list_changed_ms"] = (
        None if rec["list_changed"] is None else rec["list_changed"] - rec["click"]
    )
    rec["py_call_to_seen_ms"] = (t_seen - t_call) * 1e3
    rec["t_call"], rec["t_seen"] = t_call, t_seen
    return rec


def load_app(page, url: str) -> list[str]:
    """Open the app in `page`, switch Flutter's semantics tree on, wait for the first input
    field; returns the (live) list of requests made to hosts other than 127.0.0.1."""
    external: list[str] = []
    local = f"http://{HOST}:"

    def on_request(request) -> None:
        if not web.is_app_request(request.url, local):
            external.append(request.url)

    page.on("request", on_request)
    page.goto(url, wait_until="commit", timeout=LOAD_TIMEOUT_MS)
    ready = f"{web.sel('new-patient-name')} input"
    web.enable_semantics(page, ready, LOAD_TIMEOUT_MS, STEP_TIMEOUT_MS)
    return external


# ------------------------------------------------------------------ the scenarios


def launch_run(
    browser, bundle: Path, codes, run: int, tmp: Path, holder: dict, after=None, shared=None
):
    """One launch -> first suggestions; `after(page)` runs on the same page before cleanup.
    `shared`: (browser context, port) kept across runs (the warm-cache mode), else a fresh
    context (empty cache) and a free port."""
    context, port = shared if shared else (None, None)
    server = AppServer(bundle, tmp, poll_s=PORT_POLL_S, stop_timeout_s=10.0, port=port)
    holder["server"] = server
    own = shared is None
    page = None
    try:
        t0 = time.monotonic()
        server.start()
        server.wait_ready()
        t_http = time.monotonic()
        if own:
            context = browser.new_context(viewport=web.VIEWPORT)  # empty cache every run
        page = context.new_page()
        external = load_app(page, server.url)
        t_ready = time.monotonic()

        pauses = web.Pauses()
        enter_text(page, "new-patient-name", f"Bench Patient {run}", pauses)
        tap(page, "new-patient-create")
        wait_node(page, "dx-search")
        code, query = codes[0]
        rec = timed_pick(page, code, query, "first", pauses)
        t1 = rec["t_seen"]
        sample = {
            "run": run,
            "total": t1 - t0,
            "server_start": t_http - t0,
            "page_ready": t_ready - t_http,
            "scripted_input": rec["t_call"] - t_ready,
            "scripted_pauses": pauses.ms / 1e3,
            "retypes": pauses.retypes,
            "suggest": t1 - rec["t_call"],
            "suggest_browser": rec["click_to_done_ms"],
            "total_minus_input": (t1 - t0) - (rec["t_call"] - t_ready),
            "diagnosis": code,
            "typed": query,
            "first_row": rec["first_row"],
            "rows": rec["rows_after"],
            "external_requests": list(external),
        }
        extra = after(page) if after else None
        return sample, extra
    except BaseException:
        if page is not None:
            with contextlib.suppress(Exception):
                print(f"identifiers on the page: {page.evaluate(web.ALL_IDS_JS)}", file=sys.stderr)
        print(f"server log (tail):\n{server.log_tail(3000)}", file=sys.stderr)
        raise
    finally:
        if own and context is not None:
            with contextlib.suppress(Exception):
                context.close()
        elif page is not None:
            with contextlib.suppress(Exception):
                page.close()
        server.stop()
        holder["server"] = None


def update_samples(page, codes, n: int, deadline: float) -> list[dict]:
    """Scenario 2 on an open visit with one diagnosis and its suggestions."""
    out = []
    for i in range(n):
        if time.monotonic() > deadline:
            print(f"time budget reached after {i} of {n} updates", file=sys.stderr)
            break
        code, query = codes[1 + i % (len(codes) - 1)]
        before = status_text(page)
        if DONE_TEXT not in before:
            raise BenchError(f"unexpected status before adding a code: {before!r}")
        pauses = web.Pauses()
        # the code itself (an exact code is the first option in any version of the search)
        rec = timed_pick(page, code, code.split(":", 1)[-1], "update", pauses)
        out.append(
            {
                "i": i,
                "retypes": pauses.retypes,
                "added": code,
                "click_to_done_ms": rec["click_to_done_ms"],
                "click_to_scoring_ms": rec["click_to_scoring_ms"],
                "click_to_list_changed_ms": rec["click_to_list_changed_ms"],
                "py_call_to_seen_ms": rec["py_call_to_seen_ms"],
                "rows_before": rec["rows_before"],
                "rows_after": rec["rows_after"],
                "rows_replaced": rec["rows_replaced"],
                "first_row": rec["first_row"],
                "status_after": rec["status_after"],
            }
        )
        remove_diagnosis(page, code)  # re-scores too (not timed): wait for its list
        web.settle(page, quiet_ms=400)
    return out


# ------------------------------------------------------------------ report


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def table(result: dict) -> str:
    """The markdown table: launch figures in seconds, the rest in milliseconds."""
    launch = result["summary"]["launch_ms"]
    upd = result["summary"]["update_ms"]
    inproc = result["summary"]["in_process_ms"]
    lines = [
        "| measure | n | p50 | p95 | min | max | target | p95 vs target |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, st: dict, unit: str, target: float | None = None) -> None:
        if not st.get("n"):
            lines.append(f"| {name} | 0 | | | | | | |")
            return
        scale = 1e-3 if unit == "s" else 1.0
        fmt = "{:.3f} s" if unit == "s" else "{:.1f} ms"
        cells = [fmt.format(st[k] * scale) for k in ("p50_ms", "p95_ms", "min_ms", "max_ms")]
        tgt = ver = ""
        if target is not None:
            tgt = f"<= {target:g} {unit}"
            ver = verdict(st["p95_ms"] * scale, target)
        lines.append(f"| {name} | {st['n']} | {' | '.join(cells)} | {tgt} | {ver} |")

    row("launch -> first suggestions on screen (total)", launch["total"], "s", TARGET_LAUNCH_S)
    row("· server start (until the HTTP port answers)", launch["server_start"], "s")
    row("· page ready (until the first input field)", launch["page_ready"], "s")
    row("· scripted input (patient + 1 diagnosis)", launch["scripted_input"], "s")
    row("· · of which fixed key delays and pauses", launch["scripted_pauses"], "s")
    row("· suggest (click call -> first row seen)", launch["suggest"], "s")
    row("· · click -> first row (browser clock)", launch["suggest_browser"], "ms")
    row("launch total minus scripted input", launch["total_minus_input"], "s", TARGET_LAUNCH_S)
    row("suggestions after a code is entered", upd["click_to_done"], "ms", TARGET_UPDATE_MS)
    row("· click -> 'Scoring…' shown (event round trip)", upd["click_to_scoring"], "ms")
    row("· Playwright click call -> refreshed list seen", upd["py_call_to_seen"], "ms")
    row("VisitState.add_code() (re-scores) in process, no UI", inproc, "ms", TARGET_UPDATE_MS)
    lines.append("")
    if upd["click_to_done"].get("n") and inproc.get("n"):
        ui = upd["click_to_done"]["p50_ms"] - inproc["p50_ms"]
        lines.append(f"UI overhead of a suggest (p50 in the UI - p50 in process): {ui:.1f} ms.")
    ip = result["samples"]["in_process"]
    lines.append(
        f"In process: AppState.open {ip['app_state_open_s'] * 1e3:.0f} ms, first (cold) "
        f"suggest() {ip['first_call_ms']:.1f} ms, backend {ip['backend']}."
    )
    external = sorted({u for r in result["samples"]["launch"] for u in r["external_requests"]})
    lines.append(
        "Requests to other hosts (failed at once, offline): " + (", ".join(external) or "none")
    )
    lines.append("Verdict: PASS when the p95 is within the target, else MISS.")
    return "\n".join(lines)


WARM_METHOD = (
    "--cache warm: one browser context and one port for every launch, after a first launch "
    "that is not timed; each timed launch still starts a fresh server process with a fresh "
    "database and opens a new page, but the app's files (the Flutter engine, fonts) come from "
    "the context's HTTP cache, as when a kiosk's own browser profile reopens the app."
)

METHOD = {
    "launch": (
        "t0 just before the server process (python -c 'app.main.run(web=True, ...)', fresh temp "
        "SQLite DB) is started; Chromium itself is started once before the runs and not timed, "
        "each run opens a fresh context (empty HTTP cache, so the Flutter engine's wasm is "
        "fetched and compiled every run). server start: until GET / answers 200 (polled every "
        "20 ms). page ready: new context, goto, Flutter's semantics placeholder clicked, until "
        "the new-patient name <input> is in the semantics DOM. scripted input: type a name, "
        "Create patient, type words of a diagnosis title, wait for the type-ahead to settle, "
        "(includes fixed key delays and pauses, listed separately). suggest: from the Playwright "
        "tap on the diagnosis option (the visit re-scores on every change) until Playwright sees "
        "the first suggestion-<code> node; the browser-clock figure is pointerdown -> the first "
        "DOM mutation batch with a suggestion row. Launch splits use this process's monotonic "
        "clock."
    ),
    "update": (
        "On the last launch run's visit screen (one diagnosis, suggestions shown): add a second "
        "diagnosis's words (not timed), tap its type-ahead option (the visit re-scores on every "
        "change of its codes); timed on the browser clock from the tap's pointerdown to the first "
        "DOM mutation batch in which the status line reads 'N drug classes at or above the "
        "threshold' AND the suggestion list is new: every row element present before the "
        "click is gone from the DOM, or the rows' identifiers/text differ (the app sets status "
        "and list in one update; both stamps are kept per sample). The second diagnosis is then "
        "removed (chip's Remove, not "
        "timed) and the next one is added; the second diagnoses cycle through frequent codes."
    ),
    "in_process": (
        "AppState.open on the same bundle and a temp DB, a patient created, one base diagnosis; "
        "each call times VisitState.add_code() of a second diagnosis (it re-scores: model + "
        "result building, what the option tap runs) and result(), then removes it; the first "
        "(cold) call is reported apart."
    ),
    "dom_signal": (
        "Flutter web paints on a canvas; the semantics tree (enabled like a screen reader would) "
        "mirrors it as <flt-semantics> elements and is updated in the same frame the widgets "
        "are built, so 'in the DOM' is the frame that draws the rows, not a pixel check."
    ),
    "offline": (
        "Chromium runs with --host-resolver-rules mapping every host but 127.0.0.1 to "
        "NOTFOUND; requests to other hosts are listed per run (they fail at once)."
    ),
}


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="launch -> first suggestions runs")
    ap.add_argument("--bundle", type=Path, default=SHIPPED_BUNDLE)
    ap.add_argument("--updates", type=int, default=10, help="suggest-after-a-code samples")
    ap.add_argument("--calls", type=int, default=50, help="in-process suggest() calls")
    ap.add_argument("--budget-s", type=float, default=150.0, help="stop adding samples after")
    ap.add_argument("--hard-timeout-s", type=float, default=300.0, help="kill everything after")
    ap.add_argument(
        "--cache",
        choices=("empty", "warm"),
        default="empty",
        help="empty: a fresh browser context every launch (the first launch on a device); warm: "
        "one context and port kept across launches after an untimed first one (a kiosk's own "
        "browser profile reopening the app), so the app's files come from the browser's cache",
    )
    ap.add_argument("--out", type=Path, help=f"default {OUT.name} (empty) or {WARM_OUT.name}")
    args = ap.parse_args()
    args.out = args.out or (WARM_OUT if args.cache == "warm" else OUT)
    if args.runs < 1 or args.updates < 1 or args.calls < 1:
        ap.error("--runs, --updates and --calls must be at least 1")
    bundle = args.bundle.resolve()
    missing = web.chromium_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    exit_on_sigterm()
    started = time.monotonic()
    deadline = started + args.budget_s
    holder: dict = {"server": None}
    watchdog = start_watchdog(args.hard_timeout_s, holder)

    with tempfile.TemporaryDirectory(prefix="pocketrec-app-latency-") as tmp_name:
        tmp = Path(tmp_name)
        n_codes = 1 + min(args.updates, 10)
        codes = diagnosis_pool(bundle, n_codes, need=n_codes)
        print(f"in process: {args.calls} suggest() calls", file=sys.stderr)
        in_process = bench_in_process(bundle, codes, args.calls, tmp)

        launches: list[dict] = []
        updates: list[dict] = []
        try:
            with sync_playwright() as pw:
                t = time.monotonic()
                browser = web.launch_chromium(pw, CHROMIUM_ARGS)
                browser_launch_s = time.monotonic() - t
                shared = None
                try:
                    if args.cache == "warm":
                        from bench.harness.server import free_port

                        shared = (browser.new_context(viewport=web.VIEWPORT), free_port())
                        warm_tmp = tmp / "warm-up"
                        warm_tmp.mkdir()
                        launch_run(browser, bundle, codes, 0, warm_tmp, holder, shared=shared)
                        print("warm-up launch done (not timed)", file=sys.stderr)
                    for run in range(1, args.runs + 1):
                        last = run == args.runs
                        run_tmp = tmp / f"run{run}"
                        run_tmp.mkdir()

                        def after(page, last=last):
                            if not last:
                                return None
                            return update_samples(page, codes, args.updates, deadline)

                        sample, extra = launch_run(
                            browser, bundle, codes, run, run_tmp, holder, after, shared
                        )
                        launches.append(sample)
                        print(
                            f"launch run {run}: total {sample['total']:.2f} s",
                            file=sys.stderr,
                        )
                        if extra is not None:
                            updates = extra
                    chromium_version = browser.version
                finally:
                    browser.close()
        finally:
            server = holder.get("server")
            if server is not None:
                server.stop()
            watchdog.cancel()

    summary = {
        "launch_ms": {
            k: summarize([s[k] * (1.0 if k == "suggest_browser" else 1e3) for s in launches], "_ms")
            for k in LAUNCH_KEYS
        },
        "update_ms": {
            k: summarize([u[f"{k}_ms"] for u in updates if u[f"{k}_ms"] is not None], "_ms")
            for k in (
                "click_to_done",
                "click_to_scoring",
                "click_to_list_changed",
                "py_call_to_seen",
            )
        },
        "in_process_ms": in_process["stats"],
    }
    machine = machine_info()
    machine["chromium"] = chromium_version
    machine["backend"] = in_process["backend"]
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": os.path.relpath(bundle, ROOT),
        "config": {
            "runs": args.runs,
            "cache": args.cache,
            "updates": args.updates,
            "calls": args.calls,
            "viewport": web.VIEWPORT,
            "chromium_args": CHROMIUM_ARGS,
            "key_delay_ms": web.KEY_DELAY_MS,
            "browser_launch_s_untimed": browser_launch_s,
            "wall_s": time.monotonic() - started,
        },
        "machine": machine,
        "method": METHOD | ({"launch_cache": WARM_METHOD} if args.cache == "warm" else {}),
        "targets": {
            "launch_to_first_suggestions_s": TARGET_LAUNCH_S,
            "suggestions_after_code_ms": TARGET_UPDATE_MS,
            "verdict_rule": "PASS when the p95 is within the target",
        },
        "summary": summary,
        "samples": {
            "launch": launches,
            "update": updates,
            "in_process": {k: v for k, v in in_process.items() if k != "stats"},
        },
    }
    result["table_markdown"] = table(result)
    atomic_write_json(args.out, result)
    print(result["table_markdown"])
    print(f"\nwrote {os.path.relpath(args.out, ROOT)} ({result['config']['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
