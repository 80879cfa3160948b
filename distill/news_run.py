"""The news job: MIND data -> time split -> teacher (+ vector cache) -> students -> evaluation.

`run_news` writes everything under `out_dir`:

    config.json                      the run's settings
    teacher/                         news_teacher.json + heads (+ LoRA adapter),
                                     items.safetensors(.json), users.safetensors(.json)
    student/vocab.json               the student's word-piece vocabulary
    student/student_kd.safetensors, student/student_nokd.safetensors
    histories.json                   per-epoch training logs of the three trained models
    report.json, report.md

There is a single time split (MIND-style: train on the past, test on the latest impressions),
so there is no spread over folds: the ``<metric>_std`` of the report is the standard deviation
of the metric over `bootstrap` resamples (with replacement) of the test impressions.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.vocab import write_json_atomic
from distill.metrics import auc, mrr, ndcg, news_metrics

__all__ = ["METRICS", "MODELS", "bootstrap_std", "popularity_scores", "quick_configs", "run_news"]

METRICS = ("auc", "mrr", "ndcg5", "ndcg10")
MODELS = ("teacher", "student_kd", "student_nokd", "popularity")
QUICK_IMPRESSIONS = 1500


def _log(msg: str) -> None:
    print(f"[pocketrec] {msg}", file=sys.stderr, flush=True)


def quick_configs(tcfg: Any, dcfg: Any) -> tuple[Any, Any]:
    """A couple of minutes on 2 cores: short histories and titles, few epochs."""
    tcfg = replace(
        tcfg,
        epochs=min(tcfg.epochs, 3),
        patience=1,
        max_history=min(tcfg.max_history, 10),
        max_text_tokens=min(tcfg.max_text_tokens, 24),
    )
    dcfg = replace(
        dcfg,
        epochs=min(dcfg.epochs, 6),
        patience=min(dcfg.patience, 2),
        max_history=min(dcfg.max_history, 10),
        max_title_tokens=min(dcfg.max_title_tokens, 16),
    )
    return tcfg, dcfg


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


def _evaluate(labels: list[np.ndarray], scores: list[np.ndarray], n_boot: int, seed: int) -> dict:
    point = news_metrics(zip(labels, scores, strict=True))
    out: dict[str, Any] = {m: round(point[m], 4) for m in METRICS}
    out |= bootstrap_std(labels, scores, n_boot, seed)
    out["skipped_impressions"] = point["skipped_impressions"]
    keys = [k for m in METRICS for k in (m, f"{m}_std")] + ["skipped_impressions"]
    return {k: out[k] for k in keys}


def _source_name(folder: Path) -> str:
    if (folder / "generator.json").is_file():
        return f"generated ({folder.name})"
    if (folder / "conversion.json").is_file():
        return f"MovieLens converted to MIND ({folder.name})"
    return folder.name


def _table(report: dict) -> str:
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
        _table(report),
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
    return "\n".join(lines)


def run_news(
    out_dir: str | Path,
    data_folder: str | Path,
    teacher_cfg: Any = None,
    distill_cfg: Any = None,
    student_dim: int = 64,
    student_heads: int = 4,
    quick: bool = False,
    force: bool = False,
    quick_impressions: int = QUICK_IMPRESSIONS,
    bootstrap: int = 5,
    threads: int | None = None,
    source: str | None = None,
) -> dict:
    """Run the news job (see the module docstring); returns the report it writes.

    `teacher_cfg`: a `NewsTeacherConfig` (default: MiniLM, frozen); `distill_cfg`: a
    `NewsDistillConfig` for the KD student (the no-KD student is the same without teacher).
    `quick`: a seeded random subset of `quick_impressions` impressions, only the catalog items
    they use, and the shorter settings of `quick_configs`. Refuses a non-empty `out_dir`
    unless `force`. `threads`: torch CPU threads for the teacher (default: every core, see
    `distill.teacher`); the students always train on one (see `train_news_student`).
    `source`: the embedded source `data_folder` was made from (e.g. "movielens-demo"), kept in
    config.json so an export can rebuild the data when the folder is gone.
    """
    import torch

    before = torch.get_num_threads()
    try:
        return _run_news(
            Path(out_dir),
            Path(data_folder),
            teacher_cfg,
            distill_cfg,
            student_dim,
            student_heads,
            quick,
            force,
            quick_impressions,
            bootstrap,
            threads,
            source,
        )
    finally:
        torch.set_num_threads(before)


def _run_news(
    out: Path,
    data_folder: Path,
    teacher_cfg: Any,
    distill_cfg: Any,
    student_dim: int,
    student_heads: int,
    quick: bool,
    force: bool,
    quick_impressions: int,
    bootstrap: int,
    threads: int | None,
    source: str | None,
) -> dict:
    import torch

    from distill import evaluate as ev
    from distill.data.mind import load_mind, time_split
    from distill.news_student import (
        NewsStudentConfig,
        build_piece_vocab,
        count_parameters,
        save_news_student,
        save_piece_vocab,
    )
    from distill.news_teacher import (
        NewsTeacherConfig,
        cache_teacher_vectors,
        item_text,
        load_teacher_vectors,
        save_news_teacher,
        train_news_teacher,
    )
    from distill.news_train import (
        NewsCorpus,
        NewsDistillConfig,
        TeacherTargets,
        student_scores,
        train_news_student,
    )
    from distill.run import prepare_out

    t_start = time.perf_counter()
    clock = ev.StageClock()
    tcfg = teacher_cfg or NewsTeacherConfig()
    dcfg = distill_cfg or NewsDistillConfig()
    if quick:
        tcfg, dcfg = quick_configs(tcfg, dcfg)
    prepare_out(out, force)
    config = {
        "data_folder": str(data_folder),
        "source": source,
        "teacher": tcfg.to_dict(),
        "distill": dcfg.to_dict(),
        "student": {"dim": student_dim, "heads": student_heads},
        "quick": quick,
        "quick_impressions": quick_impressions if quick else None,
        "bootstrap": bootstrap,
        "threads": threads,
    }
    write_json_atomic(out / "config.json", config)

    with clock("data"):
        data = load_mind(data_folder)
        impressions = data.impressions
        if quick and len(impressions) > quick_impressions:
            impressions = random.Random(dcfg.seed).sample(impressions, quick_impressions)
        train, val, test = time_split(impressions)
        if not train or not test:
            raise ValueError(f"{data_folder}: too few impressions ({len(impressions)}) to split")
        if quick:
            keep_h = max(tcfg.max_history, dcfg.max_history)
            used = {c for imp in impressions for c in imp.candidates}
            used |= {h for imp in impressions for h in imp.history[-keep_h:]}
            catalog = sorted(used)
        else:
            catalog = sorted(data.items)
    _log(
        f"data: {len(impressions)} impressions ({len(train)} train, {len(val)} validation, "
        f"{len(test)} test by time), {len(catalog)} catalog items, from {data_folder}"
    )

    with clock("teacher"):
        _log(f"teacher: {tcfg.backbone}, {'LoRA' if tcfg.lora else 'frozen LM'}")
        teacher = train_news_teacher(
            data.items, train, val, tcfg, item_ids=catalog, log=_log, threads=threads
        )
        save_news_teacher(teacher.model, out / "teacher")
    with clock("teacher_cache"):
        every = [*train, *val, *test]
        items_path, users_path = cache_teacher_vectors(teacher, every, out / "teacher")
        t_items, _, _ = load_teacher_vectors(items_path, teacher.index.ids)
        t_users, _, _ = load_teacher_vectors(users_path, [imp.impression_id for imp in train])

    with clock("student_vocab"):
        tokenize = teacher.model.tokenizer.tokenize
        texts_vocab = build_piece_vocab((item_text(data.items[i]) for i in catalog), tokenize)
        save_piece_vocab(
            texts_vocab,
            out / "student" / "vocab.json",
            tokenizer=tcfg.backbone,
            text="category: title",
            max_tokens=dcfg.max_title_tokens,
        )
        corpus = NewsCorpus.build(data.items, catalog, tokenize, texts_vocab, dcfg.max_title_tokens)
    scfg = NewsStudentConfig(
        vocab_size=len(texts_vocab),
        dim=student_dim,
        heads=student_heads,
        teacher_dim=int(t_items.shape[1]),
    )
    _log(f"student: {len(texts_vocab)} word pieces, dim {student_dim}")
    targets = TeacherTargets(t_items, t_users)
    with clock("student_kd"):
        kd = train_news_student(
            corpus, train, val, scfg, dcfg, targets, log=_log, name="student_kd"
        )
    with clock("student_nokd"):
        nokd = train_news_student(
            corpus, train, val, scfg, dcfg.no_kd(), log=_log, name="student_nokd"
        )
    save_news_student(kd.model, out / "student" / "student_kd.safetensors")
    save_news_student(nokd.model, out / "student" / "student_nokd.safetensors")

    with clock("evaluate"):
        torch.set_num_threads(1)  # small matrices (see train_news_student)
        labels = [np.asarray(imp.labels) for imp in test]
        scores = {
            "teacher": teacher.scores(test),
            "student_kd": student_scores(kd.model, corpus, test, dcfg.max_history),
            "student_nokd": student_scores(nokd.model, corpus, test, dcfg.max_history),
            "popularity": popularity_scores(train, test),
        }
        models = {name: _evaluate(labels, scores[name], bootstrap, dcfg.seed) for name in MODELS}
    write_json_atomic(
        out / "histories.json",
        {"teacher": teacher.history, "student_kd": kd.history, "student_nokd": nokd.history},
    )

    n_teacher = sum(p.numel() for p in teacher.model.parameters())
    report = {
        "domain": "news",
        "source": f"{source}: {_source_name(data_folder)}" if source else _source_name(data_folder),
        "protocol": "time-split",
        "folds": 1,
        "impressions": {"train": len(train), "val": len(val), "test": len(test)},
        "items": len(catalog),
        "bootstrap_resamples": bootstrap,
        "quick": (
            f"{len(impressions)} of {len(data.impressions)} impressions, {len(catalog)} of "
            f"{len(data.items)} items"
            if quick
            else False
        ),
        "models": models,
        "params": {"teacher": n_teacher, "student": count_parameters(kd.model)},
        "teacher": {
            "backbone": tcfg.backbone,
            "lora": tcfg.lora,
            "pooling": teacher.model.pooling,
            "dim": teacher.model.dim,
            "epochs": tcfg.epochs,
        },
        "best_epochs": {
            "teacher": teacher.best_epoch,
            "student_kd": kd.best_epoch,
            "student_nokd": nokd.best_epoch,
        },
        "wall_s": {k: round(v, 1) for k, v in clock.seconds.items()}
        | {"total": round(time.perf_counter() - t_start, 1)},
        "config": config,
        "data_report": data.report.as_dict(),
        "environment": ev.environment()
        | {"device": "cuda" if torch.cuda.is_available() else "cpu"},
    }
    write_json_atomic(out / "report.json", report)
    tmp = out / ".report.md.tmp"
    tmp.write_text(report_markdown(report), encoding="utf-8")
    tmp.replace(out / "report.md")
    _log("test metrics (± std over bootstrap resamples):\n" + _table(report))
    _log(f"wrote {out} in {report['wall_s']['total']:.1f}s")
    return report
