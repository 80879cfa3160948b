"""k-fold evaluation by patient: teacher, KD student, no-KD student and the simple baselines.

For each fold: the teacher is fine-tuned on the training patients' prompts and its pooled features
are cached; two students are trained from the same seed, one with feature KD (alpha, beta > 0) and
one without (alpha = beta = 0); every model's decision threshold (or k, for popularity) is chosen
on the validation patients; the test patients are read only for the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contract.files import atomic_write_json, atomic_write_text
from distill.data import codes
from distill.data.samples import MedSample
from distill.data.splits import split
from distill.medication import baselines
from distill.metrics import (
    average_precision_per_sample,
    avg_drugs,
    ddi_rate,
    f1,
    jaccard,
    jaccard_per_sample,
    prauc,
)

METRICS = ("jaccard", "f1", "prauc", "ddi_rate", "avg_drugs")
MODELS = ("teacher", "student_kd", "student_nokd", "popularity", "previous_visit")
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def medication_scores(y: np.ndarray, scores: np.ndarray, pred: np.ndarray, ddi: list) -> dict:
    return {
        "jaccard": jaccard(y, pred),
        "f1": f1(y, pred),
        "prauc": prauc(y, scores),
        "ddi_rate": ddi_rate(pred, ddi),
        "avg_drugs": avg_drugs(pred),
    }


def choose_threshold(y_val: np.ndarray, s_val: np.ndarray) -> float:
    """The grid threshold with the best validation Jaccard (0.5 with no validation samples)."""
    if len(y_val) == 0:
        return 0.5
    scores = [jaccard(y_val, s_val >= t) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(scores))])


def ddi_label_pairs(labels: list[str]) -> list[tuple[int, int]]:
    index = {c: i for i, c in enumerate(labels)}
    return [(index[a], index[b]) for a, b in sorted(codes.ddi_pairs()) if a in index and b in index]


def summarize(per_fold: list[dict]) -> dict:
    """Mean and standard deviation (population, over folds) of every metric.

    A single/multi-visit breakdown is missing from a fold whose test part lacks that kind of
    sample; such a metric is summarized over the folds that report it.
    """
    out = {}
    for m in dict.fromkeys(k for f in per_fold for k in f):
        vals = np.array([f[m] for f in per_fold if m in f], dtype=np.float64)
        out[m] = round(float(vals.mean()), 4)
        out[f"{m}_std"] = round(float(vals.std()), 4)
    return out


def previous_multi_hot(
    samples: list[MedSample], labels: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(labels)}
    prev = np.zeros((len(samples), len(labels)), dtype=np.float32)
    has = np.zeros(len(samples), dtype=bool)
    for i, s in enumerate(samples):
        if s.history:
            has[i] = True
            for m in s.history[-1].medications:
                if m in index:
                    prev[i, index[m]] = 1.0
    return prev, has


def fold_indices(samples: list[MedSample], k: int, fold: int, seed: int) -> tuple[np.ndarray, ...]:
    sp = split({s.patient_id for s in samples}, k, fold, seed)
    pids = np.array([s.patient_id for s in samples])
    return tuple(
        np.flatnonzero(np.isin(pids, sorted(part))) for part in (sp.train, sp.validation, sp.test)
    )


def evaluate_fold(
    fold: int,
    idx: tuple[np.ndarray, np.ndarray, np.ndarray],
    y: np.ndarray,
    model_scores: dict[str, np.ndarray],
    prev: np.ndarray,
    has_prev: np.ndarray,
    ddi: list,
    thresholds: dict[str, float] | None = None,
    per_sample: dict | None = None,
) -> tuple[dict, dict]:
    """Test metrics of every model on one fold, overall and split by single/multi visit.

    `thresholds`: decision thresholds chosen elsewhere on non-test patients (e.g. on a
    student's inner-fold out-of-fold scores, when its validation patients were trained on);
    other models' thresholds are chosen on the validation patients. `per_sample`: if given,
    filled with {model: {"jaccard": [n_test], "prauc": [n_test]}} for paired comparisons.
    """
    tr, va, te = idx
    results: dict[str, dict] = {}
    chosen: dict[str, float] = {}
    for name, scores in model_scores.items():
        given = (thresholds or {}).get(name)
        t = float(given) if given is not None else choose_threshold(y[va], scores[va])
        chosen[name] = t
        results[name] = {"all": (scores[te], scores[te] >= t)}
    freq = baselines.label_frequency(y[tr])
    k = baselines.choose_k(freq, y[va]) if len(va) else 10
    chosen["popularity_k"] = k
    results["popularity"] = {"all": baselines.popularity(freq, k, len(te))}
    results["previous_visit"] = {"all": baselines.previous_visit(prev[te], has_prev[te], freq, k)}
    out: dict[str, dict] = {}
    single = ~has_prev[te]
    for name, r in results.items():
        scores, pred = r["all"]
        out[name] = medication_scores(y[te], scores, pred, ddi)
        if per_sample is not None:
            per_sample[name] = {
                "jaccard": jaccard_per_sample(y[te], pred),
                "prauc": average_precision_per_sample(y[te], scores),
            }
        for part, mask in (("single_visit", single), ("multi_visit", ~single)):
            if mask.any():
                out[name][f"{part}_jaccard"] = jaccard(y[te][mask], pred[mask])
                out[name][f"{part}_prauc"] = prauc(y[te][mask], scores[mask])
    return out, chosen


def build_report(
    per_fold: list[dict],
    meta: dict,
) -> dict:
    models = {}
    for name in per_fold[0]:
        models[name] = summarize([f[name] for f in per_fold])
    return {**meta, "models": models}


PAIRS = (
    ("student_kd", "student_nokd"),
    ("student_kd", "previous_visit"),
    ("student_nokd", "previous_visit"),
    ("student_kd", "popularity"),
)
PAIRED_METRICS = ("jaccard", "prauc")


def paired_differences(
    fold_metrics: list[dict],
    sample_metrics: list[dict],
    sample_patients: list[np.ndarray],
    pairs=PAIRS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Paired comparisons `a - b` on the same test patients, per fold and pooled.

    `fold_metrics[f][model][metric]`: the fold's test metric (students: mean over seeds);
    `sample_metrics[f][model][metric]`: per test sample [n_f] (NaN where undefined);
    `sample_patients[f]`: each test sample's patient id. Returns, per "a - b" and metric: the
    per-fold differences, their mean, the number of folds with a > b, a two-sided sign-test
    p-value over folds, and a 95% bootstrap interval of the pooled per-sample mean difference,
    patients resampled with replacement (a patient's visits stay together).
    """
    rng = np.random.default_rng(seed)
    pids = np.concatenate(sample_patients)
    uniq, inverse = np.unique(pids, return_inverse=True)
    draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    counts = np.stack([np.bincount(d, minlength=len(uniq)) for d in draws])  # [n_boot, P]
    out: dict[str, dict] = {}
    for a, b in pairs:
        if not all(a in f and b in f for f in fold_metrics):
            continue
        key = f"{a} - {b}"
        out[key] = {}
        for m in PAIRED_METRICS:
            folds = [round(float(f[a][m] - f[b][m]), 4) for f in fold_metrics]
            diff = np.concatenate([s[a][m] - s[b][m] for s in sample_metrics])
            ok = ~np.isnan(diff)
            # per patient: sum of differences and number of defined samples
            tot = np.bincount(inverse[ok], weights=diff[ok], minlength=len(uniq))
            num = np.bincount(inverse[ok], minlength=len(uniq)).astype(np.float64)
            boot = (counts @ tot) / np.maximum(counts @ num, 1.0)
            wins = sum(d > 0 for d in folds)
            losses = sum(d < 0 for d in folds)
            out[key][m] = {
                "per_fold": folds,
                "mean": round(float(np.mean(folds)), 4),
                "wins": int(wins),
                "folds": len(folds),
                "sign_test_p": round(_sign_test(wins, losses), 4),
                "pooled_mean": round(float(diff[ok].mean()), 4) if ok.any() else 0.0,
                "bootstrap_95": [
                    round(float(np.percentile(boot, 2.5)), 4),
                    round(float(np.percentile(boot, 97.5)), 4),
                ],
            }
    return out


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (ties dropped)."""
    from math import comb

    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _paired_markdown(paired: dict) -> list[str]:
    lines = [
        "",
        "Paired differences on the same test patients (students: mean over seeds). Per fold; "
        "folds won; sign-test p over folds; pooled per-sample mean with a 95% patient-bootstrap "
        "interval:",
        "",
        "| a - b | metric | per fold | wins | sign p | pooled mean [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for key, by_metric in paired.items():
        for m, d in by_metric.items():
            folds = " ".join(f"{v:+.3f}" for v in d["per_fold"])
            lo, hi = d["bootstrap_95"]
            lines.append(
                f"| {key} | {m} | {folds} | {d['wins']}/{d['folds']} | {d['sign_test_p']:.3f} "
                f"| {d['pooled_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
            )
    return lines


def report_markdown(report: dict) -> str:
    chosen = "thresholds and k chosen on validation patients"
    if "inner" in str(report.get("selection", "")):
        chosen = (
            "the students' epochs and thresholds chosen on an inner k-fold over the non-test "
            "patients, the other thresholds and popularity's k on validation patients"
        )
    lines = [
        f"# pocketrec report: {report['domain']} on {report['source']}",
        "",
        f"Protocol `{report['protocol']}`, {report['folds']} folds by patient; "
        f"mean ± standard deviation over folds{_spread_note(report)}; {chosen}.",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for name, m in report["models"].items():
        cells = [f"{m[k]:.4f} ± {m[k + '_std']:.4f}" for k in METRICS if k in m]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Single- vs multi-visit test samples (Jaccard, PR-AUC):", ""]
    lines += [
        "| model | single jaccard | single prauc | multi jaccard | multi prauc |",
        "|---|---|---|---|---|",
    ]
    keys = (
        "single_visit_jaccard",
        "single_visit_prauc",
        "multi_visit_jaccard",
        "multi_visit_prauc",
    )
    for name, m in report["models"].items():
        if not any(k in m for k in keys):
            continue  # the export's student_int8 row has no split
        cells = [f"{m[k]:.4f}" if k in m else "–" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.get("paired"):
        lines += _paired_markdown(report["paired"])
    if report.get("seeds"):
        lines += [
            "",
            f"Students: seeds {report['seeds']} x {report['folds']} folds "
            f"(mean ± std over all {len(report['seeds']) * report['folds']} runs; per run in "
            "report.json `runs`); students selected by "
            f"{report.get('selection', 'validation early stopping')}.",
        ]
    lines += [
        "",
        "Parameters: "
        + ", ".join(
            f"{k} {v:,}" if isinstance(v, int) else f"{k} {v if v is not None else '–'}"
            for k, v in report["params"].items()
        ),
    ]
    lines += [
        "",
        "Wall time per stage (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["wall_s"].items()),
    ]
    lines += _export_markdown(report)
    lines += ["", f"Teacher: {_teacher_text(report['teacher'])}", ""]
    return "\n".join(lines)


def _spread_note(report: dict) -> str:
    parts = []
    if report.get("seeds"):
        parts.append(f"the students over {len(report['seeds'])} seeds x {report['folds']} folds")
    if "student_int8" in report.get("models", {}):
        parts.append("student_int8 over seed 0's student of each fold, as exported")
    return f" ({'; '.join(parts)})" if parts else ""


def _export_markdown(report: dict) -> list[str]:
    """The pipeline's additions: the bundle, its int8 form, sizes and fold 0's parity gates."""
    export = report.get("export")
    if not export:
        return []
    lines = ["", "Export:"]
    if report.get("bundle"):
        lines.append(f"- bundle: `{report['bundle']}` (fold 0's KD student)")
    form = export.get("int8_form")
    preset = export.get("preset")
    lines.append(f"- int8 form: {form}" + (f", preset {preset}" if preset else ""))
    sizes = report.get("size_bytes") or {}
    if sizes:
        lines.append("- sizes: " + ", ".join(f"{k} {v:,} bytes" for k, v in sizes.items()))
    summary = (export.get("parity_fold0") or {}).get("summary") or {}
    if summary:
        verdict = "passed" if summary.get("passed") else "FAILED"
        lines.append(
            f"- parity gates on fold 0's {summary.get('n_samples')} test samples: {verdict}; "
            f"torch vs ONNX max |diff| {summary.get('torch_vs_onnx_max_abs_diff', 0):.1e}, "
            f"int8 - fp32 PR-AUC {summary.get('int8_delta_prauc', 0):+.4f}, "
            f"jaccard {summary.get('int8_delta_jaccard', 0):+.4f}, "
            f"top-10 overlap {summary.get('int8_top10_overlap', 0):.3f}"
        )
    vocab = export.get("vocabulary_fold0")
    if vocab:
        kept = ", ".join(f"{v['kept']:,} of {v['of']:,} {k}" for k, v in vocab.items())
        lines.append(f"- vocabulary cut to fold 0's training codes: {kept}")
    return lines


def _teacher_text(teacher) -> str:
    if not isinstance(teacher, dict):
        return str(teacher)
    how = (
        "frozen (linear probe on its features)"
        if teacher.get("frozen")
        else ("LoRA fine-tuned" if teacher.get("lora") else "fully fine-tuned")
    )
    if not teacher.get("frozen") and teacher.get("epochs") is not None:
        how += f", {teacher['epochs']} epoch(s)"
    text = f"{teacher.get('backbone')}, {how}"
    if teacher.get("max_length"):
        text += f"; prompts cut at {teacher['max_length']} tokens"
    if teacher.get("features_from"):
        text += f"; features from {teacher['features_from']}"
    return text


def write_report(report: dict, out_dir: Path) -> None:
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", report_markdown(report))
