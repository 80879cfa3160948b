"""The kiosk load benches' shared part (bench/kiosk_load.py drives browser pages,
bench/kiosk_protocol_load.py Flet protocol clients): a session's records and its loop of
visits, the concurrent run with its measured window, the server around it (and the database
check after it, bench/harness/db_check.py), the pieces of the reports both write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness.db_check import check_database
from bench.harness.measure import cpu_by_group, cpu_shares, cpu_times, summarize
from bench.harness.script import start_watchdog
from bench.harness.server import AppServer

DX_POOL = 40  # frequent diagnoses to draw from


# ------------------------------------------------------------------ one session


class KioskSession:
    """What a session keeps in either kiosk driver (the browser contexts of
    bench/kiosk_load.py, the protocol clients of bench/kiosk_protocol_load.py): its load state,
    the samples and patients `check_database` reads, and the loop of visits."""

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

    name_prefix = "Kiosk"  # the new patients' names: "<prefix> S01 P001"

    # -- what a driver provides

    async def open(self) -> None:
        """Open the session (its page, its client) until the Patients view shows."""
        raise NotImplementedError

    async def recover(self) -> None:
        """After a failed visit: a new session from the start, or `give_up`."""
        raise NotImplementedError

    def visit_fields(self) -> dict:
        """The driver's own fields of a visit's sample, with their start values."""
        return {}

    async def visit_steps(self, sample: dict, patient: dict, name: str, chosen: list) -> None:
        """The visit itself, `sample["step"]` kept up to date; `record_saved` once saved."""
        raise NotImplementedError

    def describe_error(self, exc: BaseException) -> tuple[str, str]:
        """(kind, message) of what went wrong."""
        raise NotImplementedError

    async def shown_at_error(self) -> dict:
        """What the screen showed when a visit failed, for its error record."""
        return {}

    # -- the loop

    async def load(self, t0: float) -> None:
        """`open()`; set `loaded` or `load_error`, `load_s` (since `t0`), then `settled`.
        Never raises: the other sessions go on."""
        try:
            await self.open()
            self.loaded = True
        except Exception as exc:
            kind, message = self.describe_error(exc)
            self.load_error = f"{kind}: {message}"
        finally:
            self.load_s = time.monotonic() - t0
            self.settled.set()

    async def run(self, t0: float, go: asyncio.Event, window: dict) -> None:
        await self.load(t0)
        await self.visits(go, window)

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

    async def one_visit(self, iteration: int, window_start: float) -> bool:
        """One visit with a new patient and 1 or 2 diagnoses of the pool, recorded (see
        `new_visit`): the step it reached, its error if any (kind "kind:step", message, what the
        screen showed; "cut-at-deadline" when cancelled), its times. True when it got through."""
        name = f"{self.name_prefix} S{self.index:02d} P{iteration:03d}"
        chosen = self.rng.sample(self.pool, self.rng.choice((1, 2)))
        sample, patient = self.new_visit(
            iteration, name, chosen, window_start, **self.visit_fields()
        )
        started = time.monotonic()
        try:
            await self.visit_steps(sample, patient, name, chosen)
            sample["step"] = "done"
            return True
        except asyncio.CancelledError:
            sample["error"] = {"kind": f"cut-at-deadline:{sample['step']}", "message": ""}
            raise
        except Exception as exc:
            kind, message = self.describe_error(exc)
            sample["error"] = {"kind": f"{kind}:{sample['step']}", "message": message}
            sample["error"].update(await self.shown_at_error())
            return False
        finally:
            sample["t_end_s"] = time.monotonic() - window_start
            sample["visit_s"] = time.monotonic() - started

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

    @staticmethod
    def record_saved(sample: dict, patient: dict, prefix: str, save_ms: float) -> None:
        """The UI confirmed the save of the visit whose id starts with `prefix`."""
        sample["save_ms"] = save_ms
        sample["visit_prefix"] = prefix
        sample["save_confirmed"] = True
        patient["visits_believed_saved"] += 1
        patient["visit_prefixes"].append(prefix)

    def give_up(self, step: str, kind: str, message: str) -> None:
        """`step`, bringing the session back after a failure, failed too: the session stops,
        recorded as an error."""
        self.dead = f"{step} failed: {kind}: {message}"
        error = {"kind": f"{kind}:{step}", "message": message}
        self.samples.append(
            {"session": self.index, "iteration": None, "step": step, "error": error}
        )


# ------------------------------------------------------------------ the concurrent run


async def run_sessions(
    out: dict,
    sessions: list[KioskSession],
    *,
    load_backstop_s: float,
    seconds: float,
    grace_s: float,
    hard_deadline: float,
    server_pid: int | None,
    describe: Callable[[BaseException], str],
    loaded_verb: str = "loaded",
) -> None:
    """Run every session at once: each loads, sets its `settled` event, then waits for `go`.
    Once every session has settled (at most `load_backstop_s`; each load has its own timeout),
    the window opens for `seconds` (`window["start"]`, `window["end"]`); a visit under way then
    may finish within `grace_s` (never past `hard_deadline`), the rest is cancelled. Records
    into `out` the sessions, the load phase, the window's length, CPU readings at both ends (see
    `measure.cpu_shares`), the load average, how many tasks were cut and the tasks' errors
    (`describe(exc)` each)."""
    window: dict = {"start": None, "end": None}
    go = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(s.run(t0, go, window)) for s in sessions]
    try:
        settled = asyncio.gather(*(s.settled.wait() for s in sessions))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled, load_backstop_s)
        out["load_phase_s"] = time.monotonic() - t0
        loaded = sum(s.loaded for s in sessions)
        print(
            f"{loaded} of {len(sessions)} sessions {loaded_verb} in {out['load_phase_s']:.1f} s; "
            f"running {seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        window["start"] = time.monotonic()
        window["end"] = window["start"] + seconds
        out["cpu_start"] = cpu_times()
        out["cpu_groups_start"] = cpu_by_group(server_pid)
        go.set()
        stop_at = min(window["end"] + grace_s, hard_deadline)
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.monotonic()))
        out["window_s"] = time.monotonic() - window["start"]
        out["cpu_end"] = cpu_times()
        out["cpu_groups_end"] = cpu_by_group(server_pid)
        out["loadavg_end"] = list(os.getloadavg())
        out["cut_at_deadline"] = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=30)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                out.setdefault("task_errors", []).append(describe(task.exception()))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    out["sessions"] = sessions
    out["window"] = window


def serve_and_check(
    bundle_dir: Path,
    drive: Callable,
    *,
    tmp_prefix: str,
    budget_s: float,
    log_chars: int,
    watchdog: bool = True,
) -> dict:
    """Start the app server on a fresh DB in a temp folder, `asyncio.run(drive(server,
    hard_deadline))` (the run `run_sessions` records, `budget_s` from now at the latest), stop
    the server, check the DB. A watchdog (unless `watchdog` is False) stops the server and exits
    should even that hang. Returns the run, the DB check, the server's start time, exit code and
    log tail (`log_chars`); `SetupError` when the server does not come up."""
    hard_deadline = time.monotonic() + budget_s
    holder: dict = {}
    timer = start_watchdog(budget_s + 90, holder) if watchdog else None
    try:
        with tempfile.TemporaryDirectory(prefix=tmp_prefix) as tmp_name:
            server = AppServer(bundle_dir, Path(tmp_name))
            holder["server"] = server
            try:
                server.start()
                server_start_s = server.wait_ready()
                run = asyncio.run(drive(server, hard_deadline))
            finally:
                server_exit_code = server.stop()
                holder["server"] = None
            server_log = server.log_tail(log_chars)
            db_check = check_database(server.db, run["sessions"])
    finally:
        if timer is not None:
            timer.cancel()
    return {
        "run": run,
        "db_check": db_check,
        "server_start_s": server_start_s,
        "server_exit_code": server_exit_code,
        "server_log": server_log,
    }


# ------------------------------------------------------------------ what the reports share


def visits_of(sessions: list[KioskSession]) -> tuple[list[dict], list[dict], list[dict]]:
    """The sessions' samples; those of visits (not of a failed recovery); the visits whose save
    the UI confirmed."""
    samples = [x for s in sessions for x in s.samples]
    visits = [x for x in samples if x.get("iteration") is not None]
    return samples, visits, [x for x in visits if x["save_confirmed"]]


def common_summary(sessions: list[KioskSession], run: dict, requested: int, seconds: float):
    """The figures both kiosk benches report, from the sessions and `run_sessions`' record."""
    _, visits, confirmed = visits_of(sessions)
    window_s = run["window_s"] or 1e-9
    busy, cpu_split = cpu_shares(run, window_s)
    return {
        "sessions_requested": requested,
        "sessions_loaded": sum(s.loaded for s in sessions),
        "load_s": summarize([s.load_s for s in sessions if s.loaded]),
        "seconds": seconds,
        "window_s": run["window_s"],
        "visits_confirmed_by_ui": len(confirmed),
        "visits_per_min": len(confirmed) / (window_s / 60.0),
        "dead_sessions": [f"session {s.index}: {s.dead}" for s in sessions if s.dead],
        "cut_at_deadline": run["cut_at_deadline"],
        "suggest_ms": summarize([x["suggest_ms"] for x in visits if x["suggest_ms"] is not None]),
        "save_ms": summarize([x["save_ms"] for x in confirmed]),
        "visit_s": summarize([x["visit_s"] for x in confirmed]),
        "machine_busy": busy,
        "cpu_share_by_group": cpu_split,
    }


