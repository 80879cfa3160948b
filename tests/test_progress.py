"""distill.progress.Progress: named bars, an overall share and an ETA from the plan and the pace
of each kind of step."""

from __future__ import annotations

import pytest

from distill.progress import MIN_PACE_S, Progress, step_kind
from distill.runs import StageClock


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


# A --quick medication pipeline on mimic4-demo, as a reviewer's log shows it (seconds so far; a
# fraction is an update of that step's bar). Its distill part ended at 334 s. The plan is
# `distill.medication.run._plan`'s for that run: the teacher steps took about 10 s of their 300
# planned, the students about 55 s of 60; projecting the students' pace onto the teachers said
# "ETA 22m15s" at 55 s.
QUICK_RUN = [
    (0, "data", "start"),
    (1, "data", "done"),
    (1, "prompts", "start"),
    (5, "prompts", "done"),
    (5, "title embeddings", "start"),
    (12, "title embeddings", "done"),
    (12, "fold 1/5 teacher", "start"),
    (22, "fold 1/5 teacher", "done"),
    (24, "fold 1/5 students", "start"),
    (24, "fold 1/5 students", 0.00),
    (29, "fold 1/5 students", 0.14),
    (34, "fold 1/5 students", 0.22),
    (39, "fold 1/5 students", 0.33),
    (44, "fold 1/5 students", 0.44),
    (50, "fold 1/5 students", 0.50),
    (55, "fold 1/5 students", 0.57),
    (63, "fold 1/5 students", 0.67),
    (68, "fold 1/5 students", 0.77),
    (73, "fold 1/5 students", 0.86),
    (79, "fold 1/5 students", "done"),
    (79, "fold 2/5 teacher", "start"),
    (90, "fold 2/5 teacher", "done"),
    (93, "fold 2/5 students", "start"),
    (93, "fold 2/5 students", 0.00),
    (98, "fold 2/5 students", 0.11),
    (104, "fold 2/5 students", 0.17),
    (109, "fold 2/5 students", 0.31),
    (114, "fold 2/5 students", 0.40),
    (120, "fold 2/5 students", 0.51),
    (125, "fold 2/5 students", 0.61),
    (130, "fold 2/5 students", 0.73),
    (135, "fold 2/5 students", 0.80),
    (140, "fold 2/5 students", 0.91),
    (145, "fold 2/5 students", 0.97),
    (147, "fold 2/5 students", "done"),
    (147, "fold 3/5 teacher", "start"),
    (154, "fold 3/5 teacher", "done"),
    (156, "fold 3/5 students", "start"),
    (156, "fold 3/5 students", 0.00),
    (161, "fold 3/5 students", 0.06),
    (166, "fold 3/5 students", 0.13),
    (171, "fold 3/5 students", 0.27),
    (177, "fold 3/5 students", 0.36),
    (182, "fold 3/5 students", 0.42),
    (187, "fold 3/5 students", 0.50),
    (192, "fold 3/5 students", 0.62),
    (197, "fold 3/5 students", 0.72),
    (202, "fold 3/5 students", 0.78),
    (208, "fold 3/5 students", 0.86),
    (213, "fold 3/5 students", 0.97),
    (215, "fold 3/5 students", "done"),
    (215, "fold 4/5 teacher", "start"),
    (225, "fold 4/5 teacher", "done"),
    (228, "fold 4/5 students", "start"),
    (228, "fold 4/5 students", 0.00),
    (233, "fold 4/5 students", 0.14),
    (238, "fold 4/5 students", 0.19),
    (244, "fold 4/5 students", 0.28),
    (249, "fold 4/5 students", 0.40),
    (254, "fold 4/5 students", 0.50),
    (260, "fold 4/5 students", 0.67),
    (265, "fold 4/5 students", 0.82),
    (270, "fold 4/5 students", 0.85),
    (275, "fold 4/5 students", 0.99),
    (277, "fold 4/5 students", "done"),
    (277, "fold 5/5 teacher", "start"),
    (285, "fold 5/5 teacher", "done"),
    (290, "fold 5/5 students", "start"),
    (290, "fold 5/5 students", 0.00),
    (295, "fold 5/5 students", 0.11),
    (300, "fold 5/5 students", 0.17),
    (306, "fold 5/5 students", 0.34),
    (311, "fold 5/5 students", 0.50),
    (317, "fold 5/5 students", 0.62),
    (322, "fold 5/5 students", 0.75),
    (327, "fold 5/5 students", 0.86),
    (332, "fold 5/5 students", 0.97),
    (334, "fold 5/5 students", "done"),
]
QUICK_END = 334
QUICK_PLAN = [("data", 2.0), ("prompts", 3.0), ("title embeddings", 30.0)] + [
    (f"fold {f}/5 {what}", weight)
    for f in range(1, 6)
    for what, weight in (("teacher", 300.0), ("students", 60.0))
]


