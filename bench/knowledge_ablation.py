"""Does the LLM's zero-shot drug-class knowledge per code help the student? VALIDATION only.

`distill.medication.knowledge` scores every drug class's name after a prompt on each diagnosis
and procedure code's title, minus after a prompt on "an unspecified condition" (a PMI per code
and class, in nats per token), with the frozen teacher LLM. Two questions, non-test patients
only (the inner-CV out-of-fold setting of bench/student_ablation.py):

1. agreement: for codes held by at least `--min-support` samples, the Spearman correlation of a
   code's LLM scores with its observed lift (P(class | code) - P(class)) over the classes, and
   the AUC of the scores for the classes the code lifts by more than 0.15;
2. use: the wide path's count initialisation shrinks each code towards sigmoid(logit(freq) +
   gamma * K) instead of freq (`count_lift_table(prior_logits=...)`, K centred per class over
   codes), so rare codes lean on the LLM and unseen ones are the LLM's guess; gamma 0 is the
   default student. Paired per-fold differences against gamma 0.

Usage: python bench/knowledge_ablation.py [--backbone smollm2] [--cache FILE] [--gammas 0.5,1,2]
Scoring the ~1,800 codes of mimic4-demo takes about 1 s per code on one free core with AMX
(bfloat16); the cache makes a second run free. Writes bench/results/knowledge_ablation.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.files import atomic_write_json  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="mimic4-demo")
    ap.add_argument("--backbone", default="smollm2")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/pocketrec/knowledge.npz")
    ap.add_argument("--gammas", default="0.5,1,2")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--min-support", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/knowledge_ablation.json")
    args = ap.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    import distill.medication.train as T  # noqa: N812
    from contract.layout import TensorConfig
    from distill.data import load_cohort
    from distill.data.codes import icd_titles
    from distill.data.samples import build_samples
    from distill.data.tensors import MedVocabs, encode_samples
    from distill.medication import evaluate as ev
    from distill.medication.knowledge import code_knowledge
    from distill.medication.student import StudentConfig
    from distill.metrics import auc, jaccard

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cohort = load_cohort(args.source)
    samples = build_samples(cohort, "all-visits")
    vocabs = MedVocabs.build(cohort.visits, ancestors=True)
    tcfg = TensorConfig(ancestors=True)
    arrays = encode_samples(samples, vocabs, tcfg)
    labels = list(vocabs.labels)
    keys = [("diagnoses", c) for c in vocabs.diagnoses.tokens[2:]]
    keys += [("procedures", c) for c in vocabs.procedures.tokens[2:]]
    titles = {**icd_titles(), **cohort.titles}
    # an ICD category without a title of its own reads as its first member's title
    from distill.medication.code_init import _category_title

    for _, code in keys:
        if code not in titles:
            titles[code] = _category_title(code) or code.split(":", 1)[1]
    k_table = code_knowledge(keys, titles, labels, args.backbone, args.cache)
    t_scores = time.perf_counter() - t0
    seeds = [int(s) for s in args.seeds.split(",")]
    scfg = StudentConfig.from_vocabs(
        vocabs, dim=32, visit_layers=1, max_visits=tcfg.max_visits,
        wide_codes="sqrt", wide_codes_scale=round(T.codes_per_visit(arrays), 4),
    )  # fmt: skip
    model = T.LeaderStudent(scfg)
    n_dx = len(vocabs.diagnoses)
    n_px = len(vocabs.procedures)
    rows = np.concatenate([np.arange(2, n_dx), n_dx + np.arange(2, n_px)])  # wide rows of keys
    centred = k_table - k_table.mean(0, keepdims=True)
    prior_full = np.zeros(tuple(model.wide.weight.shape), np.float64)
    prior_full[rows] = centred
    pids = np.array([s.patient_id for s in samples])
    folds = [ev.fold_indices(samples, args.folds, f, 0) for f in range(args.folds)]

    # 1. agreement with what the non-test patients of fold 0 show
    tr, va, _ = folds[0]
    fit = np.concatenate([tr, va])
    y = arrays["y"][fit].astype(np.float64)
    base = y.mean(0)
    rhos, aucs = [], []
    for j, (kind, _) in enumerate(keys):
        vid = rows[j] if kind == "diagnoses" else rows[j] - n_dx
        name = "dx" if kind == "diagnoses" else "px"
        has = (arrays[name][fit][:, -1] == vid).any(1)
        if has.sum() < args.min_support:
            continue
        lift = y[has].mean(0) - base
        rhos.append(spearmanr(k_table[j], lift).correlation)
        pos = lift > 0.15
        if pos.any() and (~pos).any():
            aucs.append(auc(pos.astype(int), k_table[j]))
    agreement = {
        "codes": len(rhos),
        "mean_spearman": round(float(np.nanmean(rhos)), 4) if rhos else None,
        "mean_auc_lift_gt_0.15": round(float(np.mean(aucs)), 4) if aucs else None,
        "codes_with_auc": len(aucs),
    }
    print("agreement:", agreement, flush=True)

    # 2. use as the prior of the count initialisation
    original = T.count_lift_table
    result_variants, per_fold_all = {}, {}
    for gamma in [0.0] + [float(g) for g in args.gammas.split(",")]:
        prior = prior_full * gamma if gamma else None

        def table(train, m, alpha=2.0, prior=prior):
            return original(train, m, alpha, prior_logits=prior)

        T.count_lift_table = table
        per_fold = []
        try:
            for tr, va, _test_not_read in folds:
                fit = np.concatenate([tr, va])
                sub = {k: a[fit] for k, a in arrays.items()}
                got = []
                for seed in seeds:
                    sel = T.select_by_inner_cv(sub, pids[fit], scfg,
                                               T.DistillConfig(alpha=0.0, beta=0.0, seed=seed),
                                               k=4, max_epochs=20)  # fmt: skip
                    got.append((max(sel.curve), jaccard(sub["y"], sel.oof_scores >= sel.threshold)))
                per_fold.append(np.mean(got, axis=0))
        finally:
            T.count_lift_table = original
        a = np.array(per_fold)
        name = f"gamma {gamma:g}"
        per_fold_all[name] = a[:, 0]
        result_variants[name] = {
            "prauc": round(float(a[:, 0].mean()), 4),
            "jaccard": round(float(a[:, 1].mean()), 4),
            "per_fold_prauc": [round(float(x), 4) for x in a[:, 0]],
        }
        print(f"{name}: PR-AUC {a[:, 0].mean():.4f} Jaccard {a[:, 1].mean():.4f}", flush=True)
    paired = {}
    for name, a in per_fold_all.items():
        if name == "gamma 0":
            continue
        d = a - per_fold_all["gamma 0"]
        boot = [np.random.default_rng(i).choice(d, len(d)).mean() for i in range(2000)]
        paired[f"{name} - gamma 0"] = {
            "mean": round(float(d.mean()), 4),
            "folds_better": int((d > 0).sum()),
            "fold_bootstrap_95": [round(float(np.percentile(boot, q)), 4) for q in (2.5, 97.5)],
        }
        print(name, paired[f"{name} - gamma 0"])
    out = {
        "source": args.source,
        "backbone": args.backbone,
        "codes_scored": len(keys),
        "scoring_seconds": round(t_scores, 1),
        "agreement_fold0_non_test": agreement,
        "variants": result_variants,
        "paired": paired,
        "seeds": seeds,
        "metric": "pooled inner-CV out-of-fold PR-AUC, non-test patients of each outer fold",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
