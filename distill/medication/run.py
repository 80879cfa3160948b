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
from distill.backbone import TeacherConfig
from distill.data import SOURCES, load_cohort
from distill.data.codes import assets_dir
from distill.data.config import DataConfig
from distill.data.samples import build_samples, usable
from distill.data.tables import DataError
from distill.data.tensors import MedVocabs, encode_samples
from distill.layers import count_parameters
from distill.medication import evaluate as ev
from distill.medication import teacher as tch
from distill.medication.export_inputs import (
    write_bundle_inputs,
    write_heldout,
    write_trained_ids,
)
from distill.medication.prompts import build_prompt, prompt_hash, tokenizer_counter
from distill.medication.student import StudentConfig, save_student
from distill.medication.train import (
    DistillConfig,
    codes_per_visit,
    fit_selected,
    predict,
    train_student,
)
from distill.runs import (
    Progress,
    StageClock,
    check_out,
    discard_on_bad_input,
    environment,
    load_teacher_tokenizer,
    prepare_out,
    teacher_folder,
    write_config,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    teacher: TeacherConfig
    tensors: TensorConfig
    distill: DistillConfig
    student_dim: int = 32  # 32 x 1 layer = 64 x 2 layers on inner-CV validation, half the bundle
    student_layers: int = 1
    # the wide path over the current visit's codes (StudentConfig.wide_codes), scaled by the
    # cohort's mean number of codes per visit: "sqrt" ranks and calibrates visits entered with
    # one code better than "sum" and "mean" on validation patients, and ties them on whole
    # visits (bench/student_ablation.py)
    student_wide_codes: str = "sqrt"
    # start the students' code embeddings from the teacher backbone's reading of each code's
    # title (frozen, label-free, once per run; `distill.medication.code_init`): +0.0012
    # validation PR-AUC, 4 of 5 folds (bench/student_ablation.py)
    title_init: bool = True
    prompt_max_items: int | None = 4  # per past-visit list, so history fits the teacher window
    online_kd: bool = False  # True: the live teacher gives features batch by batch (no cache)
    # students are trained once per seed (the teacher once per fold); the report gives the
    # mean and std over seeds x folds, and paired differences per fold
    seeds: tuple[int, ...] = (0, 1, 2)
    # how a student's epoch count and threshold are chosen: "inner_cv" (an inner k-fold over
    # the fold's training + validation patients, then a refit on all of them: 4-5x more
    # patients to choose with than the ~15 validation patients) or "validation" (early stopping
    # on the validation patients, as LEADER does)
    selection: str = "inner_cv"
    inner_folds: int = 4
    inner_max_epochs: int = 20
    # reuse teacher features instead of training a teacher: a .safetensors file (frozen,
    # label-free features of every sample, for all folds), or an earlier run with the same data
    # and prompts (its features.safetensors if it has one, else fold<k>/features.safetensors)
    features_from: str | None = None

    def __post_init__(self) -> None:
        if self.selection not in ("inner_cv", "validation"):
            raise ValueError(f"selection must be inner_cv or validation, got {self.selection!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds!r}")
        if self.inner_folds < 2 or self.inner_max_epochs < 1:
            raise ValueError("inner_folds must be >= 2 and inner_max_epochs >= 1")

    def to_dict(self) -> dict:
        return {
            "data": self.data.to_dict(),
            "teacher": self.teacher.to_dict(),
            "tensors": self.tensors.__dict__ | {},
            "distill": self.distill.to_dict(),
            "student_dim": self.student_dim,
            "student_layers": self.student_layers,
            "student_wide_codes": self.student_wide_codes,
            "title_init": self.title_init,
            "prompt_max_items": self.prompt_max_items,
            "online_kd": self.online_kd,
            "seeds": list(self.seeds),
            "selection": self.selection,
            "inner_folds": self.inner_folds,
            "inner_max_epochs": self.inner_max_epochs,
            "features_from": self.features_from,
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
    progress = _plan(cfg)
    clock = StageClock(progress)
    out = Path(out)
    d = cfg.data
    # said before anything is written: a run folder that is (or holds) an input, a teacher
    # that cannot be found; the prompts stage then counts tokens with this tokenizer
    inputs = [_data_folder(d), cfg.features_from, teacher_folder(cfg.teacher.backbone)]
    check_out(out, force, inputs)
    tokenizer = load_teacher_tokenizer(cfg.teacher.backbone, cfg.teacher.truncation_side)
    folder = prepare_out(out, force, inputs)

    with clock("data", step="data"), discard_on_bad_input(folder):
        write_config(out, cfg.to_dict())
        cohort = load_cohort(d.source, Path(d.path) if d.path else None, d.fmt)
        samples = build_samples(cohort, d.protocol, d.require_procedures)
        if len(samples) < 10:
            raise DataError(_too_few_samples(d, cohort, len(samples)))
        vocabs = MedVocabs.build(
            cohort.visits, ancestors=bool(getattr(cfg.tensors, "ancestors", False))
        )
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

    with clock("prompts", step="prompts"):
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

    pids = np.array([s.patient_id for s in samples])
    embeddings = None
    if cfg.title_init:
        # label-free: the frozen teacher backbone reads every vocabulary code's title once
        from distill.medication.code_init import code_title_table

        with clock("title_embeddings", step="title embeddings"):
            embeddings = code_title_table(
                vocabs, cfg.teacher, dim=cfg.student_dim, titles=cohort.titles
            )
    per_run, per_fold, chosen_all, params = [], [], [], {}
    features_from = Path(cfg.features_from) if cfg.features_from else None
    if features_from is None and getattr(cfg.teacher, "frozen", False):
        # a frozen teacher's features are label-free: extracted ONCE for all folds (no
        # labels involved), then every fold reads them as it would reused features
        with clock("teacher_features", step="teacher features (frozen, all folds)"):
            encoder = features.FrozenEncoder.from_config(cfg.teacher)
            features_from = features.extract_features(
                encoder,
                tokenizer,
                texts,
                sample_ids,
                out / "features.safetensors",
                meta={"prompt_hash": phash, "backbone": cfg.teacher.backbone, "frozen": True},
            )
            params["teacher"] = sum(p.numel() for p in encoder.parameters())
            del encoder
    fold_means, sample_metrics, sample_patients = [], [], []
    for fold in range(d.folds):
        fdir = out / f"fold{fold}"
        fdir.mkdir()
        idx = ev.fold_indices(samples, d.folds, fold, d.seed)
        tr, va, te = idx
        log.info(
            f"fold {fold + 1}/{d.folds}: {len(tr)} train, {len(va)} validation, "
            f"{len(te)} test samples"
        )

        model = None
        if features_from is not None:
            with clock("teacher_features"):
                src = _reused_features(features_from, fold)
                feats, probs, _ = features.load_features(src, sample_ids)  # ids checked
            if "teacher" not in params:
                params["teacher"] = _reused_teacher_params(features_from)
        else:
            with clock("teacher_train", step=f"fold {fold + 1}/{d.folds} teacher"):
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
            wide_codes=cfg.student_wide_codes,
            wide_codes_scale=round(codes_per_visit(arrays), 4),  # codes only: label-free
        )
        # the students' training samples: training patients, or training + validation
        # patients when an inner k-fold chooses the epochs (then refit on all of them)
        fit_idx = tr if cfg.selection == "validation" else np.concatenate([tr, va])
        if cfg.online_kd and model is not None:
            fit_texts = [texts[i] for i in fit_idx]

            def teacher_source(i, m=model, tok=tokenizer, t=fit_texts):
                return features.pooled_features(m, tok, [t[j] for j in i])
        else:
            teacher_source = lambda i, f=feats[fit_idx]: f[i]  # noqa: E731
        del model

        if probs.shape[1] == 0:
            # frozen (label-free) features have no head: the teacher row is a linear probe on
            # them, fitted on the training patients, its L2 and epochs chosen on validation
            with clock("teacher_probe"):
                probs = linear_probe(feats, y, tr, va)
        fold_runs, fold_samples = [], []
        step = f"fold {fold + 1}/{d.folds} students"
        progress.start(step, f"{len(cfg.seeds)} seeds x KD and no-KD")
        n_seeds = len(cfg.seeds)
        for s_i, seed in enumerate(cfg.seeds):

            def report(name, share, detail, s_i=s_i, seed=seed, step=step, n=n_seeds):
                part = (s_i + (0.5 if name == "student_nokd" else 0.0) + 0.5 * share) / n
                progress.update(step, part, f"seed {seed} {name} {detail}")

            kd, nokd, thresholds, selected = _fit_students(
                cfg, arrays, pids, fit_idx, va, scfg, seed, teacher_source, clock, report,
                embeddings,
            )  # fmt: skip
            if seed == cfg.seeds[0]:
                save_student(kd.model, scfg, fdir / "student_kd.safetensors")
                save_student(nokd.model, scfg, fdir / "student_nokd.safetensors")
                params["student"] = count_parameters(kd.model)
                histories = {"kd_history": kd.history, "nokd_history": nokd.history}
            with clock("evaluate"):
                scores = {
                    "teacher": probs.astype(np.float32),
                    "student_kd": predict(kd.model, arrays),
                    "student_nokd": predict(nokd.model, arrays),
                }
                ps: dict = {}
                metrics, chosen = ev.evaluate_fold(
                    fold, idx, y, scores, prev, has_prev, ddi, thresholds, ps
                )
            chosen |= {
                "seed": seed,
                "student_kd_best_epoch": kd.best_epoch,
                "student_nokd_best_epoch": nokd.best_epoch,
            } | selected
            per_run.append({"seed": seed, "fold": fold, "models": metrics})
            per_fold.append(metrics)
            chosen_all.append(chosen)
            fold_runs.append((metrics, chosen))
            fold_samples.append(ps)
            log.info(
                f"fold {fold + 1} seed {seed}: jaccard "
                + ", ".join(f"{m} {metrics[m]['jaccard']:.3f}" for m in ev.MODELS)
            )
        progress.done(step, "jaccard " + ", ".join(
            f"{m} {_mean_over_seeds([r for r, _ in fold_runs])[m]['jaccard']:.3f}"
            for m in ("student_kd", "previous_visit")
        ))  # fmt: skip
        fold_means.append(_mean_over_seeds([m for m, _ in fold_runs]))
        sample_metrics.append(_mean_over_seeds(fold_samples))
        sample_patients.append(pids[te])
        # export reads the first seed's students and thresholds; validation rows are held out
        # only when the students did not train on them
        held_val = va if cfg.selection == "validation" else va[:0]
        write_heldout(fdir, arrays, held_val, te, sample_ids)
        write_trained_ids(fdir, arrays, fit_idx)
        atomic_write_json(
            fdir / "metrics.json",
            {
                "test": fold_runs[0][0],
                "chosen_on_validation": fold_runs[0][1],
                "runs": [{"test": m, "chosen_on_validation": c} for m, c in fold_runs],
                **histories,
            },
        )
        log.info(
            f"fold {fold + 1}: jaccard (mean over seeds) "
            + ", ".join(f"{m} {fold_means[-1][m]['jaccard']:.3f}" for m in ev.MODELS)
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
                "lora": bool(cfg.teacher.lora) and not getattr(cfg.teacher, "frozen", False),
                "max_length": cfg.teacher.max_length,
                "epochs": cfg.teacher.epochs,
                "frozen": bool(getattr(cfg.teacher, "frozen", False)),
                "features_from": cfg.features_from,
            },
            "chosen_on_validation": chosen_all,
            "seeds": list(cfg.seeds),
            "selection": _selection_text(cfg),
            "runs": per_run,
            "paired": ev.paired_differences(fold_means, sample_metrics, sample_patients),
            "unknown_codes": sum(unknown.values()),
            "wall_s": {k: round(v, 1) for k, v in clock.seconds.items()}
            | {"total": round(time.perf_counter() - t_start, 1)},
            "config": cfg.to_dict(),
            "environment": environment(),
        },
    )
    ev.write_report(report, out)
    return report


