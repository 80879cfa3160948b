"""How the student's parts were chosen: VALIDATION patients only (inner-CV out-of-fold scores).

For each outer fold, only its non-test patients are used: an inner 4-fold over them (the same
`distill.medication.train.select_by_inner_cv` a run uses) gives every non-test sample an
out-of-fold score after every epoch; a variant's figure is the best pooled out-of-fold PR-AUC
(and the Jaccard at the threshold chosen there), mean over seeds. Test patients are never read.
Variants are the steps from the previous default to the new one, each alone and together, plus
feature KD and title-initialised embeddings on top. How the wide path reads the current codes
("sum", "sqrt" or "mean" scaling) is also judged on the same patients' visits cut to their
primary diagnosis alone (a clinician entering one code): PR-AUC and cross-entropy of the
inner-fold students (refit for the chosen epochs) on those one-code visits. Simple rules are scored
on the same inner folds for reference: popularity, previous_visit, a history rule (popularity +
previous visit + half the share of earlier visits), code co-occurrence + history, and a 10-nearest
-visit rule + history (cosine over the current visit's codes, IDF-weighted).

Also: what the frozen teacher adds. Its linear-probe scores (fit inside each inner training
split) blended 20% into the student's out-of-fold scores, and the same with the teacher's
features first PREDICTED from the student's inputs by a ridge map (what a student reading codes
could at best take from those features): the gap between the two says how much of the teacher's
extra information a code-level student could absorb.

Usage: python bench/student_ablation.py [--source mimic4-demo] [--seeds 0,1] [--features F]
Writes bench/results/student_ablation_<source>.json and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.files import atomic_write_json  # noqa: E402

OLD = {  # the default before this change (distill.medication.train at 9a016be)
    "repeat_mean_init": 0.0,
    "wide_init": "zero",
    "wide_l2": 1e-5,
}
NEW: dict = {}  # today's DistillConfig defaults


def variants(features: bool) -> list[tuple[str, dict]]:
    """(name, settings): `distill` for DistillConfig, `codes` for StudentConfig.wide_codes,
    `dim` for its width (default 32), `epochs`, `ancestors`, `title` (initial embeddings from
    the teacher's reading of the titles), `one_code` (also score visits cut to their primary
    diagnosis)."""
    new = {"distill": NEW, "epochs": 20, "ancestors": True, "one_code": True}
    out = [
        ("old default (sum, 12 epochs)", {"distill": OLD, "epochs": 12}),
        ("+ earlier-visit repeat 2.5", {"distill": {**OLD, "repeat_mean_init": 2.5}, "epochs": 12}),
        ("+ count-initialised wide", {"distill": {**OLD, "wide_init": "counts"}, "epochs": 12}),
        ("+ both, wide L2 1e-4, 20 epochs", {"distill": NEW, "epochs": 20}),
        ("+ code hierarchy (sum)", {**new, "codes": "sum"}),
        ("new default (+ sqrt scaling)", {**new, "codes": "sqrt"}),
        ("new, mean scaling instead", {**new, "codes": "mean"}),
        (
            "new + SmolLM2 title embeddings",
            {**new, "codes": "sqrt", "one_code": False, "title": "smollm2"},
        ),  # fmt: skip
        # the width, against the new default's 32 (the int8 graph only beats its own fp32
        # form from width 128: bench/int8_crossover.py)
        ("new default, width 64", {**new, "codes": "sqrt", "one_code": False, "dim": 64}),
        ("new default, width 128", {**new, "codes": "sqrt", "one_code": False, "dim": 128}),
    ]
    if features:
        kd = {**NEW, "alpha": 0.3, "beta": 0.1}
        kd_variant = {**new, "codes": "sqrt", "one_code": False, "distill": kd, "kd": True}
        out.append(("new + feature KD (alpha 0.3, beta 0.1)", kd_variant))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="mimic4-demo")
    ap.add_argument("--protocol", default="all-visits")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--features", type=Path, help="frozen teacher features of the run's prompts")
    ap.add_argument("--only", help="comma-separated variant numbers (0-based) to run")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import torch

    import distill.medication.train as T  # noqa: N812
    from contract.layout import TensorConfig
    from distill.data import load_cohort
    from distill.data.samples import build_samples
    from distill.data.tensors import MedVocabs, encode_samples
    from distill.medication import evaluate as ev
    from distill.medication.student import StudentConfig
    from distill.metrics import jaccard, prauc

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    cohort = load_cohort(args.source)
    samples = build_samples(cohort, args.protocol)
    pids = np.array([s.patient_id for s in samples])
    feats = None
    if args.features:
        from distill.features import load_features

        feats, _, _ = load_features(args.features, [s.sample_id for s in samples])
    encoded: dict[bool, tuple] = {}

    def encoded_for(anc: bool):
        if anc not in encoded:
            vocabs = MedVocabs.build(cohort.visits, ancestors=anc)
            tcfg = TensorConfig(ancestors=anc)
            encoded[anc] = (vocabs, tcfg, encode_samples(samples, vocabs, tcfg))
        return encoded[anc]

    folds = [ev.fold_indices(samples, args.folds, f, 0) for f in range(args.folds)]
    t0 = time.perf_counter()
    result: dict = {
        "source": args.source,
        "protocol": args.protocol,
        "folds": args.folds,
        "seeds": seeds,
        "metric": "pooled inner-CV out-of-fold PR-AUC (best epoch) and Jaccard at the chosen "
        "threshold, non-test patients of each outer fold only; mean over seeds",
        "variants": {},
        "rules": {},
    }
    todo = list(enumerate(variants(feats is not None)))
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        todo = [(i, v) for i, v in todo if i in keep]
    for _, (name, v) in todo:
        vocabs, tcfg, arrays = encoded_for(bool(v.get("ancestors")))
        codes = v.get("codes", "sum")
        scfg = StudentConfig.from_vocabs(
            vocabs,
            dim=v.get("dim", 32),
            visit_layers=1,
            max_visits=tcfg.max_visits,
            teacher_dim=feats.shape[1] if feats is not None else 384,
            wide_codes=codes,
            wide_codes_scale=round(T.codes_per_visit(arrays), 4) if codes != "sum" else 1.0,
        )
        table = None
        if v.get("title"):
            from distill.backbone import TeacherConfig
            from distill.medication.code_init import code_title_table

            table = code_title_table(vocabs, TeacherConfig(backbone=v["title"], frozen=True),
                                     dim=scfg.dim, titles=cohort.titles)  # fmt: skip
        dcfg = T.DistillConfig(**{"alpha": 0.0, "beta": 0.0, **v["distill"]})
        per_fold = []
        for tr, va, _test_not_read in folds:
            fit = np.concatenate([tr, va])
            sub = {k: a[fit] for k, a in arrays.items()}
            rows = []
            for seed in seeds:
                teacher = (lambda i, f=feats[fit]: f[i]) if v.get("kd") else None
                sel = _select(T, sub, pids[fit], scfg, replace(dcfg, seed=seed), teacher,
                              v["epochs"], table)  # fmt: skip
                one = (np.nan, np.nan)
                if v.get("one_code"):
                    one = _one_code(T, sub, pids[fit], scfg, replace(dcfg, seed=seed), sel.epochs,
                                    prauc)  # fmt: skip
                rows.append(
                    (
                        max(sel.curve),
                        jaccard(sub["y"], sel.oof_scores >= sel.threshold),
                        sel.epochs,
                        *one,
                    )
                )
            per_fold.append(np.mean(rows, axis=0).tolist())
        a = np.array(per_fold)
        result["variants"][name] = {
            "prauc": round(float(a[:, 0].mean()), 4),
            "jaccard": round(float(a[:, 1].mean()), 4),
            "epochs": round(float(a[:, 2].mean()), 1),
            "per_fold_prauc": [round(x, 4) for x in a[:, 0]],
        }
        if v.get("one_code"):
            result["variants"][name] |= {
                "one_code_prauc": round(float(a[:, 3].mean()), 4),
                "one_code_cross_entropy": round(float(a[:, 4].mean()), 4),
            }
        took = time.perf_counter() - t0
        one = ""
        if v.get("one_code"):
            one = f"  one code: PR-AUC {a[:, 3].mean():.4f} CE {a[:, 4].mean():.4f}"
        print(f"{name:44s} PR-AUC {a[:, 0].mean():.4f}  Jaccard {a[:, 1].mean():.4f}  "
              f"epochs {a[:, 2].mean():4.1f}{one}  {took:.0f} s", flush=True)  # fmt: skip
    result["rules"] = _rules(samples, encoded_for(False), folds, pids, T, prauc)
    for name, r in result["rules"].items():
        print(f"{name:44s} PR-AUC {r['prauc']:.4f}")
    _paired(result)
    if feats is not None:
        vocabs, tcfg, arrays = encoded_for(True)
        result["teacher_blend"] = _teacher_blend(
            T, arrays, vocabs, tcfg, feats, folds, pids, seeds[0], prauc
        )
        print("teacher blend:", result["teacher_blend"]["summary"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = args.out or ROOT / "bench" / "results" / f"student_ablation_{args.source}.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return result


def _select(T, sub, pids, scfg, dcfg, teacher, epochs, table):  # noqa: N803
    """`select_by_inner_cv`, with the student's embeddings started from `table` when given."""
    if table is None:
        return T.select_by_inner_cv(sub, pids, scfg, dcfg, k=4, teacher=teacher, max_epochs=epochs)
    from distill.medication.code_init import init_student_embeddings

    base = T.LeaderStudent

    class TitleInit(base):
        def __init__(self, config):
            super().__init__(config)
            init_student_embeddings(self, table)

    T.LeaderStudent = TitleInit
    try:
        return T.select_by_inner_cv(sub, pids, scfg, dcfg, k=4, teacher=teacher, max_epochs=epochs)
    finally:
        T.LeaderStudent = base


