"""Does feature KD help the student, and through what? Measured on VALIDATION patients only.

Reads a finished `pocketrec distill` run (its config and each fold's cached teacher features),
retrains students with several alpha / beta / projector / standardisation settings on the same
folds and seeds, and reports the best validation PR-AUC of each (mean and std over folds). The
test patients are not touched, so this can pick settings without tuning on the test folds.

Usage: python bench/kd_ablation.py --run runs/med [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.files import atomic_write_json  # noqa: E402

# name -> DistillConfig changes; a "student" key holds StudentConfig changes
VARIANTS = {
    "no KD, no repeat head": dict(alpha=0.0, beta=0.0, student=dict(repeat_head=False)),
    "KD alpha=1, no repeat head": dict(alpha=1.0, beta=0.1, student=dict(repeat_head=False)),
    "no KD (alpha=0, beta=0)": dict(alpha=0.0, beta=0.0),
    "InfoNCE only (beta=0.1)": dict(alpha=0.0, beta=0.1),
    "KD alpha=0.1": dict(alpha=0.1, beta=0.0),
    "KD alpha=1 (default, beta=0.1)": dict(alpha=1.0, beta=0.1),
    "KD alpha=1, raw teacher scale": dict(alpha=1.0, beta=0.1, standardize_teacher=False),
    "KD alpha=1, MLP projector": dict(alpha=1.0, beta=0.1, projector_mlp=True),
    "KD alpha=10": dict(alpha=10.0, beta=0.1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()

    import torch

    from contract.layout import TensorConfig
    from distill.data import load_cohort
    from distill.data.config import DataConfig
    from distill.data.samples import build_samples
    from distill.data.tensors import MedVocabs, encode_samples
    from distill.features import load_features
    from distill.medication import evaluate as ev
    from distill.medication.student import StudentConfig
    from distill.medication.train import DistillConfig, train_student

    torch.set_num_threads(1)  # tiny models: one thread is faster on this 2-core machine
    cfg = json.loads((args.run / "config.json").read_text())
    d = DataConfig(**cfg["data"])
    tcfg = TensorConfig(**cfg["tensors"])
    base = DistillConfig(**cfg["distill"])
    cohort = load_cohort(d.source, Path(d.path) if d.path else None, d.fmt)
    samples = build_samples(cohort, d.protocol, d.require_procedures)
    vocabs = MedVocabs.load(args.run / "vocab")
    arrays = encode_samples(samples, vocabs, tcfg)
    ids = [s.sample_id for s in samples]
    seeds = [int(s) for s in args.seeds.split(",")]

    rows = {name: [] for name in VARIANTS}
    t0 = time.perf_counter()
    for fold in range(d.folds):
        feats, probs, _ = load_features(args.run / f"fold{fold}" / "features.safetensors", ids)
        tr, va, _te = ev.fold_indices(samples, d.folds, fold, d.seed)
        sub = lambda idx: {k: v[idx] for k, v in arrays.items()}  # noqa: E731
        scfg = StudentConfig.from_vocabs(
            vocabs,
            dim=cfg["student_dim"],
            visit_layers=cfg["student_layers"],
            teacher_dim=feats.shape[1],
            max_visits=tcfg.max_visits,
        )
        for name, change in VARIANTS.items():
            change = dict(change)
            student = replace(scfg, **change.pop("student", {}))
            for seed in seeds:
                dc = replace(base, seed=seed, **change)
                teacher = (lambda i, f=feats[tr]: f[i]) if dc.uses_teacher else None
                res = train_student(sub(tr), sub(va), student, dc, teacher=teacher)
                rows[name].append(res.best_val_prauc)
        print(f"fold {fold + 1}/{d.folds} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    print(f"\nBest validation PR-AUC, {d.folds} folds x seeds {seeds} ({cfg['data']['source']}):\n")
    print("| student | val PR-AUC mean | std | runs |")
    print("|---|---:|---:|---:|")
    result = {}
    for name, vals in rows.items():
        v = np.array(vals)
        result[name] = {"mean": float(v.mean()), "std": float(v.std()), "runs": len(v)}
        print(f"| {name} | {v.mean():.4f} | {v.std():.4f} | {len(v)} |")
    atomic_write_json(
        ROOT / "bench" / "results" / "kd_ablation.json",
        {
            "run": str(args.run),
            "seeds": seeds,
            "folds": d.folds,
            "teacher": cfg["teacher"],
            "variants": result,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()