def _data_folder(d: DataConfig) -> Path | None:
    """The folder the run reads its tables from (an embedded source's under assets/)."""
    if d.source in SOURCES:
        return assets_dir() / "data" / SOURCES[d.source][1]
    return Path(d.path) if d.path else None


def _too_few_samples(d: DataConfig, cohort, n: int) -> str:
    """Why a cohort gave fewer than 10 samples, in the reader's counts."""
    r = cohort.report
    mapped = r.medication_rows - r.unmapped_medication_rows
    with_dx = sum(1 for v in cohort.visits if v.diagnoses)
    with_drug = sum(1 for v in cohort.visits if v.medications)
    kept = sum(1 for v in cohort.visits if usable(v, d.require_procedures))
    rule = "a diagnosis and a mapped drug" + (" and a procedure" if d.require_procedures else "")
    return (
        f"{_data_folder(d) or d.source}: only {n} usable samples ({d.protocol}), need 10+: "
        f"read {len(cohort.patients())} patients, {len(cohort.visits)} visits and "
        f"{r.medication_rows} medication rows ({mapped} mapped to a drug class); "
        f"{with_dx} visits have a diagnosis, {with_drug} a mapped drug, {kept} are usable "
        f"(with {rule})"
    )


def _plan(cfg: RunConfig) -> Progress:
    """The run's steps with their expected shares of the time (seconds measured on the 2-core
    machine, mimic4-demo: frozen SmolLM2 features for the 250 prompts about 80 s, LoRA about
    5 min per fold and epoch with MiniLM, the students about 20 s per seed and fold). Updates
    of a step are logged at most every 5 s."""
    frozen = getattr(cfg.teacher, "frozen", False) and cfg.features_from is None
    lora = not frozen and cfg.features_from is None
    # LoRA fine-tuning per fold and epoch: about 300 s at the default 384-token budget and 9 s
    # at --quick's 128 (measured); between and beyond, a power law through those two points
    lora_s = 300.0 * (cfg.teacher.max_length / 384.0) ** 3.2
    steps = [("data", 2.0), ("prompts", 3.0)]
    if cfg.title_init:
        steps.append(("title embeddings", 30.0))
    if frozen:
        steps.append(("teacher features (frozen, all folds)", 80.0))
    for fold in range(cfg.data.folds):
        if lora:
            steps.append((f"fold {fold + 1}/{cfg.data.folds} teacher", lora_s * cfg.teacher.epochs))
        steps.append((f"fold {fold + 1}/{cfg.data.folds} students", 20.0 * len(cfg.seeds)))
    return Progress(steps, min_interval=5.0)


