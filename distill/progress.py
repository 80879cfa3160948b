"""Progress of a run: named, weighted steps, one bar line per event, an overall share and an ETA.

`Progress` is what a person watching `make demo` follows: the run's plan as named steps with
expected weights (e.g. "data", then "fold 1/5 teacher", "fold 1/5 students", ...), one bar line
per step start, update and end::

    [pocketrec] fold 2/5 students  [######......] 50% epoch 30/60: val prauc 0.6123
                | all 38%, ETA 4m10s, 2m31s so far      (one line)

The ETA is the sum of each unfinished step's expected time, each from the best evidence there is
for that step:

1. Steps whose names differ only in their numbers ("fold 1/5 teacher", "fold 2/5 teacher") are
   one kind of work. A kind that has been measured (steps of it done, and the running one once
   its pace counts) goes at its own seconds per planned unit. This is what keeps a fast step
   from being priced at a slow one's pace: on a --quick medication run the students take 5x
   their planned share of a fold and the teacher 1/30 of it, and projecting the students' pace
   onto the teachers said 22 min where 4 were left.
2. A kind not measured yet goes at the pace of the running step, or of the last step that
   reported its progress: a plan calibrated on a small run is off by about the same factor for
   every step of a big one. Before any such step, at the time so far over the planned share
   done, once that share is `PLAN_FROM` (the first second of a run says nothing about an hour).

A running step's own pace counts only once it has run `MIN_PACE_S` and done `PACE_FROM` of
itself: a first epoch or a warm-up is not a pace. "all N%" is the time so far over the time so
far plus the ETA (never shown going back), so it agrees with the ETA rather than with the plan.
"""

from __future__ import annotations

import re
import time
from typing import Any

__all__ = ["MIN_PACE_S", "PACE_FROM", "PLAN_FROM", "Progress", "step_kind"]

PACE_FROM = 0.05  # a running step's share done from which its own pace counts
MIN_PACE_S = 5.0  # ... and the seconds it must have run: a warm-up is not a pace
PLAN_FROM = 0.01  # the planned share done before the time so far is projected onto the plan


