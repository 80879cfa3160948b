"""Does the code hierarchy (`TensorConfig.ancestors`) help the student? VALIDATION patients only.

Trains the no-KD student (no teacher needed, so the input layout is the only difference) with
the ICD categories off and on, on the same folds and seeds, and reports the best validation
PR-AUC (early stopping on the validation patients, as LEADER does) with paired per-fold
differences. Two vocabularies:

- "cohort": built over every visit of the cohort, as `pocketrec distill` builds it (no code is
  unknown inside the demo: categories can only share what siblings learned);
- "train-only": built over the fold's TRAINING patients only, so validation patients bring
  codes the model never saw, as clinicians entering any ICD code in the app will. This is where
  the categories should matter.

The test patients are never touched. Usage:
  python bench/hierarchy_ablation.py [--source mimic4-demo] [--seeds 0,1,2] [--folds 5]
Writes bench/results/hierarchy_ablation.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.files import atomic_write_json  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="mimic4-demo")
    ap.add_argument("--protocol", default="all-visits")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "hierarchy_ablation.json"
    )
    args = ap.parse_args(argv)

    import torch

    from contract.layout import TensorConfig
    from distill.data import load_cohort
    from distill.data.samples import build_samples
    from distill.data.tensors import MedVocabs, encode_samples
    from distill.medication import evaluate as ev
    from distill.medication.student import StudentConfig
    from distill.medication.train import DistillConfig, train_student

    torch.set_num_threads(1)
    cohort = load_cohort(args.source)
    samples = build_samples(cohort, args.protocol)
    seeds = [int(s) for s in args.seeds.split(",")]
    dcfg = DistillConfig(alpha=0.0, max_epochs=args.max_epochs)
    t0 = time.perf_counter()
    variants = [(vocab, anc) for vocab in ("cohort", "train-only") for anc in (False, True)]
    rows: dict[str, list[list[float]]] = {f"{v} ancestors={a}": [] for v, a in variants}
    unknown_share: dict[str, list[float]] = {f"{v} ancestors={a}": [] for v, a in variants}
    for fold in range(args.folds):
        tr, va, _test_not_read = ev.fold_indices(samples, args.folds, fold, args.split_seed)
        train_pids = {samples[i].patient_id for i in tr}
        for vocab_kind, anc in variants:
            name = f"{vocab_kind} ancestors={anc}"
            visits = cohort.visits
            if vocab_kind == "train-only":
                visits = [v for v in cohort.visits if v.patient_id in train_pids]
            vocabs = MedVocabs.build(visits, ancestors=anc)
            tcfg = TensorConfig(ancestors=anc)
            # labels must be the same classes in every variant: the train-only vocabulary's
            # medications are the cohort's (drugs are outputs; their ids define the labels)
            if vocab_kind == "train-only":
                vocabs = replace(vocabs, medications=MedVocabs.build(cohort.visits).medications)
            val_unknown: Counter = Counter()
            arrays_va = encode_samples([samples[i] for i in va], vocabs, tcfg, val_unknown)
            arrays_tr = encode_samples([samples[i] for i in tr], vocabs, tcfg)
            # share of the validation patients' current-visit diagnoses the vocabulary lacks
            n_dx = sum(len(samples[i].target.diagnoses[: tcfg.max_diagnoses]) for i in va)
            unknown_dx = sum(
                1
                for i in va
                for c in samples[i].target.diagnoses[: tcfg.max_diagnoses]
                if c not in vocabs.diagnoses
            )
            share = unknown_dx / max(1, n_dx)
            unknown_share[name].append(share)
            scfg = StudentConfig.from_vocabs(vocabs, max_visits=tcfg.max_visits)
            per_seed = []
            for seed in seeds:
                res = train_student(arrays_tr, arrays_va, scfg, replace(dcfg, seed=seed))
                per_seed.append(float(res.best_val_prauc))
            rows[name].append(per_seed)
            print(
                f"fold {fold} {name}: val PR-AUC {np.mean(per_seed):.4f} "
                f"(unknown current-visit dx {share:.1%}, {sum(val_unknown.values())} unknown "
                f"codes) {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )

    result: dict = {
        "source": args.source,
        "protocol": args.protocol,
        "folds": args.folds,
        "seeds": seeds,
        "student": "no-KD student (alpha=0), DistillConfig defaults, early stopping on validation",
        "metric": "best validation PR-AUC (validation patients only; test folds not read)",
        "variants": {},
        "paired": {},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for name, per_fold in rows.items():
        a = np.array(per_fold)  # [folds, seeds]
        result["variants"][name] = {
            "mean": float(a.mean()),
            "std_over_folds": float(a.mean(axis=1).std()),
            "per_fold": [float(x) for x in a.mean(axis=1)],
            "unknown_share_current_dx": float(np.mean(unknown_share[name])),
        }
    for vocab_kind in ("cohort", "train-only"):
        off = np.array(rows[f"{vocab_kind} ancestors=False"]).mean(axis=1)
        on = np.array(rows[f"{vocab_kind} ancestors=True"]).mean(axis=1)
        d = on - off
        rng = np.random.default_rng(0)
        boot = [rng.choice(d, len(d)).mean() for _ in range(2000)]
        result["paired"][vocab_kind] = {
            "on_minus_off_mean": float(d.mean()),
            "per_fold": [float(x) for x in d],
            "folds_on_better": int((d > 0).sum()),
            "bootstrap_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        }
    atomic_write_json(args.out, result)
    print("\n| vocabulary | ancestors | val PR-AUC | std (folds) | unknown current dx |")
    print("|---|---|---:|---:|---:|")
    for name, r in result["variants"].items():
        v, a = name.split(" ancestors=")
        print(f"| {v} | {a} | {r['mean']:.4f} | {r['std_over_folds']:.4f} | "
              f"{r['unknown_share_current_dx']:.1%} |")  # fmt: skip
    for v, p in result["paired"].items():
        lo, hi = p["bootstrap_95"]
        print(f"{v}: on - off {p['on_minus_off_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}], "
              f"on better in {p['folds_on_better']}/{args.folds} folds")  # fmt: skip
    print(f"wrote {args.out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
