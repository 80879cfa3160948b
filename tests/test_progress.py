"""distill.runs.Progress: named bars, an overall share weighted by the plan, an ETA."""

from __future__ import annotations

import pytest

from distill.runs import Progress, StageClock


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bars_overall_share_and_eta():
    lines, clock = [], FakeClock()
    p = Progress([("data", 1), ("fold 1/2", 4), ("fold 2/2", 5)], log=lines.append, clock=clock)
    p.start("data")
    assert p.eta_s() is None and "data  [............] 0% started | all 0%" in lines[-1]
    clock.t = 10
    p.done("data")
    assert p.overall() == pytest.approx(0.1)
    assert p.eta_s() == pytest.approx(90)  # 10 s for a tenth
    assert "[############] 100% done | all 10%, ETA 1m30s, 10s so far" in lines[-1]
    clock.t = 30
    p.update("fold 1/2", 0.5, "epoch 3/6: val prauc 0.6123")
    assert p.overall() == pytest.approx(0.3)
    want = "fold 1/2  [######......] 50% epoch 3/6: val prauc 0.6123 | all 30%"
    assert lines[-1].startswith(want)
    n = len(lines)
    clock.t = 30.5
    p.update("fold 1/2", 0.6)  # too soon after the last line of this step: not logged
    assert len(lines) == n and p.fraction["fold 1/2"] == 0.6
    p.update("fold 1/2", 0.2)  # never goes back
    assert p.fraction["fold 1/2"] == 0.6


def test_eta_follows_the_pace_of_the_running_step():
    """A plan calibrated on a small run: "b" takes 100x its planned share. Once "b" reports
    progress, the ETA is the rest of "b" at its own rate and "c" at the pace "b" shows,
    not the time so far scaled by the plan (which would say 19 s)."""
    clock = FakeClock()
    p = Progress([("a", 1), ("b", 1), ("c", 1)], log=lambda line: None, clock=clock)
    p.start("a")
    clock.t = 1
    p.done("a")
    assert p.eta_s() == pytest.approx(2)  # no running step: the plan's shares
    p.start("b")
    clock.t = 2
    p.update("b", 0.01)  # too little of it done to judge its pace
    assert p.eta_s() == pytest.approx(2 * (1 - 1.01 / 3) / (1.01 / 3))
    clock.t = 11
    p.update("b", 0.1)  # 10 s for a tenth: "b" takes 100 s, "c" as long
    assert p.eta_s() == pytest.approx(90 + 100)
    clock.t = 101
    p.done("b")
    p.start("c")
    assert p.eta_s() == pytest.approx(100)  # "c" has not reported yet: at "b"'s pace


def test_stage_clock_drives_the_steps_and_still_sums_seconds():
    lines = []
    p = Progress([("a", 1), ("b", 1)], log=lines.append)
    clock = StageClock(p)
    with clock("teacher", step="a"):
        pass
    with clock("teacher"):  # no step: timed only
        pass
    with pytest.raises(RuntimeError), clock("student", step="b"):
        raise RuntimeError("boom")
    assert set(clock.seconds) == {"teacher", "student"}
    assert p.fraction == {"a": 1.0, "b": 0.0}  # a failed step is not marked done
    assert StageClock().progress is None


def test_unknown_steps_are_added_and_bad_plans_refused():
    p = Progress([("a", 1)], log=lambda line: None)
    p.start("extra")
    assert p.order == ["a", "extra"]
    with pytest.raises(ValueError, match="unique"):
        Progress([("a", 1), ("a", 2)])
    with pytest.raises(ValueError, match="> 0"):
        Progress([("a", 0)])