def _fit_students(
    cfg, arrays, pids, fit_idx, va, scfg, seed, teacher_source, clock, report=None, embeddings=None
):
    """The KD and no-KD students of one seed: -> (kd, nokd, thresholds or None, choices).
    `report(name, share, detail)`: progress of each student's training; `embeddings`: the
    students' code embedding start (`train_student`)."""
    kd_cfg = replace(cfg.distill, seed=seed)
    nokd_cfg = replace(kd_cfg, alpha=0.0, beta=0.0)
    fit = _subset(arrays, fit_idx)
    if cfg.selection == "validation":
        val_a = _subset(arrays, va)
        with clock("student_kd"):
            kd = train_student(
                fit, val_a, scfg, kd_cfg, teacher=teacher_source, embeddings=embeddings
            )
        with clock("student_nokd"):
            nokd = train_student(fit, val_a, scfg, nokd_cfg, embeddings=embeddings)
        return kd, nokd, None, {}
    kw = {"k": cfg.inner_folds, "max_epochs": cfg.inner_max_epochs, "embeddings": embeddings}

    def on(name):
        return (lambda share, detail: report(name, share, detail)) if report else None

    with clock("student_kd"):
        kd, kd_sel = fit_selected(
            fit, pids[fit_idx], scfg, kd_cfg, teacher=teacher_source, progress=on("student_kd"),
            **kw,
        )  # fmt: skip
    with clock("student_nokd"):
        nokd, nokd_sel = fit_selected(
            fit, pids[fit_idx], scfg, nokd_cfg, progress=on("student_nokd"), **kw
        )
    thresholds = {"student_kd": kd_sel.threshold, "student_nokd": nokd_sel.threshold}
    selected = {
        "student_kd_inner_cv": kd_sel.to_dict(),
        "student_nokd_inner_cv": nokd_sel.to_dict(),
    }
    return kd, nokd, thresholds, selected


