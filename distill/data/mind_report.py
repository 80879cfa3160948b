"""What the MIND reader (`distill.data.mind`) saw besides the impressions it kept: rows read,
impressions skipped by reason, unknown ids dropped, with examples; `summary` puts it in one
line for errors and logs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

EXAMPLES_KEPT = 50  # distinct unknown ids remembered as examples in the report

__all__ = ["EXAMPLES_KEPT", "MindReport", "unknown_candidates_hint"]


@dataclass(slots=True)
class MindReport:
    """What the reader saw besides the kept impressions."""

    news_file: str = ""
    behaviors_file: str = ""
    news_rows: int = 0
    repeated_news_rows: int = 0  # identical repeats of an earlier row, skipped
    behavior_rows: int = 0
    impressions: int = 0  # kept
    blank_lines: int = 0
    empty_histories: int = 0  # kept impressions whose history is empty (after dropping unknowns)
    unlabeled_impressions: int = 0
    impressions_without_click: int = 0  # labeled, kept, no candidate clicked
    # labeled, kept, every candidate clicked (with "drop", their unclicked ones may all have
    # been unknown): training samples them negatives; ranking metrics cannot score them
    impressions_without_negative: int = 0
    unknown_history_ids: int = 0  # history entries dropped because news.tsv lacks them
    impressions_with_unknown_history: int = 0
    unknown_candidate_ids: int = 0  # candidate entries missing from news.tsv
    unknown_candidates: str = "skip"  # what was done with them: "skip" or "drop"
    dropped_candidate_ids: int = 0  # with "drop": candidates removed from kept impressions
    dropped_clicks: int = 0  # ... of which clicked
    impressions_with_dropped_candidates: int = 0  # kept impressions that lost a candidate
    skipped: Counter = field(default_factory=Counter)  # reason -> impressions skipped
    unknown_examples: Counter = field(default_factory=Counter)  # unknown id -> occurrences

    def note_unknown(self, item_id: str) -> None:
        if item_id in self.unknown_examples or len(self.unknown_examples) < EXAMPLES_KEPT:
            self.unknown_examples[item_id] += 1

    def as_dict(self) -> dict:
        return {
            "news_file": self.news_file,
            "behaviors_file": self.behaviors_file,
            "news_rows": self.news_rows,
            "repeated_news_rows": self.repeated_news_rows,
            "behavior_rows": self.behavior_rows,
            "impressions": self.impressions,
            "blank_lines": self.blank_lines,
            "empty_histories": self.empty_histories,
            "unlabeled_impressions": self.unlabeled_impressions,
            "impressions_without_click": self.impressions_without_click,
            "impressions_without_negative": self.impressions_without_negative,
            "unknown_history_ids": self.unknown_history_ids,
            "impressions_with_unknown_history": self.impressions_with_unknown_history,
            "unknown_candidate_ids": self.unknown_candidate_ids,
            "unknown_candidates": self.unknown_candidates,
            "dropped_candidate_ids": self.dropped_candidate_ids,
            "dropped_clicks": self.dropped_clicks,
            "impressions_with_dropped_candidates": self.impressions_with_dropped_candidates,
            "skipped": dict(self.skipped),
            "unknown_examples": dict(self.unknown_examples.most_common()),
        }

    def summary(self) -> str:
        """One line of what was read, skipped and dropped (for errors and logs)."""
        parts = [
            f"{self.news_rows} news rows"
            + (
                f" ({self.repeated_news_rows} identical repeats skipped)"
                if self.repeated_news_rows
                else ""
            ),
            f"{self.behavior_rows} impressions read",
            f"{self.impressions} kept",
        ]
        if self.skipped:
            skips = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
            parts.append(f"skipped: {skips}")
        if self.unknown_candidate_ids:
            parts.append(f"{self.unknown_candidate_ids} candidate ids not in news.tsv")
        if self.dropped_candidate_ids:
            parts.append(
                f"{self.dropped_candidate_ids} unknown candidates dropped ({self.dropped_clicks} "
                f"clicked) from {self.impressions_with_dropped_candidates} impressions"
            )
        if self.impressions_without_negative:
            parts.append(
                f"{self.impressions_without_negative} kept impressions with no unclicked "
                "candidate (not scored by the ranking metrics)"
            )
        if self.unknown_history_ids:
            parts.append(
                f"{self.unknown_history_ids} history ids not in news.tsv dropped from "
                f"{self.impressions_with_unknown_history} histories"
            )
        if self.unknown_examples:
            ex = ", ".join(k for k, _ in self.unknown_examples.most_common(5))
            parts.append(f"unknown ids e.g. {ex}")
        return "; ".join(parts)


def unknown_candidates_hint(report: MindReport) -> str:
    """The way out when impressions were skipped for candidates missing from news.tsv (only
    with the default "skip"), as a clause to end an error with; "" otherwise."""
    if report.unknown_candidates == "skip" and report.skipped.get("candidate not in news.tsv"):
        return (
            "; to keep such impressions without their unknown candidates, pass "
            "--mind-unknown drop (unknown_candidates='drop')"
        )
    return ""
