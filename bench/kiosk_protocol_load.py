"""Kiosk load over the Flet protocol: many clinicians on ONE pocketrec web server at the same
time, each a minimal Flet client speaking the server's WebSocket protocol (no browser), then a
check that every visit the UI confirmed is in the database, whole.

Why: bench/kiosk_load.py drives the same visits through 20 Chromium pages; on a 2-core machine
the browsers starve the CPU (the server itself then used about a fifth of one core) and text
fields lose keys under that starvation. These clients together cost well under a tenth of a
core for 20 sessions, so what is loaded and measured is the server.

The client (bench/harness/flet_protocol.py) registers like the Flutter client, keeps the page's
control tree in memory (bench/harness/control_tree.py), answers the server's method calls and
sends the events a person's clicks and keys would; controls are found by the app's test
identifiers in the visible part of the tree.

One visit per iteration, as in bench/kiosk_load.py: type a unique name into "Find a patient"
key by key until the list says "No patient found", type it as the new patient's name, Create
patient, wait for it in the header; 1 or 2 frequent diagnoses: type words of the title key by
key and wait until the type-ahead shows exactly the options the app's own `CodeIndex` gives
for the whole query (so every key has been answered), tap the option, wait for its chip;
Suggest, timed; accept the first 1 or 2 rows, each until its status reads Accepted; Save until
the status reads "Saved visit <8 hex>" (only then it is confirmed); Close patient. After an
error the session is dropped and a new one registered (as a page reload would).

Suggest latency: client clock, the moment the Suggest click event is written to the socket ->
the moment the WebSocket frame arrives whose patch, applied, makes the status line say "... at
or above the threshold" with the suggestion rows present.

Bounded: every wait has a step timeout; the loop window is `--seconds`, a visit under way then
may finish within `--grace`, then everything is cancelled; a watchdog thread kills the server
and exits if even that hangs. The database is checked with bench/harness/kiosk_session.py's
`check_database` (every confirmed visit present, whole, as entered; PRAGMA integrity_check),
as bench/kiosk_load.py does.

Usage: python bench/kiosk_protocol_load.py [--sessions 20] [--seconds 120]
Writes bench/results/kiosk_protocol_load.json; exit status 1 when anything failed (an error, a
lost or partial visit, a failed integrity check), 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.medication.bundle import load_bundle  # noqa: E402
from app.medication.codes import CodeIndex  # noqa: E402
from bench.harness.app_ui import DONE_TEXT, OPTIONS_SHOWN, SAVED_RE, ident  # noqa: E402
from bench.harness.bundles import diagnosis_index, diagnosis_pool  # noqa: E402
from bench.harness.control_tree import ControlTree  # noqa: E402
from bench.harness.db_check import db_failures  # noqa: E402
from bench.harness.errors import AppError, SetupError, UnexpectedError  # noqa: E402
from bench.harness.flet_protocol import (  # noqa: E402
    DisconnectedError,
    FletClient,
    error_kind,
    short,
)
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
from bench.harness.measure import dist_version, machine_info, summarize  # noqa: E402
from bench.harness.script import exit_on_sigterm  # noqa: E402
from bench.harness.server import HOST, SHIPPED_BUNDLE  # noqa: E402
from contract.files import atomic_write_json  # noqa: E402

OUT = ROOT / "bench" / "results" / "kiosk_protocol_load.json"
BUNDLE = SHIPPED_BUNDLE
SCORING = "Scoring"
SAVING = "Saving"


# ------------------------------------------------------------------ one session


@dataclass
class Config:
    sessions: int = 20
    seconds: float = 120.0
    load_timeout: float = 60.0
    step_timeout: float = 30.0
    grace: float = 60.0
    key_delay: float = 0.035
    think: float = 0.2
    seed: int = 7
    bundle: str = str(BUNDLE)


class ProtoSession(KioskSession):
    """One protocol client = one Flet session = one clinician at a kiosk. `samples` and
    `patients` have the shape `check_database` reads."""

    name_prefix = "Proto"

    def __init__(self, index: int, cfg: Config, url: str, pool, code_index: CodeIndex):
        super().__init__(index, url, pool, cfg.seed)
        self.cfg = cfg
        self.code_index = code_index
        self.client: FletClient | None = None
        self.reconnects = 0
        self.frames = 0
        self.bytes_in = 0
        self.missing_targets = 0
        self.invokes: Counter[str] = Counter()

    async def connect(self) -> None:
        await self.disconnect()
        client = FletClient(self.url, self.cfg.step_timeout)
        self.client = client
        await client.open(self.cfg.load_timeout)
        await client.wait(
            lambda t: t.has("new-patient-name") and t.has("patient-search"),
            "the Patients view",
            self.cfg.load_timeout,
        )

    async def disconnect(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        self.frames += client.frames
        self.bytes_in += client.bytes_in
        self.missing_targets += client.tree.missing_targets if client.tree else 0
        self.invokes.update(client.invokes)
        await client.close()

    async def open(self) -> None:
        await asyncio.wait_for(self.connect(), self.cfg.load_timeout + 5)

    def describe_error(self, exc: BaseException) -> tuple[str, str]:
        return error_kind(exc), short(exc)

    async def shown_at_error(self) -> dict:
        c, out = self.client, {}
        if c is not None and c.tree is not None:
            with contextlib.suppress(Exception):
                out["shown"] = c.tree.shown()
                out["identifiers"] = c.tree.identifiers()[:60]
            if c.crash:
                out["server_traceback_tail"] = c.crash[-1500:]
        return out

    async def run(self, t0: float, go: asyncio.Event, window: dict) -> None:
        try:
            await super().run(t0, go, window)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.disconnect())

    async def recover(self) -> None:
        """After a failure: a new session from the start (a page reload)."""
        self.reconnects += 1
        try:
            await asyncio.wait_for(self.connect(), self.cfg.load_timeout + 5)
        except Exception as exc:
            self.give_up("reconnect", error_kind(exc), short(exc))

    async def pause(self) -> None:
        if self.cfg.think > 0:
            await asyncio.sleep(self.cfg.think * self.rng.uniform(0.5, 1.5))

    async def visit_steps(self, sample: dict, patient: dict, name: str, chosen: list) -> None:
        c = self.client
        if c is None:
            raise DisconnectedError("no session")
        await c.type_text("patient-search", name, self.cfg.key_delay)
        await c.wait(
            lambda t: t.has("patient-none") and not t.has(ident("patient-result", 0)),
            "'No patient found' for the new name",
        )
        await self.pause()
        await c.type_text("new-patient-name", name, self.cfg.key_delay)
        await self.pause()
        await c.click("new-patient-create")

        def opened(t: ControlTree):
            error = t.text("new-patient-error")
            if error:
                raise AppError(f"Create patient showed {error!r}")
            shown = t.text("current-patient") or ""
            if shown and shown != "No patient open" and t.has("dx-search"):
                return shown
            return None

        _, shown = await c.wait(opened, "the new patient open in the Visit view")
        if shown != name:
            raise UnexpectedError(f"Create patient opened {shown!r}, not {name!r}")
        patient["created_confirmed"] = sample["patient_confirmed"] = True

        sample["step"] = "diagnosis"
        for code, query in chosen:
            await self.pause()
            await self.add_diagnosis(code, query)

        sample["step"] = "suggest"
        await self.pause()
        rows = await self.timed_suggest(sample)

        sample["step"] = "accept"
        for code in rows[: min(len(rows), self.rng.choice((1, 2)))]:
            await self.pause()
            await c.click(ident("accept", code))
            await c.wait(
                lambda t, code=code: (t.text(ident("status", code)) or "") == "Accepted",
                f"{code} Accepted",
            )
            sample["accepted"].append(code)

        sample["step"] = "save"
        await self.pause()
        before = c.tree.text("visit-status") or ""

        def saved(t: ControlTree):
            status = t.text("visit-status") or ""
            found = SAVED_RE.search(status)
            if found:
                return found.group(1)
            if status and status != before and not status.startswith(SAVING):
                raise AppError(f"Save showed {status!r}")
            return None

        t_save, arrived, prefix = await c.click_and_wait("visit-save", saved, "'Saved visit <id>'")
        self.record_saved(sample, patient, prefix, (arrived - t_save) * 1e3)

        sample["step"] = "close-patient"
        await self.pause()
        await c.click("close-patient")
        await c.wait(
            lambda t: (
                t.has("new-patient-name") and (t.text("current-patient") or "") == "No patient open"
            ),
            "the Patients view after Close patient",
        )

    async def add_diagnosis(self, code: str, query: str) -> None:
        """Type the query key by key; wait until the options are exactly those the app's index
        lists for the whole query (every key answered), tap the code, wait for its chip."""
        c = self.client
        expected = [
            ident("dx", "option", o.code) for o in self.code_index.search(query)[:OPTIONS_SHOWN]
        ]
        option = ident("dx", "option", code)
        if option not in expected:
            raise UnexpectedError(f"{code} is not among the options for {query!r}")
        await c.type_text("dx-search", query, self.cfg.key_delay)
        await c.wait(
            lambda t: t.ids_under("dx-options") == expected,
            f"the {len(expected)} options for {query!r}",
        )
        await self.pause()
        await c.click(option)
        chip = ident("dx", "chip", code)
        await c.wait(lambda t: t.has(chip) and not t.ids_under("dx-options"), f"the chip {chip}")

    async def timed_suggest(self, sample: dict) -> list[str]:
        """Press Suggest; latency = click written -> the frame that shows the result."""
        c = self.client
        marks: dict = {}

        def done(t: ControlTree):
            status = t.text("visit-status") or ""
            if SCORING in status and "scoring" not in marks:
                marks["scoring"] = c.frame_arrived
            rows = [i for i in t.ids_under("suggestions") if i.startswith("suggestion-")]
            if DONE_TEXT in status and rows:
                return rows
            if status and SCORING not in status and "scoring" in marks:
                raise AppError(f"Suggest showed {status!r}")
            return None

        t_click, arrived, rows = await c.click_and_wait("visit-suggest", done, "the suggestions")
        sample["suggest_ms"] = (arrived - t_click) * 1e3
        if "scoring" in marks:
            sample["click_to_scoring_ms"] = (marks["scoring"] - t_click) * 1e3
        sample["rows"] = len(rows)
        return [r.removeprefix("suggestion-") for r in rows]


# ------------------------------------------------------------------ the whole drive


async def drive(cfg: Config, server, pool, code_index: CodeIndex, hard_deadline: float) -> dict:
    out: dict = {}
    url = f"ws://{HOST}:{server.port}/ws"
    sessions = [ProtoSession(i + 1, cfg, url, pool, code_index) for i in range(cfg.sessions)]
    try:
        await run_sessions(
            out,
            sessions,
            load_backstop_s=cfg.load_timeout + 30,
            seconds=cfg.seconds,
            grace_s=cfg.grace,
            hard_deadline=hard_deadline,
            server_pid=server.proc.pid if server.proc else None,
            describe=lambda exc: f"{error_kind(exc)}: {short(exc)}",
            loaded_verb="registered",
        )
    finally:
        for s in sessions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.disconnect(), 10)
    out.setdefault("window_s", 0.0)
    out.setdefault("cut_at_deadline", 0)
    return out


def server_log_errors(log: str) -> list[str]:
    """Lines of the server log that report an error (FLET_LOG_LEVEL=error: only errors)."""
    keep = ("Traceback", "Error", "ERROR", "Exception", "error")
    return [line for line in log.splitlines() if any(k in line for k in keep)][:50]


def run_load(cfg: Config, out: Path | None = OUT, watchdog: bool = False) -> dict:
    """Start the server on a fresh DB, run the sessions, stop everything, check the DB.
    Returns the result (also written to `out` unless None). Raises SetupError when the run
    cannot be made."""
    bundle_dir = Path(cfg.bundle).resolve()
    pool = diagnosis_pool(bundle_dir, DX_POOL)
    code_index = diagnosis_index(load_bundle(bundle_dir))
    started = time.monotonic()
    served = serve_and_check(
        bundle_dir,
        lambda server, hard_deadline: drive(cfg, server, pool, code_index, hard_deadline),
        tmp_prefix="pocketrec-kiosk-proto-",
        budget_s=cfg.load_timeout + 30 + cfg.seconds + cfg.grace + 60,
        log_chars=20000,
        watchdog=watchdog,
    )
    result = summarize_run(cfg, served["run"], served["db_check"], served["server_log"], bundle_dir)
    result["config"]["server_start_s"] = served["server_start_s"]
    result["config"]["server_exit_code"] = served["server_exit_code"]
    result["config"]["wall_s"] = time.monotonic() - started
    result["table_markdown"] = table(result)
    if out is not None:
        atomic_write_json(out, result)
    return result


def summarize_run(cfg: Config, run: dict, db_check: dict, server_log: str, bundle_dir) -> dict:
    sessions: list[ProtoSession] = run["sessions"]
    _, visits, confirmed = visits_of(sessions)
    errors = session_errors(sessions)
    for message in run.get("task_errors", []):
        errors.append({"session": None, "iteration": None, "kind": "task", "reason": message})
    log_errors = server_log_errors(server_log)
    per_session = {s.index: 0 for s in sessions}
    for x in confirmed:
        per_session[x["session"]] += 1
    summary = common_summary(sessions, run, cfg.sessions, cfg.seconds)
    cpu_split = summary["cpu_share_by_group"]
    if cpu_split is not None:
        cpu_split["protocol clients"] = cpu_split.pop("this script", 0.0)
        for group in ("chromium", "playwright driver"):
            cpu_split.pop(group, None)
    summary |= {
        "visits_started": len(visits),
        "visits_confirmed_per_session": per_session,
        "min_visits_per_session": min(per_session.values()) if per_session else 0,
        "errors": len(errors),
        "errors_by_kind": dict(Counter(e["kind"] for e in errors)),
        "reconnects": sum(s.reconnects for s in sessions),
        "click_to_scoring_ms": summarize(
            [x["click_to_scoring_ms"] for x in visits if x["click_to_scoring_ms"] is not None]
        ),
        "frames_received": sum(s.frames for s in sessions),
        "mib_received": sum(s.bytes_in for s in sessions) / 2**20,
        "patch_targets_missing": sum(s.missing_targets for s in sessions),
        "methods_invoked": dict(sum((s.invokes for s in sessions), Counter())),
        "server_log_errors": len(log_errors),
        "server_cpu_share": None if cpu_split is None else cpu_split.get("app server"),
    }
    failures = []
    if errors:
        failures.append(f"{len(errors)} errors")
    if summary["sessions_loaded"] < cfg.sessions:
        failures.append(f"only {summary['sessions_loaded']} of {cfg.sessions} sessions loaded")
    failures += db_failures(db_check)
    if log_errors:
        failures.append(f"{len(log_errors)} error lines in the server log")
    verdict = "FAIL (" + ", ".join(failures) + ")" if failures else "PASS"
    machine = machine_info()
    machine.pop("playwright", None)
    machine["websockets"] = dist_version("websockets")
    machine["msgpack"] = dist_version("msgpack")
    machine["loadavg_end"] = run.get("loadavg_end")
    keep = (
        "session iteration patient diagnoses typed accepted t_start_s visit_s suggest_ms "
        "click_to_scoring_ms rows visit_prefix save_confirmed save_ms step error"
    ).split()
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": os.path.relpath(bundle_dir, ROOT),
        "config": {**asdict(cfg), "bundle": os.path.relpath(bundle_dir, ROOT)},
        "machine": machine,
        "method": {
            "client": "One asyncio WebSocket client per session in this process, speaking the "
            "Flet protocol (see the module docstring); no browser.",
            "visit": "Find a patient (typed key by key) until 'No patient found'; type the name, "
            "Create patient, wait for it in the header; 1 or 2 diagnoses: type the query key by "
            "key, wait until the options equal what app.medication.codes.CodeIndex lists for the "
            "whole query, tap the code, wait for its chip; Suggest; accept the first 1 or 2 rows, "
            "each until 'Accepted'; Save until 'Saved visit <8 hex>' (confirmed only then); Close "
            f"patient. Keys {cfg.key_delay * 1000:g} ms apart; {cfg.think:g} s (x0.5-1.5) "
            "between steps.",
            "suggest_latency": "Client monotonic clock: Suggest click event written to the "
            "socket -> arrival of the frame after whose patch the status says 'at or above the "
            "threshold' with suggestion rows present.",
            "errors": "kind:step; timeout = a wait ran past the step timeout; app-error = the "
            "app showed an error; session-crashed = SESSION_CRASHED from the server; "
            "disconnected = the socket closed; unexpected = the tree showed something else. "
            "After an error the session registers anew.",
            "db_check": "bench/harness/kiosk_session.py check_database: server stopped; "
            "confirmed visits "
            "by id prefix (lost), whole (suggestions, decisions, save_visit audit: partial), as "
            "entered (mismatched); PRAGMA integrity_check.",
            "cpu": "CPU seconds of the server's process tree and of this process over the "
            "window, divided by the window (1.0 = one core busy).",
        },
        "summary": summary,
        "db_check": db_check,
        "verdict": verdict,
        "errors": errors[:500],
        "server_log_errors": log_errors,
        "sessions": [
            session_record(
                s, reconnects=s.reconnects, visits_confirmed=per_session[s.index], frames=s.frames
            )
            for s in sessions
        ],
        "samples": [{k: x.get(k) for k in keep} for x in visits],
        "server_log_tail": server_log[-4000:],
    }


# ------------------------------------------------------------------ report


def table(result: dict) -> str:
    s, db = result["summary"], result["db_check"]
    lat = s["suggest_ms"]
    cpu = s["server_cpu_share"]
    errors = "; ".join(f"{k} ×{n}" for k, n in sorted(s["errors_by_kind"].items())) or "none"
    head = [
        "sessions",
        "seconds",
        "visits confirmed",
        "visits in DB",
        "lost",
        "partial",
        "integrity",
        "errors",
        "suggest p50",
        "suggest p95",
        "suggest max",
        "server CPU",
    ]
    row = [
        f"{s['sessions_loaded']}/{s['sessions_requested']}",
        f"{s['seconds']:g}",
        str(db["visits_confirmed"]),
        str(db["visits_in_db"]),
        str(db["lost"]),
        str(db["partial"]),
        ", ".join(db["integrity_check"]),
        errors,
        fmt_ms(lat, "p50"),
        fmt_ms(lat, "p95"),
        fmt_ms(lat, "max"),
        "n/a" if cpu is None else f"{cpu:.2f} cores",
    ]
    lines = markdown_table(head, row) + [
        f"Suggest latency (n={lat.get('n', 0)}): Suggest click written to the WebSocket -> "
        "the frame showing the result arrives (client clock).",
    ]
    visit = s["visit_s"]
    if visit.get("n"):
        lines.append(
            f"Whole visit p50 {visit['p50']:.1f} s, p95 {visit['p95']:.1f} s; "
            f"{s['visits_per_min']:.0f} visits/min; per session min "
            f"{s['min_visits_per_session']}; save p95 {fmt_ms(s['save_ms'], 'p95')}."
        )
    split = s.get("cpu_share_by_group") or {}
    if s.get("machine_busy") is not None:
        parts = ", ".join(f"{g} {v:.2f}" for g, v in sorted(split.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"Machine CPU busy {s['machine_busy']:.0%} of {result['machine']['cpus']} CPUs "
            f"(in cores: {parts})."
        )
    lines.append(
        f"Frames received {s['frames_received']} ({s['mib_received']:.1f} MiB); patch targets "
        f"missing {s['patch_targets_missing']}; reconnects {s['reconnects']}; cut at deadline "
        f"{s['cut_at_deadline']}; server log error lines {s['server_log_errors']}."
    )
    lines.append(
        f"DB: visits in DB for these patients {db['visits_in_db']} (whole DB "
        f"{db['visits_in_db_total']}), saved but not confirmed {db['unconfirmed_in_db']}, "
        f"mismatched {db['mismatched']}, confirmed patients missing "
        f"{db['patients_confirmed_missing']}."
    )
    for e in result["errors"][:5]:
        lines.append(
            f"Error: session {e['session']} visit {e['iteration']}: {e['kind']}: "
            f"{e['reason'][:200]}"
        )
    lines.append(f"Verdict: {result['verdict']}.")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Config()
    ap.add_argument("--sessions", type=int, default=d.sessions)
    ap.add_argument("--seconds", type=float, default=d.seconds, help="loop window")
    ap.add_argument("--load-timeout", type=float, default=d.load_timeout)
    ap.add_argument("--step-timeout", type=float, default=d.step_timeout)
    ap.add_argument("--grace", type=float, default=d.grace, help="to finish the last visit")
    ap.add_argument("--key-delay", type=float, default=d.key_delay, help="seconds between keys")
    ap.add_argument("--think", type=float, default=d.think, help="seconds between steps")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.seconds <= 0:
        ap.error("--sessions must be at least 1 and --seconds positive")
    values = {f.name: getattr(args, f.name) for f in fields(Config)}
    cfg = Config(**values | {"bundle": str(args.bundle)})

    exit_on_sigterm()
    try:
        result = run_load(cfg, args.out, watchdog=True)
    except SetupError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    print(result["table_markdown"])
    print(
        f"\nwrote {os.path.relpath(args.out.resolve(), ROOT)} ({result['config']['wall_s']:.0f} s)"
    )
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