def replay(plan, events):
    """(seconds, ETA or None, the line logged) after each event."""
    lines, clock = [], FakeClock()
    p = Progress(plan, log=lines.append, clock=clock, min_interval=0)
    seen = []
    for t, step, what in events:
        clock.t = t
        if what == "start":
            p.start(step)
        elif what == "done":
            p.done(step)
        else:
            p.update(step, what)
        seen.append((t, p.eta_s(), lines[-1]))
    return seen


def test_eta_of_the_quick_run_stays_near_the_true_remainder():
    seen = replay(QUICK_PLAN, QUICK_RUN)
    first_paced = 29  # the first students' update after MIN_PACE_S of them
    for t, eta, line in seen:
        left = QUICK_END - t
        if eta is None:
            assert t < 12 and "ETA" not in line  # 0.3% of the plan is no evidence
            continue
        # never far above (it said 22m15s with 4m39s left); before the students first run,
        # only the plan speaks for them (a fifth of a teacher), so from 22 s to 24 s it is low
        assert eta <= 2 * left, line
        if t >= first_paced and left >= 10:
            assert 0.67 < eta / left < 1.5, line
    at = {t: line for t, _, line in seen}
    assert "ETA 4m41s, 55s so far" in at[55]  # truly 4m39s left
    assert "ETA 4m08s, 1m44s so far" in at[104]  # truly 3m50s left
    # the overall share agrees with the time: a third of the last students' step is not 98%
    assert "| all 90%, ETA 35s, 5m06s so far" in at[306]
    assert seen[-1][2].endswith("| all 100%, ETA 0s, 5m34s so far")


def test_the_overall_share_never_goes_back():
    shares = [
        int(line.split("| all ")[1].split("%")[0]) for _, _, line in replay(QUICK_PLAN, QUICK_RUN)
    ]
    assert shares == sorted(shares) and shares[-1] == 100


def test_a_fast_kind_is_not_priced_at_a_slow_kinds_pace():
    """Two folds of (teacher, students): the teacher takes 10 s of its planned 300, the students
    60 s of 60. Halfway through fold 1's students the rest is 30 + 10 + 60 s, not fold 2's
    teacher at the students' pace (300 s)."""
    clock = FakeClock()
    plan = [("fold 1/2 teacher", 300), ("fold 1/2 students", 60)]
    plan += [("fold 2/2 teacher", 300), ("fold 2/2 students", 60)]
    p = Progress(plan, log=lambda line: None, clock=clock)
    p.start("fold 1/2 teacher")
    clock.t = 10
    p.done("fold 1/2 teacher")
    p.start("fold 1/2 students")
    clock.t = 40
    p.update("fold 1/2 students", 0.5)
    assert p.eta_s() == pytest.approx(30 + 10 + 60)
    clock.t = 70
    p.done("fold 1/2 students")
    assert p.eta_s() == pytest.approx(10 + 60)  # each kind at its own measured pace


def test_a_step_at_100_percent_before_its_done_still_counts_its_time():
    """The students' last update says 1.0 a while before `done` (evaluation); the time it
    took still prices the next step of its kind."""
    clock = FakeClock()
    plan = [("fold 1/2 students", 60), ("fold 2/2 students", 60)]
    p = Progress(plan, log=lambda line: None, clock=clock)
    p.start("fold 1/2 students")
    clock.t = 120
    p.update("fold 1/2 students", 1.0)
    assert p.eta_s() == pytest.approx(120)  # 120 s for 60 units, not the plan's 60


def test_a_warm_up_is_not_a_pace():
    """A step whose first tenth took 3 s of warm-up (under MIN_PACE_S) does not yet say the
    whole step takes 30 s; once it has run long enough its own pace counts."""
    clock = FakeClock()
    p = Progress([("a", 10), ("b", 10)], log=lambda line: None, clock=clock)
    p.start("a")
    clock.t = 10
    p.done("a")  # 10 s for 10 planned units: 1 s a unit
    p.start("b")
    clock.t = 10 + MIN_PACE_S - 2
    p.update("b", 0.1)
    assert p.eta_s() == pytest.approx(13 * 0.9 * 10 / 11)  # the time so far over the share done
    clock.t = 10 + 2 * MIN_PACE_S
    p.update("b", 0.5)
    assert p.eta_s() == pytest.approx(2 * MIN_PACE_S)  # its own pace: half done in 10 s


def test_no_eta_from_a_sliver_of_the_plan():
    lines, clock = [], FakeClock()
    p = Progress([("data", 1), ("teacher", 999)], log=lines.append, clock=clock)
    p.start("data")
    clock.t = 1
    p.done("data")
    assert p.eta_s() is None and "ETA" not in lines[-1]  # 0.1% done: 16 min would be a guess


def test_step_kinds():
    assert step_kind("fold 1/5 teacher") == step_kind("fold 12/15 teacher") == "fold #/# teacher"
    assert step_kind("fold 1/5 teacher") != step_kind("fold 1/5 students")
    assert step_kind("student_kd") != step_kind("student_nokd")