def _one_code(T, sub, pids, scfg, dcfg, epochs, prauc) -> tuple[float, float]:  # noqa: N803
    """Inner-fold students refit for `epochs`, scored on their own patients' visits cut to the
    primary diagnosis alone (no procedures, no category): (PR-AUC, cross-entropy). The
    popularity rule's cross-entropy on the same visits is about 0.32 on mimic4-demo."""
    inner = T.inner_fold_of(pids, 4)
    scores = np.zeros_like(sub["y"])
    for g in range(4):
        a, b = np.flatnonzero(inner != g), np.flatnonzero(inner == g)
        res = T.train_student({k: x[a] for k, x in sub.items()}, {k: x[b][:0] for k, x in
                              sub.items()}, scfg, dcfg, epochs=epochs)  # fmt: skip
        cut = {k: x[b].copy() for k, x in sub.items()}
        first = cut["dx"][:, -1, :1].copy()
        cut["dx"][:, -1] = 0
        cut["dx"][:, -1, :1] = first
        cut["px"][:, -1] = 0
        scores[b] = T.predict(res.model, cut)
    y = sub["y"]
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    ce = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(prauc(y, scores)), ce


def _multi_hot(ids: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(ids), width))
    for i, row in enumerate(ids.reshape(len(ids), -1)):
        out[i, row[row != 0]] = 1.0
    return out