def step_kind(name: str) -> str:
    """Steps whose names differ only in their numbers are repeats of one kind of work."""
    return re.sub(r"\d+", "#", name)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Named, weighted steps of a run with an overall ETA, logged as one bar line per event.

    `steps`: (name, weight) in the order they run, the weight being the step's expected share
    of the time in any unit (seconds measured on an earlier run are a good choice). `log`:
    where lines go (default: the ``distill.progress`` logger at INFO, which the CLI prints).
    `clock`: seconds since some start (a test passes a fake). `min_interval`: updates of one
    step closer together than this many seconds are not logged (the first update of a step,
    its start and its end always are).
    """

    def __init__(
        self,
        steps: list[tuple[str, float]],
        log: Any = None,
        width: int = 12,
        clock: Any = time.perf_counter,
        min_interval: float = 2.0,
    ) -> None:
        names = [n for n, _ in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique; got {names}")
        if any(not (w > 0) for _, w in steps):
            raise ValueError("step weights must be > 0")
        self.weights = dict(steps)
        self.order = names
        self.total = float(sum(self.weights.values())) or 1.0
        self.fraction: dict[str, float] = {n: 0.0 for n in names}
        self.width = width
        self._clock = clock
        self._t0 = clock()
        self._last_log: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._took: dict[str, float] = {}  # seconds of each step timed from start to done
        self._paced: str | None = None  # the last done step that reported its progress
        self._shown = 0.0  # the highest "all" share logged
        self.min_interval = min_interval
        if log is None:
            import logging

            log = logging.getLogger("distill.progress").info
        self.log = log

    def add(self, name: str, weight: float) -> None:
        """A step the plan did not know (it is appended to the plan)."""
        if name not in self.weights:
            self.weights[name] = float(weight)
            self.order.append(name)
            self.fraction[name] = 0.0
            self.total += float(weight)

    def overall(self) -> float:
        """Share of the planned work done, 0..1 (weighted by the plan)."""
        return sum(self.weights[n] * f for n, f in self.fraction.items()) / self.total

    def eta_s(self) -> float | None:
        """Seconds left: each unfinished step at the pace of its own kind where that was
        measured, else at the pace of the running (or last paced) step, else at the time so
        far over the planned share done (see the module docstring). None while there is no
        evidence yet."""
        now = self._clock()
        running = self._running(now)
        kinds = self._kind_paces(now, running)
        fallback = None
        if running is not None:
            fallback = kinds[step_kind(running)]
        elif self._paced is not None:
            fallback = self._took[self._paced] / self.weights[self._paced]
        else:
            done = self.overall()
            if done >= PLAN_FROM:
                fallback = (now - self._t0) / (done * self.total)
        left = 0.0
        for n in self.order:
            rest = self.weights[n] * (1 - self.fraction[n])
            if rest <= 0:
                continue
            pace = kinds.get(step_kind(n), fallback)
            if pace is None:
                return None
            left += rest * pace
        return left

    def _running(self, now: float) -> str | None:
        """The latest started, unfinished step whose own pace counts yet (one that says 100%
        before its `done` still runs: its time so far is evidence)."""
        for n in reversed(self.order):
            if n in self._started and n not in self._took:
                if self.fraction[n] >= PACE_FROM and now - self._started[n] >= MIN_PACE_S:
                    return n
        return None

    def _kind_paces(self, now: float, running: str | None) -> dict[str, float]:
        """Seconds per planned unit of each measured kind: the seconds its steps took (and the
        running one has taken) over the planned units they did."""
        seconds: dict[str, float] = {}
        units: dict[str, float] = {}
        for n, took in self._took.items():
            k = step_kind(n)
            seconds[k] = seconds.get(k, 0.0) + took
            units[k] = units.get(k, 0.0) + self.weights[n]
        if running is not None:
            k = step_kind(running)
            seconds[k] = seconds.get(k, 0.0) + now - self._started[running]
            units[k] = units.get(k, 0.0) + self.weights[running] * self.fraction[running]
        return {k: seconds[k] / units[k] for k in seconds if units[k] > 0}

    def line(self, name: str, detail: str = "") -> str:
        f = self.fraction.get(name, 0.0)
        filled = int(round(f * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = self._clock() - self._t0
        eta = self.eta_s()
        if eta is None:
            share = self.overall()
        else:
            # the share of the expected run time, not of the plan's units: a plan that is off
            # for one kind of step would say 98% with a minute left
            share = elapsed / (elapsed + eta) if elapsed + eta > 0 else 1.0
        # a bar that goes back reads as a fault; the ETA says when the estimate grew
        self._shown = max(self._shown, share)
        tail = f"all {self._shown:.0%}" + (f", ETA {_duration(eta)}" if eta is not None else "")
        tail += f", {_duration(elapsed)} so far"
        return f"{name}  [{bar}] {f:.0%}" + (f" {detail}" if detail else "") + f" | {tail}"

    def _emit(self, name: str, detail: str, force: bool) -> None:
        now = self._clock()
        if not force:  # an update: the first of a step always, then one per min_interval
            if now - self._last_log.get(name, -1e18) < self.min_interval:
                return
            self._last_log[name] = now
        self.log(self.line(name, detail))

    def start(self, name: str, detail: str = "") -> None:
        self.add(name, 1.0)
        self._started[name] = self._clock()
        self._took.pop(name, None)
        self._emit(name, detail or "started", force=True)

    def update(self, name: str, fraction: float, detail: str = "") -> None:
        """Step `name` is `fraction` (0..1) done; `detail` says what, e.g. the epoch's score."""
        self.add(name, 1.0)
        self.fraction[name] = min(1.0, max(self.fraction[name], float(fraction)))
        self._emit(name, detail, force=False)

    def done(self, name: str, detail: str = "") -> None:
        self.add(name, 1.0)
        if name in self._started:
            self._took[name] = self._clock() - self._started[name]
            if self.fraction[name] >= PACE_FROM:  # it reported its progress
                self._paced = name
        self.fraction[name] = 1.0
        self._emit(name, detail or "done", force=True)

    def step(self, name: str):
        """Context manager: `start` on entry, `done` on a normal exit."""
        progress = self

        class _Step:
            def __enter__(self):
                progress.start(name)
                return progress

            def __exit__(self, exc_type, *exc):
                if exc_type is None:
                    progress.done(name)

        return _Step()
