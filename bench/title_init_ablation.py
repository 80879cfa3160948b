"""Do code embeddings read from the code titles by the teacher help? VALIDATION patients only.

The companion of bench/hierarchy_ablation.py (same no-KD student, folds, seeds, early stopping
on validation, cohort vocabulary): the student's shared embedding table starts from
`distill.medication.code_init.code_title_table` (each code's title read by the FROZEN teacher
backbone, PCA to the student's width) instead of random, with the code hierarchy off and on.
Paired against the random-init rows of bench/results/hierarchy_ablation.json (run that first,
with the same --folds/--seeds). The test patients are never touched.

train_student builds its own LeaderStudent, so this script wraps the class to apply the table
right after construction (a measurement device; a run would pass the table explicitly).

Usage: python bench/title_init_ablation.py --teacher minilm [--seeds 0,1,2]
Writes bench/results/title_init_ablation_<teacher>.json.
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="minilm", help="backbone name or path (frozen)")
    ap.add_argument("--source", default="mimic4-demo")
    ap.add_argument("--protocol", default="all-visits")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--base", type=Path, default=ROOT / "bench/results/hierarchy_ablation.json")
    ap.add_argument("--hierarchy", default="off,on", help="code hierarchy settings to try")
    ap.add_argument(
        "--pair-only",
        action="store_true",
        help="no training: pair the saved title-init rows with --base (e.g. once it exists)",
    )
    ap.add_argument(
        "--out", type=Path, help="default bench/results/title_init_ablation_<teacher>.json"
    )
    ap.add_argument("--cache", type=Path, default=Path("/tmp/pocketrec_title_tables"))
    args = ap.parse_args(argv)

    import torch

    import distill.medication.train as train_mod
    from contract.layout import TensorConfig
    from distill.backbone import TeacherConfig
    from distill.data import load_cohort
    from distill.data.samples import build_samples
    from distill.data.tensors import MedVocabs, encode_samples
    from distill.medication import evaluate as ev
    from distill.medication.code_init import code_title_table, init_student_embeddings
    from distill.medication.student import LeaderStudent, StudentConfig

    torch.set_num_threads(1)
    cohort = load_cohort(args.source)
    samples = build_samples(cohort, args.protocol)
    seeds = [int(s) for s in args.seeds.split(",")]
    dcfg = train_mod.DistillConfig(alpha=0.0, max_epochs=args.max_epochs)
    teacher = TeacherConfig(backbone=args.teacher, frozen=True)
    tag = Path(args.teacher).name
    t0 = time.perf_counter()
    result: dict = {
        "source": args.source,
        "protocol": args.protocol,
        "folds": args.folds,
        "seeds": seeds,
        "teacher": args.teacher,
        "metric": "best validation PR-AUC (validation patients only; test folds not read)",
        "variants": {},
        "paired": {},
        "table_seconds": {},
    }
    per_variant: dict[str, np.ndarray] = {}
    settings = {"off": False, "on": True}
    out = args.out or ROOT / "bench" / "results" / f"title_init_ablation_{tag}.json"
    todo = [settings[h] for h in args.hierarchy.split(",")]
    if args.pair_only:
        result = json.loads(out.read_text())
        seeds, todo = result["seeds"], []
        for name, r in result["variants"].items():
            per_variant[name.removesuffix(" title-init")] = np.array(r["per_fold"])
    for anc in todo:
        vocabs = MedVocabs.build(cohort.visits, ancestors=anc)
        tcfg = TensorConfig(ancestors=anc)
        arrays = encode_samples(samples, vocabs, tcfg)
        scfg = StudentConfig.from_vocabs(vocabs, max_visits=tcfg.max_visits)
        cache = args.cache / f"{args.source}_{tag}_anc{int(anc)}_d{scfg.dim}.npy"
        t1 = time.perf_counter()
        if cache.is_file():
            table = np.load(cache)
        else:
            table = code_title_table(vocabs, teacher, dim=scfg.dim, titles=cohort.titles)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, table)
        result["table_seconds"][f"ancestors={anc}"] = round(time.perf_counter() - t1, 1)

        class TitleInit(LeaderStudent):
            def __init__(self, config, _table=table):
                super().__init__(config)
                init_student_embeddings(self, _table)

        train_mod.LeaderStudent = TitleInit
        name = f"cohort ancestors={anc}"
        per_fold = []
        for fold in range(args.folds):
            tr, va, _test_not_read = ev.fold_indices(samples, args.folds, fold, args.split_seed)
            train = {k: x[tr] for k, x in arrays.items()}
            val = {k: x[va] for k, x in arrays.items()}
            per_seed = [
                float(
                    train_mod.train_student(train, val, scfg, replace(dcfg, seed=s)).best_val_prauc
                )
                for s in seeds
            ]
            per_fold.append(float(np.mean(per_seed)))
            print(f"fold {fold} {name} title-init: {per_fold[-1]:.4f} "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip
        train_mod.LeaderStudent = LeaderStudent
        a = np.array(per_fold)
        per_variant[name] = a
        result["variants"][f"{name} title-init"] = {
            "mean": float(a.mean()),
            "std_over_folds": float(a.std()),
            "per_fold": per_fold,
        }
    # read the random-init rows only now: hierarchy_ablation.py may run alongside
    base = json.loads(args.base.read_text()) if args.base.is_file() else None
    for name, a in per_variant.items():
        ref = (base or {}).get("variants", {}).get(name)
        if ref and base["seeds"] == seeds and base["folds"] == args.folds:
            d = a - np.array(ref["per_fold"])
            rng = np.random.default_rng(0)
            boot = [rng.choice(d, len(d)).mean() for _ in range(2000)]
            result["paired"][name] = {
                "title_minus_random_mean": float(d.mean()),
                "per_fold": [float(x) for x in d],
                "folds_title_better": int((d > 0).sum()),
                "bootstrap_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                "random_init_mean": ref["mean"],
            }
    if not args.pair_only:
        result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out, result)
    for name, r in result["variants"].items():
        print(f"{name}: val PR-AUC {r['mean']:.4f} (std over folds {r['std_over_folds']:.4f})")
    for name, p in result["paired"].items():
        lo, hi = p["bootstrap_95"]
        print(f"{name}: title - random {p['title_minus_random_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
              f", better in {p['folds_title_better']}/{args.folds} folds")  # fmt: skip
    print(f"wrote {out} ({result.get('seconds')} s of training)")
    return result


if __name__ == "__main__":
    main()