def _rules(samples, enc, folds, pids, T, prauc) -> dict:  # noqa: N803
    """Simple rules on the same inner folds (their figures are out-of-fold PR-AUC too)."""
    vocabs, _, arrays = enc
    labels = list(vocabs.labels)
    index = {c: i for i, c in enumerate(labels)}
    y = arrays["y"].astype(np.float64)
    prev = np.zeros_like(y)
    earlier = np.zeros_like(y)
    for i, s in enumerate(samples):
        for j, v in enumerate(s.history):
            for m in v.medications:
                if m in index:
                    earlier[i, index[m]] += 1.0 / len(s.history)
                    if j == len(s.history) - 1:
                        prev[i, index[m]] = 1.0
    codes = np.hstack(
        [
            _multi_hot(arrays["dx"][:, -1], len(vocabs.diagnoses)),
            _multi_hot(arrays["px"][:, -1], len(vocabs.procedures)),
        ]
    )
    codes[:, [0, 1, len(vocabs.diagnoses), len(vocabs.diagnoses) + 1]] = 0.0

    def cooc(a, b, alpha=2.0):
        freq = (y[a].sum(0) + 0.5) / (len(a) + 1)
        n = codes[a].sum(0)
        p = (codes[a].T @ y[a] + alpha * freq) / (n[:, None] + alpha)
        w = codes[b] * np.log((len(a) + 1) / (n + 1)) * (n > 0)
        den = w.sum(1, keepdims=True)
        return np.where(den > 0, (w @ p) / np.maximum(den, 1e-9), freq)

    def knn(a, b, k=10):
        idf = np.log(len(a) / (codes[a].sum(0) + 1))
        qa, qb = codes[a] * idf, codes[b] * idf
        qa /= np.linalg.norm(qa, axis=1, keepdims=True) + 1e-9
        qb /= np.linalg.norm(qb, axis=1, keepdims=True) + 1e-9
        sim = qb @ qa.T
        sim[pids[b][:, None] == pids[a][None, :]] = -1.0
        top = np.argsort(-sim, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(sim, top, 1), 0.0)
        return np.einsum("bk,bkl->bl", w, y[a][top]) / (w.sum(1, keepdims=True) + 1e-9)

    rules = {
        "popularity": lambda a, b: np.broadcast_to(y[a].mean(0), (len(b), y.shape[1])),
        "previous_visit": lambda a, b: y[a].mean(0) + prev[b],
        "history rule (pop + prev + 0.5 earlier)": lambda a, b: (
            y[a].mean(0) + prev[b] + 0.5 * earlier[b]
        ),
        "co-occurrence + history": lambda a, b: cooc(a, b) + prev[b] + 0.5 * earlier[b],
        "10-nearest visits + history": lambda a, b: (
            0.5 * y[a].mean(0) + 0.5 * knn(a, b) + prev[b] + 0.5 * earlier[b]
        ),
    }
    out = {}
    for name, rule in rules.items():
        per_fold = []
        for tr, va, _ in folds:
            fit = np.concatenate([tr, va])
            inner = T.inner_fold_of(pids[fit], 4)
            scores = np.zeros((len(fit), y.shape[1]))
            for g in range(4):
                scores[inner == g] = rule(fit[inner != g], fit[inner == g])
            per_fold.append(prauc(y[fit], scores))
        out[name] = {
            "prauc": round(float(np.mean(per_fold)), 4),
            "per_fold_prauc": [round(float(x), 4) for x in per_fold],
        }
    return out


