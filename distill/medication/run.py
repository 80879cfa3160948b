"""The medication distill job: data -> prompts -> teacher -> features -> students -> evaluation.

`run_distill` is what `pocketrec distill` calls. Everything it writes goes under `out/`:
config.json, vocab/, labels.json, prompts.jsonl, bundle_inputs/ (labels, DDI pairs, titles),
fold<k>/ (teacher, features, students, metrics, heldout.npz), report.json and report.md: all
that `export.medication.run` needs (see `distill.medication.export_inputs`). Heavy libraries
are imported here, never by the CLI module itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from contract.files import atomic_write_json, atomic_write_text
from contract.layout import TensorConfig
from distill import features
from distill.backbone import TeacherConfig, load_tokenizer
from distill.data import load_cohort
from distill.data.config import DataConfig
from distill.data.samples import build_samples
from distill.data.tensors import MedVocabs, encode_samples
from distill.layers import count_parameters
from distill.medication import evaluate as ev
from distill.medication import teacher as tch
from distill.medication.export_inputs import write_bundle_inputs, write_heldout
from distill.medication.prompts import build_prompt, prompt_hash, tokenizer_counter
from distill.medication.student import StudentConfig, save_student
from distill.medication.train import DistillConfig, predict, train_student
from distill.runs import StageClock, environment, prepare_out, write_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    teacher: TeacherConfig
    tensors: TensorConfig
    distill: DistillConfig
    student_dim: int = 64
    student_layers: int = 2
    prompt_max_items: int | None = 4  # per past-visit list, so history fits the teacher window
    online_kd: bool = False  # True: the live teacher gives features batch by batch (no cache)

    def to_dict(self) -> dict:
        return {
            "data": self.data.to_dict(),
            "teacher": self.teacher.to_dict(),
            "tensors": self.tensors.__dict__ | {},
            "distill": self.distill.to_dict(),
            "student_dim": self.student_dim,
            "student_layers": self.student_layers,
            "prompt_max_items": self.prompt_max_items,
            "online_kd": self.online_kd,
        }


def quick_config(cfg: RunConfig) -> RunConfig:
    """A few minutes on 2 cores: short prompts, one teacher epoch, shorter student training."""
    return replace(
        cfg,
        teacher=replace(cfg.teacher, epochs=1, max_length=min(cfg.teacher.max_length, 128)),
        distill=replace(
            cfg.distill,
            max_epochs=min(cfg.distill.max_epochs, 60),
            patience=min(cfg.distill.patience, 10),
        ),
    )


def _subset(arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def run_distill(out: Path, cfg: RunConfig, force: bool = False) -> dict:
    t_start = time.perf_counter()
    clock = StageClock()
    out = Path(out)
    prepare_out(out, force)
    write_config(out, cfg.to_dict())

    with clock("data"):
        d = cfg.data
        cohort = load_cohort(d.source, Path(d.path) if d.path else None, d.fmt)
        samples = build_samples(cohort, d.protocol, d.require_procedures)
        if len(samples) < 10:
            raise ValueError(
                f"only {len(samples)} usable samples in {cohort.report.source}; need 10+"
            )
        vocabs = MedVocabs.build(cohort.visits)
        vocabs.save(out / "vocab")
        labels = list(vocabs.labels)
        atomic_write_json(out / "labels.json", labels)
        write_bundle_inputs(out, vocabs, cohort.titles)
        unknown: Counter = Counter()
        arrays = encode_samples(samples, vocabs, cfg.tensors, unknown)
        y = arrays["y"]
        ddi = ev.ddi_label_pairs(labels)
        prev, has_prev = ev.previous_multi_hot(samples, labels)
    log.info(
        f"data: {len(samples)} samples ({d.protocol}) from {len(cohort.visits)} visits, "
        f"{len(labels)} drug classes, {d.folds} folds"
    )

    with clock("prompts"):
        tokenizer = load_tokenizer(cfg.teacher)
        count = tokenizer_counter(tokenizer)
        texts = [
            build_prompt(
                s,
                titles=cohort.titles,
                count_tokens=count,
                max_tokens=cfg.teacher.max_length,
                max_items=cfg.prompt_max_items,
            )
            for s in samples
        ]
        shown = sum(t.count("\nVisit ") for t in texts)
        phash = prompt_hash(texts)
        atomic_write_text(
            out / "prompts.jsonl",
            "".join(
                json.dumps({"id": s.sample_id, "text": t}) + "\n"
                for s, t in zip(samples, texts, strict=True)
            ),
        )
    sample_ids = [s.sample_id for s in samples]
    log.info(
        f"prompts: {len(texts)} within {cfg.teacher.max_length} tokens; "
        f"{shown} of {sum(min(len(s.history), 3) for s in samples)} past visits shown"
    )

    per_fold, chosen_all, params = [], [], {}
    for fold in range(d.folds):
        fdir = out / f"fold{fold}"
        fdir.mkdir()
        idx = ev.fold_indices(samples, d.folds, fold, d.seed)
        tr, va, te = idx
        log.info(
            f"fold {fold + 1}/{d.folds}: {len(tr)} train, {len(va)} validation, "
            f"{len(te)} test samples"
        )

        with clock("teacher_train"):
            model = tch.train_teacher(
                [texts[i] for i in tr],
                y[tr],
                [texts[i] for i in va],
                y[va],
                cfg.teacher,
                fdir / "teacher",
                n_labels=len(labels),
            )
        with clock("teacher_features"):
            fpath = features.extract_features(
                model,
                tokenizer,
                texts,
                sample_ids,
                fdir / "features.safetensors",
                meta={"prompt_hash": phash, "backbone": cfg.teacher.backbone},
            )
            feats, probs, _ = features.load_features(fpath)
        params["teacher"] = sum(p.numel() for p in model.parameters())

        scfg = StudentConfig.from_vocabs(
            vocabs,
            dim=cfg.student_dim,
            visit_layers=cfg.student_layers,
            teacher_dim=feats.shape[1],
            max_visits=cfg.tensors.max_visits,
        )
        train_a, val_a = _subset(arrays, tr), _subset(arrays, va)
        if cfg.online_kd:
            train_texts = [texts[i] for i in tr]

            def teacher_source(i, m=model, tok=tokenizer, t=train_texts):
                return features.pooled_features(m, tok, [t[j] for j in i])
        else:
            teacher_source = lambda i, f=feats[tr]: f[i]  # noqa: E731
        with clock("student_kd"):
            kd = train_student(train_a, val_a, scfg, cfg.distill, teacher=teacher_source)
        del model
        with clock("student_nokd"):
            nokd = train_student(train_a, val_a, scfg, replace(cfg.distill, alpha=0.0, beta=0.0))
        save_student(kd.model, scfg, fdir / "student_kd.safetensors")
        save_student(nokd.model, scfg, fdir / "student_nokd.safetensors")
        params["student"] = count_parameters(kd.model)
        with clock("evaluate"):
            scores = {
                "teacher": probs.astype(np.float32),
                "student_kd": predict(kd.model, arrays),
                "student_nokd": predict(nokd.model, arrays),
            }
            metrics, chosen = ev.evaluate_fold(fold, idx, y, scores, prev, has_prev, ddi)
        chosen |= {
            "student_kd_best_epoch": kd.best_epoch,
            "student_nokd_best_epoch": nokd.best_epoch,
        }
        write_heldout(fdir, arrays, va, te, sample_ids)
        atomic_write_json(
            fdir / "metrics.json",
            {
                "test": metrics,
                "chosen_on_validation": chosen,
                "kd_history": kd.history,
                "nokd_history": nokd.history,
            },
        )
        per_fold.append(metrics)
        chosen_all.append(chosen)
        log.info(
            f"fold {fold + 1}: jaccard "
            + ", ".join(f"{m} {metrics[m]['jaccard']:.3f}" for m in ev.MODELS)
        )

    report = ev.build_report(
        per_fold,
        {
            "domain": "medication",
            "source": cohort.report.source,
            "protocol": d.protocol,
            "folds": d.folds,
            "samples": len(samples),
            "labels": len(labels),
            "params": params,
            "teacher": {
                "backbone": cfg.teacher.backbone,
                "lora": cfg.teacher.lora,
                "max_length": cfg.teacher.max_length,
                "epochs": cfg.teacher.epochs,
            },
            "chosen_on_validation": chosen_all,
            "unknown_codes": sum(unknown.values()),
            "wall_s": {k: round(v, 1) for k, v in clock.seconds.items()}
            | {"total": round(time.perf_counter() - t_start, 1)},
            "config": cfg.to_dict(),
            "environment": environment(),
        },
    )
    ev.write_report(report, out)
    return report
