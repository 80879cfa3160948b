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

Where the shipped width's time goes, to bound what 8-bit arithmetic could save there:

- `floor`: graphs with the student's inputs and nothing to compute, timed in the same rounds: one
  node (the cost of a call) and as many nodes as the fp32 graph (a Cast, then Neg after Neg on
  the [B, V] visit mask; graph optimisations off so that none is removed): the cost of the call
  and of dispatching that many nodes, whatever they compute;
- `profile`: ONNX Runtime's profiler on the trained student's forms, kernel time per call by
  operator, grouped into dense products (the only work integer arithmetic replaces), conversions
  (Cast, QuantizeLinear, DequantizeLinear) and the rest. The profiler adds its own cost to every
  node (measured on the floor graph and reported beside), so compare the groups across forms,
  not with the unprofiled p50.

Usage: python bench/int8_crossover.py [--run runs/demo/run] [--dims 32 64 96 128 256]
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import shutil
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
# operator groups of the profile: what integer arithmetic replaces, what 8-bit storage adds
PRODUCT_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "FusedMatMul",
        "Attention",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLinear",
        "QAttention",
        "QGemm",
    }
)
CONVERSION_OPS = frozenset({"Cast", "QuantizeLinear", "DequantizeLinear"})
PROFILE_CALLS = 600


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


def floor_graph(inputs, nodes: int):
    """`nodes` nodes that compute next to nothing on the student's inputs: a Cast of the visit
    mask, then Neg after Neg ([B, V] floats)."""
    from onnx import TensorProto, helper

    chain = [helper.make_node("Cast", ["visit_mask"], ["t0"], to=TensorProto.FLOAT)]
    chain += [helper.make_node("Neg", [f"t{i}"], [f"t{i + 1}"]) for i in range(nodes - 1)]
    out = helper.make_tensor_value_info(f"t{nodes - 1}", TensorProto.FLOAT, None)
    graph = helper.make_graph(chain, "floor", list(inputs), [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def profile_ops(source, items: list, output: str, optimise: bool = True) -> dict:
    """Kernel microseconds per call by operator of the graph `source` (a path or a ModelProto),
    from ONNX Runtime's profiler: {"ops": {op: {"nodes", "us_per_call"}}, "groups_us_per_call":
    {products, conversions, rest}, "total_us_per_call", "nodes"}."""
    import json

    folder = Path(tempfile.mkdtemp(prefix="pocketrec-profile-"))
    try:
        session = _session(source, optimise=optimise, profile_prefix=str(folder / "p"))
        calls = [items[i % len(items)] for i in range(PROFILE_CALLS)]
        for x in calls:
            session.run([output], x)
        events = json.loads(Path(session.end_profiling()).read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the profile is ~30 MB of JSON
    per_op: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        row = per_op.setdefault(op, {"nodes": set(), "us": 0.0})
        row["nodes"].add(e["name"])
        row["us"] += e["dur"]
    ops = {
        op: {"nodes": len(r["nodes"]), "us_per_call": r["us"] / len(calls)}
        for op, r in sorted(per_op.items(), key=lambda kv: -kv[1]["us"])
    }
    groups = {"products": 0.0, "conversions": 0.0, "rest": 0.0}
    for op, r in ops.items():
        if op in PRODUCT_OPS:
            groups["products"] += r["us_per_call"]
        elif op in CONVERSION_OPS:
            groups["conversions"] += r["us_per_call"]
        else:
            groups["rest"] += r["us_per_call"]
    return {
        "ops": ops,
        "groups_us_per_call": groups,
        "total_us_per_call": sum(groups.values()),
        "nodes": sum(r["nodes"] for r in ops.values()),
    }


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
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # 24 graphs, ~40 MB
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
    # the floor: a call and the fp32 graph's node count, with nothing to compute
    student_inputs = onnx.load(str(files["trained/fp32"])).graph.input
    fp32_nodes = info["trained"]["nodes"]["fp32"]
    floors = {
        "call": floor_graph(student_inputs, 1),
        "nodes": floor_graph(student_inputs, fp32_nodes),
    }
    for kind, model in floors.items():
        sess = _session(model, optimise=False)  # a chain of Negs must stay as long as it is
        out = model.graph.output[0].name
        backends[f"floor/{kind}"] = lambda x, s=sess, o=out: s.run([o], x)
    timings = time_interleaved(backends, singles, args.rounds)
    for name in models:
        stats = {f: batch1_stats(timings[f"{name}/{f}"]) for f in FORMS}
        base = stats["fp32"]["p50_ms"]
        info[name]["batch1"] = stats
        info[name]["p50_vs_fp32"] = {f: stats[f]["p50_ms"] / base for f in FORMS}
    floor = {kind: batch1_stats(timings[f"floor/{kind}"]) for kind in floors}
    floor["nodes"]["nodes"] = fp32_nodes
    print("profiling the trained student's forms ...", file=sys.stderr)
    profile = {
        form: profile_ops(files[f"trained/{form}"], singles, "logits")
        for form in ("fp32", "int8", "int8_weights")
    }
    profile["floor_nodes"] = profile_ops(
        floors["nodes"], singles, floors["nodes"].graph.output[0].name, optimise=False
    )

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
    call, nodes = floor["call"]["p50_ms"], floor["nodes"]["p50_ms"]
    trained = info["trained"]["batch1"]["fp32"]["p50_ms"]
    print(
        f"\nfloor (nothing to compute, p50 ms): a call {call:.4f}; a call with {fp32_nodes} nodes "
        f"{nodes:.4f}; the trained fp32 graph {trained:.4f}"
    )
    per_node = profile["floor_nodes"]["total_us_per_call"] / fp32_nodes
    print(
        "\nprofiled kernel time, us per call (the profiler adds its own cost to every node: "
        f"{per_node:.2f} us per node on the floor graph)"
    )
    print("| trained student | nodes | products | conversions | rest | total |")
    print("|---|---:|---:|---:|---:|---:|")
    for form, row in profile.items():
        g = row["groups_us_per_call"]
        print(
            f"| {form} | {row['nodes']} | {g['products']:.1f} | {g['conversions']:.1f} | "
            f"{g['rest']:.1f} | {row['total_us_per_call']:.1f} |"
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
            "floor": floor,
            "profile": {
                "calls": PROFILE_CALLS,
                "product_ops": sorted(PRODUCT_OPS),
                "conversion_ops": sorted(CONVERSION_OPS),
                "forms": profile,
            },
        },
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