def _paired(result: dict) -> None:
    """Per-fold differences of every variant and rule against the new default (and the old)."""
    rows = {**result["variants"], **result["rules"]}
    pairs = {}
    for ref in ("new default (+ sqrt scaling)", "old default (sum, 12 epochs)"):
        if ref not in rows:
            continue
        base = np.array(rows[ref]["per_fold_prauc"])
        for name, r in rows.items():
            if name == ref:
                continue
            d = np.array(r["per_fold_prauc"]) - base
            rng = np.random.default_rng(0)
            boot = [rng.choice(d, len(d)).mean() for _ in range(2000)]
            pairs[f"{name} - {ref}"] = {
                "mean": round(float(d.mean()), 4),
                "folds_better": int((d > 0).sum()),
                "fold_bootstrap_95": [
                    round(float(np.percentile(boot, 2.5)), 4),
                    round(float(np.percentile(boot, 97.5)), 4),
                ],
            }
    result["paired"] = pairs


def _teacher_blend(T, arrays, vocabs, tcfg, feats, folds, pids, seed, prauc) -> dict:  # noqa: N803
    """Student OOF scores blended 80/20 with the teacher probe's, and with a probe applied to
    teacher features predicted from the student's inputs (ridge, lambda 10)."""
    from distill.medication.run import linear_probe
    from distill.medication.student import StudentConfig

    scfg = StudentConfig.from_vocabs(
        vocabs, dim=32, visit_layers=1, max_visits=tcfg.max_visits,
        wide_codes="sqrt", wide_codes_scale=round(T.codes_per_visit(arrays), 4),
    )  # fmt: skip
    y = arrays["y"]
    inputs = np.hstack(
        [
            _multi_hot(arrays["dx"][:, -1], len(vocabs.diagnoses)),
            _multi_hot(arrays["px"][:, -1], len(vocabs.procedures)),
            _multi_hot(arrays["med"][:, :-1], len(vocabs.medications)),
            _multi_hot(arrays["profile"], len(vocabs.profile)),
        ]
    )
    rows = []
    for tr, va, _ in folds:
        fit = np.concatenate([tr, va])
        sub = {k: a[fit] for k, a in arrays.items()}
        sel = T.select_by_inner_cv(sub, pids[fit], scfg, T.DistillConfig(alpha=0.0, beta=0.0,
                                   seed=seed), k=4, max_epochs=20)  # fmt: skip
        inner = T.inner_fold_of(pids[fit], 4)
        teacher = np.zeros_like(sel.oof_scores)
        predicted = np.zeros_like(teacher)
        f_fit, x_fit = feats[fit], inputs[fit]
        for g in range(4):
            a, b = np.flatnonzero(inner != g), np.flatnonzero(inner == g)
            perm = np.random.default_rng(0).permutation(a)
            n_val = len(a) // 5
            teacher[b] = linear_probe(f_fit, y[fit], perm[n_val:], perm[:n_val])[b]
            mu, sd = f_fit[a].mean(0), f_fit[a].std(0) + 1e-6
            xa = x_fit[a]
            w = np.linalg.solve(
                xa.T @ xa + 10.0 * np.eye(xa.shape[1]), xa.T @ ((f_fit[a] - mu) / sd)
            )
            guess = (x_fit @ w) * sd + mu
            guess[a] = f_fit[a]
            predicted[b] = linear_probe(guess, y[fit], perm[n_val:], perm[:n_val])[b]
        s = sel.oof_scores
        rows.append(
            [
                prauc(y[fit], s),
                prauc(y[fit], teacher),
                prauc(y[fit], 0.8 * s + 0.2 * teacher),
                prauc(y[fit], predicted),
                prauc(y[fit], 0.8 * s + 0.2 * predicted),
            ]
        )
    a = np.array(rows)
    names = ["student", "teacher probe", "student 80% + teacher 20%",
             "probe on predicted teacher features", "student 80% + that 20%"]  # fmt: skip
    return {
        "per_fold": {n: [round(float(x), 4) for x in a[:, i]] for i, n in enumerate(names)},
        "summary": {n: round(float(a[:, i].mean()), 4) for i, n in enumerate(names)},
    }


if __name__ == "__main__":
    main()