def _mean_over_seeds(runs: list[dict]) -> dict:
    """{model: {metric: value or array}} averaged over runs (seeds) key by key."""
    out: dict = {}
    for name in runs[0]:
        out[name] = {}
        for m in runs[0][name]:
            vals = [r[name][m] for r in runs if m in r[name]]
            if len(vals) == len(runs):
                out[name][m] = np.mean(np.stack([np.asarray(v, np.float64) for v in vals]), 0)
    return out


def _selection_text(cfg: RunConfig) -> str:
    if cfg.selection == "validation":
        return "validation early stopping"
    return (
        f"an inner {cfg.inner_folds}-fold over training + validation patients "
        f"(epochs <= {cfg.inner_max_epochs} and threshold on pooled out-of-fold scores), "
        "then a refit on all of them"
    )


def _reused_teacher_params(run: Path) -> int | None:
    try:
        return json.loads((run / "report.json").read_text())["params"]["teacher"]
    except (OSError, KeyError, ValueError):
        return None


def _reused_features(src: Path, fold: int) -> Path:
    if src.is_file():
        return src
    for path in (src / "features.safetensors", src / f"fold{fold}" / "features.safetensors"):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{src}: no features.safetensors (nor fold{fold}/features.safetensors) to reuse"
    )


def linear_probe(
    feats: np.ndarray,
    y: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
    l2s: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1),
    steps: int = 300,
    seed: int = 0,
) -> np.ndarray:
    """Sigmoid scores [N, L] of a logistic head on z-scored `feats`, trained on rows `tr`.

    Full-batch Adam (lr 0.05) from the training log-odds; the L2 weight and the step count
    (checked every 10 steps) are the ones with the best PR-AUC on rows `va`.
    """
    import torch

    from distill.metrics import prauc

    torch.manual_seed(seed)
    mean, std = feats[tr].mean(0, keepdims=True), feats[tr].std(0, keepdims=True) + 1e-6
    x = torch.from_numpy(((feats - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y[tr].astype(np.float32))
    freq = (y[tr].sum(0) + 0.5) / (len(tr) + 1.0)
    prior = torch.from_numpy(np.log(freq / (1 - freq)).astype(np.float32))
    best = (-1.0, None)
    for l2 in l2s:
        w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
        b = prior.clone().requires_grad_(True)
        opt = torch.optim.Adam([w, b], lr=0.05)
        for step in range(1, steps + 1):
            logits = x[tr] @ w + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt)
            loss = loss + l2 * w.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0 or step == steps:
                with torch.no_grad():
                    scores = torch.sigmoid(x @ w + b).numpy()
                score = prauc(y[va], scores[va]) if len(va) else -step
                if score > best[0]:
                    best = (score, scores)
    return best[1].astype(np.float32)