def session_record(s: KioskSession, **extra) -> dict:
    """What the report keeps of one session (`extra`: the driver's own fields)."""
    record = {"session": s.index, "loaded": s.loaded, "load_s": s.load_s}
    return record | {"load_error": s.load_error, "dead": s.dead, **extra}


def session_errors(sessions: list[KioskSession]) -> list[dict]:
    """Every error the sessions recorded (their visits', then their loads'): session,
    iteration, kind ("kind:step") and reason."""
    errors = [
        {
            "session": x["session"],
            "iteration": x.get("iteration"),
            "kind": x["error"]["kind"],
            "reason": x["error"]["message"],
        }
        for s in sessions
        for x in s.samples
        if x.get("error")
    ]
    for s in sessions:
        if s.load_error is not None:
            errors.append(
                {
                    "session": s.index,
                    "iteration": None,
                    "kind": s.load_error.split(":", 1)[0] + ":load",
                    "reason": s.load_error,
                }
            )
    return errors


def fmt_ms(st: dict, key: str) -> str:
    return f"{st[key]:.0f} ms" if st.get("n") else "n/a"


def markdown_table(head: list[str], row: list[str]) -> list[str]:
    """A one-row markdown table, then an empty line."""
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| " + " | ".join(row) + " |",
        "",
    ]
