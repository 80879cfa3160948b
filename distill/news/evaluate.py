"""Scoring a news run: the popularity baseline, the MIND metrics with their bootstrap spread,
validation AUC for early stopping, and the report's markdown.

There is a single time split (MIND-style: train on the past, test on the latest impressions),
so there is no spread over folds: the ``<metric>_std`` of the report is the standard deviation
of the metric over `bootstrap` resamples (with replacement) of the test impressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.metrics import auc, mrr, ndcg, news_metrics

__all__ = [
    "METRICS",
    "MODELS",
    "bootstrap_std",
    "evaluate_scores",
    "format_number",
    "popularity_scores",
    "report_markdown",
    "report_table",
    "source_name",
    "validation_auc",
]

METRICS = ("auc", "mrr", "ndcg5", "ndcg10")
MODELS = ("teacher", "student_kd", "student_nokd", "popularity")


def validation_auc(scores: Sequence[np.ndarray], impressions: Sequence[Any]) -> float:
    return news_metrics(
        (np.asarray(imp.labels), s) for imp, s in zip(impressions, scores, strict=True)
    )["auc"]


def popularity_scores(train: list, impressions: list) -> list[np.ndarray]:
    """Score = clicks of the candidate in the training impressions; ties broken by item id
    (the smaller id ranks higher), never by position."""
    clicks: dict[str, int] = {}
    for imp in train:
        for c, y in zip(imp.candidates, imp.labels, strict=True):
            if y == 1:
                clicks[c] = clicks.get(c, 0) + 1
    out = []
    for imp in impressions:
        ranked = sorted(imp.candidates, key=lambda c: (-clicks.get(c, 0), c))
        place = {c: len(ranked) - k for k, c in enumerate(ranked)}
        out.append(np.array([place[c] for c in imp.candidates], dtype=np.float64))
    return out


def _rows(labels: list[np.ndarray], scores: list[np.ndarray]) -> np.ndarray:
    """Per-impression (auc, mrr, ndcg5, ndcg10) of the impressions news_metrics keeps."""
    rows = []
    for y, s in zip(labels, scores, strict=True):
        if y.all() or not y.any():
            continue
        rows.append((auc(y, s), mrr(y, s), ndcg(y, s, 5), ndcg(y, s, 10)))
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(METRICS))


def bootstrap_std(
    labels: list[np.ndarray], scores: list[np.ndarray], n: int = 5, seed: int = 0
) -> dict[str, float]:
    """Standard deviation (ddof 1) of each metric's mean over `n` resamples of the
    impressions with replacement (0.0 for fewer than 2 resamples or no usable impression)."""
    rows = _rows(labels, scores)
    if n < 2 or not len(rows):
        return {f"{m}_std": 0.0 for m in METRICS}
    rng = np.random.default_rng(seed)
    means = np.stack([rows[rng.integers(0, len(rows), len(rows))].mean(0) for _ in range(n)])
    std = means.std(axis=0, ddof=1)
    return {f"{m}_std": round(float(v), 4) for m, v in zip(METRICS, std, strict=True)}


def evaluate_scores(
    labels: list[np.ndarray], scores: list[np.ndarray], n_boot: int, seed: int
) -> dict:
    point = news_metrics(zip(labels, scores, strict=True))
    out: dict[str, Any] = {m: round(point[m], 4) for m in METRICS}
    out |= bootstrap_std(labels, scores, n_boot, seed)
    out["skipped_impressions"] = point["skipped_impressions"]
    keys = [k for m in METRICS for k in (m, f"{m}_std")] + ["skipped_impressions"]
    return {k: out[k] for k in keys}


def source_name(folder: Path) -> str:
    if (folder / "generator.json").is_file():
        return f"generated ({folder.name})"
    if (folder / "conversion.json").is_file():
        return f"MovieLens converted to MIND ({folder.name})"
    return folder.name


def report_table(report: dict) -> str:
    lines = [
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for name, m in report["models"].items():
        cells = [f"{m[k]:.4f} ± {m[k + '_std']:.4f}" for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(report: dict) -> str:
    n = report["impressions"]
    lines = [
        f"# pocketrec report: {report['domain']} on {report['source']}",
        "",
        f"Protocol `{report['protocol']}`: one split by time ({n['train']} train, "
        f"{n['val']} validation, {n['test']} test impressions; {report['items']} catalog items). "
        f"Metrics are means over test impressions (impressions without both a click and a "
        f"non-click are skipped). With a single split there is no spread over folds: ± is the "
        f"standard deviation over {report['bootstrap_resamples']} bootstrap resamples of the "
        f"test impressions.",
        "",
        report_table(report),
        "",
        "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in report["params"].items()),
        "",
        "Wall time per stage (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["wall_s"].items()),
        "",
        f"Teacher: {report['teacher']}",
        "",
    ]
    if report.get("quick"):
        lines.insert(2, f"Quick run: {report['quick']}.\n")
    lines += data_lines(report)
    if report.get("export"):  # the pipeline's report: the run's, plus its export
        e, size = report["export"], sum(report.get("size_bytes", {}).values())
        p = {k: format_number(v) for k, v in (e.get("parity") or {}).items()}
        overlap = format_number((e.get("parity") or {}).get("int8_catalog_top5_overlap"), ".3f")
        lines += [
            f"Bundle `{e['bundle']}` ({e['name']}, int8 preset `{e['preset']}`, {size:,} "
            f"bytes): int8 AUC {p.get('int8_auc', '?')} vs fp32 {p.get('fp32_auc', '?')} on "
            f"{(e.get('parity') or {}).get('n_test_impressions')} test impressions, mean top-5 "
            f"overlap of the catalog ranking {overlap}.",
            "",
        ]
    return "\n".join(lines)


def data_lines(report: dict) -> list[str]:
    """report.md's "Data as read" paragraph: when the MIND reader skipped or dropped anything
    (impressions, candidates, history items) or kept impressions the metrics cannot score."""
    data = report.get("data_report") or {}
    if not (
        data.get("dropped_candidate_ids")
        or data.get("skipped")
        or data.get("unknown_history_ids")
        or data.get("impressions_without_negative")
    ):
        return []
    return [
        f"Data as read (MIND reader, unknown candidates: "
        f"`{data.get('unknown_candidates', 'skip')}`): " + data_summary(data) + ".",
        "",
    ]


def data_summary(data: dict) -> str:
    """What the MIND reader skipped and dropped, from a report's `data_report`."""
    parts = [
        f"{data.get('behavior_rows', '?')} impressions read, {data.get('impressions', '?')} kept"
    ]
    for why, n in (data.get("skipped") or {}).items():
        parts.append(f"{n} skipped ({why})")
    if data.get("dropped_candidate_ids"):
        parts.append(
            f"{data['dropped_candidate_ids']} candidates not in news.tsv dropped "
            f"({data.get('dropped_clicks', 0)} of them clicked) from "
            f"{data.get('impressions_with_dropped_candidates', '?')} impressions"
        )
    if data.get("unknown_history_ids"):
        parts.append(
            f"{data['unknown_history_ids']} history ids not in news.tsv dropped from "
            f"{data.get('impressions_with_unknown_history', '?')} histories"
        )
    if data.get("impressions_without_negative"):
        parts.append(
            f"{data['impressions_without_negative']} kept impressions with no unclicked "
            "candidate (trained on with sampled negatives, not scored by the ranking metrics)"
        )
    return "; ".join(parts)


def format_number(x: Any, spec: str = ".4f") -> str:
    """`x` formatted with `spec`, or "?" when it is not a number (a missing report key)."""
    return format(x, spec) if isinstance(x, int | float) else "?"
