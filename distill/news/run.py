"""The news job: MIND data -> time split -> teacher (+ vector cache) -> students -> evaluation.

`run_news` writes everything under `out_dir`:

    config.json                      the run's settings
    teacher/                         news_teacher.json + heads (+ LoRA adapter),
                                     items.safetensors(.json), users.safetensors(.json)
    student/vocab.json               the student's word-piece vocabulary
    student/student_kd.safetensors, student/student_nokd.safetensors
    student/catalog_tokens.npy, data/  what the export reads (`distill.news.export_inputs`)
    histories.json                   per-epoch training logs of the three trained models
    report.json, report.md

There is a single time split, so the report's ``<metric>_std`` is a bootstrap spread over the
test impressions (`distill.news.evaluate`).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import atomic_write_json, atomic_write_text
from distill.news.evaluate import (
    MODELS,
    evaluate_scores,
    popularity_scores,
    report_markdown,
    report_table,
    source_name,
)

__all__ = ["QUICK_IMPRESSIONS", "quick_configs", "run_news"]

QUICK_IMPRESSIONS = 1500

logger = logging.getLogger(__name__)


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
    unknown_candidates: str = "skip",
) -> dict:
    """Run the news job (see the module docstring); returns the report it writes.

    `teacher_cfg`: a `NewsTeacherConfig` (default: MiniLM, frozen); `distill_cfg`: a
    `NewsDistillConfig` for the KD student (the no-KD student is the same without teacher).
    `quick`: a seeded random subset of `quick_impressions` impressions, only the catalog items
    they use, and the shorter settings of `quick_configs`. Refuses a non-empty `out_dir`
    unless `force`. `threads`: torch CPU threads for the teacher (default: every core, see
    `distill.teacher`); the students always train on one (see `train_news_student`).
    `source`: the embedded source `data_folder` was made from (e.g. "movielens-demo"), named in
    config.json and the report. The export needs neither: it reads the run folder only.
    `unknown_candidates`: what the MIND reader does with an impression whose candidates are not
    all in news.tsv: "skip" it (default) or "drop" those candidates (counted in the report's
    `data_report`; see `distill.data.mind`).
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
            unknown_candidates,
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
    unknown_candidates: str = "skip",
) -> dict:
    import torch

    from distill.data.mind import load_mind, time_split
    from distill.data.mind_report import unknown_candidates_hint
    from distill.data.tables import DataError
    from distill.layers import count_parameters
    from distill.news.export_inputs import write_export_inputs
    from distill.news.pieces import (
        TEXT_TEMPLATE,
        NewsCorpus,
        build_piece_vocab,
        save_piece_vocab,
        tokenizer_fingerprint,
    )
    from distill.news.samples import item_text
    from distill.news.student import NewsStudentConfig, save_news_student
    from distill.news.teacher import NewsTeacherConfig, save_news_teacher
    from distill.news.teacher_train import train_news_teacher
    from distill.news.train import (
        NewsDistillConfig,
        TeacherTargets,
        student_scores,
        train_news_student,
    )
    from distill.news.vectors import cache_teacher_vectors, load_teacher_vectors
    from distill.runs import (
        Progress,
        StageClock,
        check_out,
        discard_on_bad_input,
        environment,
        load_teacher_tokenizer,
        prepare_out,
        teacher_folder,
    )

    t_start = time.perf_counter()
    # expected shares of the time (seconds of a quick MovieLens run on 2 busy cores)
    progress = Progress(
        [
            ("data", 2),
            ("teacher", 60),
            ("teacher vectors", 15),
            ("student vocabulary", 3),
            ("student_kd", 40),
            ("student_nokd", 30),
            ("evaluate", 5),
        ]
    )
    clock = StageClock(progress)

    def epochs(step: str):
        def on_epoch(done: int, planned: int, auc: float) -> None:
            progress.update(step, done / planned, f"epoch {done}/{planned}: val auc {auc:.4f}")

        return on_epoch

    tcfg = teacher_cfg or NewsTeacherConfig()
    dcfg = distill_cfg or NewsDistillConfig()
    if quick:
        tcfg, dcfg = quick_configs(tcfg, dcfg)
    # said before anything is written: a run folder that is (or holds) an input, a teacher
    # that cannot be found (its tokenizer is loaded again with the teacher: a second or so)
    inputs = [data_folder, teacher_folder(tcfg.backbone)]
    check_out(out, force, inputs)
    load_teacher_tokenizer(tcfg.backbone)
    folder = prepare_out(out, force, inputs)
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
        "mind_unknown_candidates": unknown_candidates,
    }

    with clock("data", step="data"), discard_on_bad_input(folder):
        atomic_write_json(out / "config.json", config)
        data = load_mind(data_folder, unknown_candidates=unknown_candidates)
        logger.info(f"data: {data.report.summary()}")
        impressions = data.impressions
        if quick and len(impressions) > quick_impressions:
            impressions = random.Random(dcfg.seed).sample(impressions, quick_impressions)
        train, val, test = time_split(impressions)
        if not train or not test:
            raise DataError(
                f"{data_folder}: too few impressions ({len(impressions)}) to split into "
                f"training and test by time ({data.report.summary()})"
                + unknown_candidates_hint(data.report)
            )
        if quick:
            keep_h = max(tcfg.max_history, dcfg.max_history)
            used = {c for imp in impressions for c in imp.candidates}
            used |= {h for imp in impressions for h in imp.history[-keep_h:]}
            catalog = sorted(used)
        else:
            catalog = sorted(data.items)
    logger.info(
        f"data: {len(impressions)} impressions ({len(train)} train, {len(val)} validation, "
        f"{len(test)} test by time), {len(catalog)} catalog items, from {data_folder}"
    )

    with clock("teacher", step="teacher"):
        logger.info(f"teacher: {tcfg.backbone}, {'LoRA' if tcfg.lora else 'frozen LM'}")
        teacher = train_news_teacher(
            data.items, train, val, tcfg, item_ids=catalog, log=logger.info, threads=threads
        )
        save_news_teacher(teacher.model, out / "teacher")
    with clock("teacher_cache", step="teacher vectors"):
        every = [*train, *val, *test]
        items_path, users_path = cache_teacher_vectors(teacher, every, out / "teacher")
        t_items, _, _ = load_teacher_vectors(items_path, teacher.index.ids)
        t_users, _, _ = load_teacher_vectors(users_path, [imp.impression_id for imp in train])

    with clock("student_vocab", step="student vocabulary"):
        tokenize = teacher.model.tokenizer.tokenize
        texts_vocab = build_piece_vocab((item_text(data.items[i]) for i in catalog), tokenize)
        save_piece_vocab(
            texts_vocab,
            out / "student" / "vocab.json",
            tokenizer=tcfg.backbone,
            text=TEXT_TEMPLATE,
            max_tokens=dcfg.max_title_tokens,
            tokenizer_sha256=tokenizer_fingerprint(teacher.model.tokenizer),
        )
        corpus = NewsCorpus.build(data.items, catalog, tokenize, texts_vocab, dcfg.max_title_tokens)
    write_export_inputs(out, corpus, data.items, test, [*train, *val])
    scfg = NewsStudentConfig(
        vocab_size=len(texts_vocab),
        dim=student_dim,
        heads=student_heads,
        teacher_dim=int(t_items.shape[1]),
    )
    logger.info(f"student: {len(texts_vocab)} word pieces, dim {student_dim}")
    targets = TeacherTargets(t_items, t_users)
    with clock("student_kd", step="student_kd"):
        kd = train_news_student(
            corpus,
            train,
            val,
            scfg,
            dcfg,
            targets,
            log=logger.debug,  # the bar line carries the epoch and its validation AUC
            name="student_kd",
            on_epoch=epochs("student_kd"),
        )
    with clock("student_nokd", step="student_nokd"):
        nokd = train_news_student(
            corpus,
            train,
            val,
            scfg,
            dcfg.no_kd(),
            log=logger.debug,
            name="student_nokd",
            on_epoch=epochs("student_nokd"),
        )
    save_news_student(kd.model, out / "student" / "student_kd.safetensors")
    save_news_student(nokd.model, out / "student" / "student_nokd.safetensors")

    with clock("evaluate", step="evaluate"):
        torch.set_num_threads(1)  # small matrices (see train_news_student)
        labels = [np.asarray(imp.labels) for imp in test]
        scores = {
            "teacher": teacher.scores(test),
            "student_kd": student_scores(kd.model, corpus, test, dcfg.max_history),
            "student_nokd": student_scores(nokd.model, corpus, test, dcfg.max_history),
            "popularity": popularity_scores(train, test),
        }
        models = {
            name: evaluate_scores(labels, scores[name], bootstrap, dcfg.seed) for name in MODELS
        }
    atomic_write_json(
        out / "histories.json",
        {"teacher": teacher.history, "student_kd": kd.history, "student_nokd": nokd.history},
    )

    n_teacher = sum(p.numel() for p in teacher.model.parameters())
    report = {
        "domain": "news",
        "source": f"{source}: {source_name(data_folder)}" if source else source_name(data_folder),
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
        "environment": environment() | {"device": "cuda" if torch.cuda.is_available() else "cpu"},
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    logger.info("test metrics (± std over bootstrap resamples):\n" + report_table(report))
    logger.info(f"wrote {out} in {report['wall_s']['total']:.1f}s")
    return report
