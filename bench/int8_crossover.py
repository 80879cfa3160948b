"""Where int8 compute starts to pay: the shipped student's compact graph in fp32 and in its int8
forms at its own width and at wider ones, timed side by side on the same patients.

`bench/latency.py` finds the integer-product int8 graph slower than the same compact graph in
fp32. This bench says why, by splitting that graph's extra cost in two and by growing the model:

- `fp32`: `export.medication.compact.build_graph` without a preset;
- `int8`: the "dynamic" form (8-bit tables summed as integers, integer dense products);
- `int8_tables`: 8-bit tables, fp32 dense products (`products="fp32"`): the tables' share;
- `int8_weights`: the shipped "weights" form (8-bit storage restored when the session is made:
  the fp32 graph once loaded);

for fold 0's trained student (the shipped form: vocabulary cut to its trained codes) and for
students of the same architecture and vocabulary at `--dims` (fresh torch initialisation, seed
0: at a fixed shape ONNX Runtime's time does not depend on the weights' values; the trained
student and the fresh one of its width are both timed to show it). One thread, batch 1, the
run's encoded patients (trimmed as the app trims them), every graph interleaved round by round
so the machine's noise falls on all alike; p50 per graph and its ratio to fp32 of the same
width. One run on this machine: compare ratios, not absolute figures.

Usage: python bench/int8_crossover.py [--run runs/demo/run] [--dims 32 64 96 128 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.latency import (  # noqa: E402
    _session,
    batch1_stats,
    encoded_samples,
    shipped_student,
    time_interleaved,
)
from contract.files import atomic_write_json  # noqa: E402

FORMS = ("fp32", "int8", "int8_tables", "int8_weights")


def write_forms(state, config, preset, folder: Path, stem: str) -> dict[str, Path]:
    """The compact forms of one student, as files in `folder`."""
    import onnx

    from export.medication.compact import build_graph, weights_only

    paths = {form: folder / f"{stem}.{form}.onnx" for form in FORMS}
    fp32 = build_graph(state, config)
    onnx.save(fp32, str(paths["fp32"]))
    onnx.save(weights_only(fp32), str(paths["int8_weights"]))
    onnx.save(build_graph(state, config, preset), str(paths["int8"]))
    onnx.save(build_graph(state, config, preset, products="fp32"), str(paths["int8_tables"]))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "run")
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 64, 96, 128, 256])
    ap.add_argument("--preset", default="avx2", help="int8 preset (the shipped bundle's: avx2)")
    ap.add_argument("--single", type=int, default=100, help="patients per round, batch 1")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_crossover.json")
    args = ap.parse_args()
    if not (args.run / "config.json").is_file():
        sys.exit(f"no run at {args.run} (config.json missing): run `make demo` or pass --run")

    import onnx
    import onnxruntime as ort
    import torch

    from app.medication.encoding import trim_padding
    from contract.layout import INPUT_NAMES
    from distill.medication.student import LeaderStudent
    from export.medication.compact import state_of
    from export.medication.prune import remap_arrays
    from export.quantize import get_preset

    preset = get_preset(args.preset)
    _, _, samples, arrays = encoded_samples(args.run)
    student, config, pruning = shipped_student(args.run)
    if pruning is not None:
        arrays = remap_arrays(arrays, pruning)
    order = np.resize(np.random.default_rng(0).permutation(len(samples)), args.single)
    singles = [trim_padding({k: arrays[k][[i]] for k in INPUT_NAMES}) for i in order]

    tmp = Path(tempfile.mkdtemp(prefix="pocketrec-crossover-"))
    models = {"trained": (state_of(student), config)}
    for dim in args.dims:
        wider = dataclasses.replace(config, dim=dim)
        torch.manual_seed(0)
        models[f"dim{dim}"] = (state_of(LeaderStudent(wider).eval()), wider)
    files, info = {}, {}
    for name, (state, cfg) in models.items():
        for form, path in write_forms(state, cfg, preset, tmp, name).items():
            files[f"{name}/{form}"] = path
        info[name] = {
            "dim": cfg.dim,
            "parameters": int(sum(np.asarray(v).size for v in state.values())),
            "bytes": {f: files[f"{name}/{f}"].stat().st_size for f in FORMS},
            "nodes": {f: len(onnx.load(str(files[f"{name}/{f}"])).graph.node) for f in FORMS},
        }
    sessions = {key: _session(path) for key, path in files.items()}
    backends = {key: (lambda x, s=sess: s.run(["logits"], x)) for key, sess in sessions.items()}
    timings = time_interleaved(backends, singles, args.rounds)
    for name in models:
        stats = {f: batch1_stats(timings[f"{name}/{f}"]) for f in FORMS}
        base = stats["fp32"]["p50_ms"]
        info[name]["batch1"] = stats
        info[name]["p50_vs_fp32"] = {f: stats[f]["p50_ms"] / base for f in FORMS}

    print(
        "| student | dim | fp32 p50 ms | int8 p50 ms | int8 / fp32 | int8 tables only / fp32 | "
        "int8 weights (shipped form) / fp32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in info.items():
        p = {f: row["batch1"][f]["p50_ms"] for f in FORMS}
        r = row["p50_vs_fp32"]
        print(
            f"| {name} | {row['dim']} | {p['fp32']:.4f} | {p['int8']:.4f} | "
            f"{r['int8']:.2f} | {r['int8_tables']:.2f} | {r['int8_weights']:.2f} |"
        )
    atomic_write_json(
        args.out,
        {
            "run": str(args.run),
            "preset": preset.name,
            "threads": 1,
            "onnxruntime": ort.__version__,
            "patients_per_round": args.single,
            "rounds": args.rounds,
            "students": info,
        },
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
