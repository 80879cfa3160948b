"""Per-patient latency and size: the student (torch; ONNX Runtime fp32 as the torch exporter
writes it, fp32 through `export.optimize`'s passes, int8 plainly quantised, int8 in the previous
traced + optimised form, the compact fp32 graph of `export.medication.compact` and its two int8
files -- 8-bit weights restored to float at load, what `pocketrec export` ships, and integer
products ("dynamic") --, the bundle's file, the numpy backend) beside the
teachers (the run's fine-tuned teacher and the frozen LLM teacher SmolLM2-135M-Instruct, each in
torch fp32 and exported to ONNX fp32 and int8 with optimum: what a user would run on the device
instead of the student); plus the peak memory of a runtime-only process.

One thread everywhere (torch.set_num_threads(1), ORT intra_op 1), batch 1 (p50/p95 over many
single-patient calls, the backends interleaved round by round so that the machine's noise falls
on all of them alike) and a batch (256 patients for the student, `--teacher-batch` for the
teachers: the batch's time / its size). The student's inputs are encoded and trimmed before the
clock starts (the model's time; the app's encoding is the same for every backend); a teacher's
time includes tokenizing its prompt. The teachers read LEADER prompts built from the run's
samples with the teacher's own tokenizer and a budget of `--prompt-tokens` tokens (the run's own
prompts.jsonl may have been cut to a quick run's budget). All figures come from one run on this
machine, so compare them as ratios, not as absolute numbers.

Usage: python bench/latency.py [--run runs/demo/run] [--bundle assets/bundles/medication-demo]
       [--preset avx2] [--prompt-tokens 512] [--llm-teacher smollm2 | --no-llm-teacher]
       [--no-teacher-onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness.measure import percentiles  # noqa: E402
from contract.files import atomic_write_json  # noqa: E402

RUNTIME_ONLY = """
import sys, time
from app.medication.recommender import Recommender
t0 = time.perf_counter()
rec = Recommender(sys.argv[1], backend=sys.argv[2])
r = rec.recommend(["icd9cm:4280", "icd9cm:42731"], ["icd9pcs:3893"], top_k=10)
for _ in range(200):
    rec.recommend(["icd9cm:4280", "icd9cm:42731"], ["icd9pcs:3893"], top_k=10)
load_and_first = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
mods = sorted(m for m in ("torch", "transformers", "pandas") if m in sys.modules)
print(hwm, round(load_and_first, 3), ",".join(mods) or "-")
"""


def time_each(fn, items, warmup: int = 3) -> list[float]:
    for it in items[:warmup]:
        fn(it)
    out = []
    for it in items:
        t = time.perf_counter()
        fn(it)
        out.append(time.perf_counter() - t)
    return out


def time_interleaved(backends: dict, items: list, rounds: int) -> dict[str, list[list[float]]]:
    """Each round runs every backend over all `items` (one call each): per backend, the
    timings of each round."""
    out: dict[str, list[list[float]]] = {name: [] for name in backends}
    for fn in backends.values():
        for it in items[:5]:
            fn(it)
    for _ in range(rounds):
        for name, fn in backends.items():
            out[name].append(time_each(fn, items, warmup=0))
    return out


def batch1_stats(rounds: list[list[float]]) -> dict:
    """p50/p95 over every call, and the best round's p50 (the least disturbed by the other
    processes of a shared machine)."""
    every = [t for r in rounds for t in r]
    stats = percentiles(every)
    stats["best_round_p50_ms"] = min(percentiles(r)["p50_ms"] for r in rounds)
    stats["calls"] = len(every)
    return stats


def time_batch(fn, batch, n: int, repeats: int = 3) -> float:
    fn(batch)
    best = min(_once(fn, batch) for _ in range(repeats))
    return best / n * 1e3  # ms per patient


def _once(fn, batch) -> float:
    t = time.perf_counter()
    fn(batch)
    return time.perf_counter() - t


def _session(source, optimise: bool = True, profile_prefix: str | None = None):
    """A one-thread CPU session of `source` (a path, or a ModelProto); `optimise=False` turns
    ONNX Runtime's graph optimisations off, `profile_prefix` switches its profiler on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    model = source.SerializeToString() if hasattr(source, "SerializeToString") else str(source)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def encoded_samples(run: Path):
    """The run's config, cohort, samples and their encoded arrays (as the run encoded them)."""
    from contract.layout import TensorConfig
    from distill.data import load_cohort
    from distill.data.config import DataConfig
    from distill.data.samples import build_samples
    from distill.data.tensors import MedVocabs, encode_samples

    cfg = json.loads((run / "config.json").read_text())
    d = DataConfig(**cfg["data"])
    cohort = load_cohort(d.source, Path(d.path) if d.path else None, d.fmt)
    samples = build_samples(cohort, d.protocol, d.require_procedures)
    arrays = encode_samples(samples, MedVocabs.load(run / "vocab"), TensorConfig(**cfg["tensors"]))
    return cfg, cohort, samples, arrays


def shipped_student(run: Path):
    """Fold 0's KD student in the form `pocketrec export` ships: (student in eval mode, config,
    pruning or None), its vocabulary cut to the codes fold 0 trained on where the run recorded
    them (apply the pruning to inputs with `export.medication.prune.remap_arrays`)."""
    from distill.medication.export_inputs import read_trained_ids
    from distill.medication.student import load_student
    from export.medication.prune import prune_student

    student, scfg = load_student(run / "fold0" / "student_kd.safetensors")
    pruning = None
    trained = read_trained_ids(run / "fold0")
    if trained is not None:
        student, scfg, pruning = prune_student(student, scfg, trained)
    student.eval()
    return student, scfg, pruning


def _prompts(samples, titles, tokenizer, max_tokens: int, max_items) -> list[str]:
    """LEADER prompts of `samples` fitted to `max_tokens` of `tokenizer` (as a run builds
    them)."""
    from distill.medication.prompts import build_prompt, tokenizer_counter

    count = tokenizer_counter(tokenizer)
    return [
        build_prompt(
            s, titles=titles, count_tokens=count, max_tokens=max_tokens, max_items=max_items
        )
        for s in samples
    ]


def _token_stats(tokenizer, texts: list[str], max_length: int) -> dict:
    enc = tokenizer(texts, truncation=True, max_length=max_length, verbose=False)
    n = np.array([len(ids) for ids in enc["input_ids"]])
    return {"mean": float(n.mean()), "p50": float(np.median(n)), "max": int(n.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "run")
    ap.add_argument("--bundle", type=Path, default=ROOT / "assets" / "bundles" / "medication-demo")
    ap.add_argument("--preset", default=None, help="student int8 preset (default: the bundle's)")
    ap.add_argument("--single", type=int, default=100, help="patients per round, batch 1")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds of batch-1 calls")
    ap.add_argument("--teacher-single", type=int, default=10, help="patients, batch 1")
    ap.add_argument("--teacher-batch", type=int, default=16, help="patients in a teacher batch")
    ap.add_argument("--prompt-tokens", type=int, default=512, help="teacher prompt budget")
    ap.add_argument("--no-teacher-onnx", action="store_true", help="skip the optimum exports")
    ap.add_argument(
        "--llm-teacher",
        default="smollm2",
        help="the frozen LLM teacher's backbone (a name or a model folder), timed in torch and "
        "exported to ONNX fp32 and int8 with optimum (default smollm2: SmolLM2-135M-Instruct)",
    )
    ap.add_argument("--no-llm-teacher", action="store_true", help="skip the LLM teacher")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from app.medication.backends import NumpyBackend
    from app.medication.bundle import load_bundle
    from app.medication.encoding import trim_padding
    from contract.layout import INPUT_NAMES
    from distill.medication.teacher import load_teacher
    from export.medication.compact import export_compact
    from export.medication.graph import export_student
    from export.medication.prune import remap_arrays
    from export.optimize import optimize_file
    from export.quantize import quantize

    torch.set_num_threads(1)
    cfg, cohort, samples, arrays = encoded_samples(args.run)
    n = len(samples)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    big = np.resize(order, 256)  # batch 256 from the demo samples (a few repeat)
    single_idx = [np.array([i]) for i in np.resize(order, args.single)]

    def sub(idx):
        # as the app's Recommender does: unused pad slots and columns dropped (same outputs)
        return trim_padding({k: arrays[k][idx] for k in INPUT_NAMES})

    singles = [sub(i) for i in single_idx]  # encoded before the clock starts
    batch = sub(big)

    bundle = load_bundle(args.bundle) if args.bundle and args.bundle.is_dir() else None
    quant = bundle.manifest["model"].get("quantization", {}) if bundle else {}
    # the preset of the integer-product forms: the bundle's when it has one (a "weights" bundle
    # has none), else avx2
    preset = args.preset or (quant.get("preset") or {}).get("name") or "avx2"
    student, scfg, pruning = shipped_student(args.run)
    if pruning is not None:
        arrays = remap_arrays(arrays, pruning)
        singles = [remap_arrays(x, pruning) for x in singles]
        batch = remap_arrays(batch, pruning)

    def torch_student(inputs):
        with torch.inference_mode():
            student(*[torch.from_numpy(inputs[k]) for k in INPUT_NAMES])

    tmp = Path(tempfile.mkdtemp(prefix="pocketrec-latency-"))
    files = {
        "ort_fp32": tmp / "student.fp32.onnx",
        "ort_fp32_opt": tmp / "student.fp32.opt.onnx",
        "ort_int8_plain": tmp / "student.int8.plain.onnx",
        "ort_int8_traced": tmp / "student.int8.traced.onnx",
        "ort_fp32_compact": tmp / "student.fp32.compact.onnx",
        "ort_int8_dynamic": tmp / "student.int8.dynamic.onnx",
        "ort_int8": tmp / "student.int8.onnx",
    }
    export_student(student, scfg, files["ort_fp32"])
    optimize_file(files["ort_fp32"], files["ort_fp32_opt"])
    quantize(files["ort_fp32"], files["ort_int8_plain"], preset, optimize=False)
    traced_q = quantize(files["ort_fp32"], files["ort_int8_traced"], preset)
    # the shipped form (8-bit weights, float compute once loaded) and the integer-product one
    _, qinfo = export_compact(student, scfg, files["ort_fp32_compact"], files["ort_int8"], preset)
    _, qdyn = export_compact(student, scfg, tmp / "student.fp32.compact.2.onnx",
                             files["ort_int8_dynamic"], preset, form="dynamic")  # fmt: skip
    if bundle is not None:
        files["ort_int8_bundle"] = bundle.model_path
    sessions = {name: _session(p) for name, p in files.items()}

    def runner(name):
        sess = sessions[name]
        return lambda inputs: sess.run(["logits"], inputs)

    backends = {"student_torch": torch_student, **{name: runner(name) for name in sessions}}
    if bundle is not None:
        numpy_backend = NumpyBackend(bundle.weights_path, bundle.manifest["student_config"])
        backends["numpy"] = numpy_backend.run
    timings = time_interleaved(backends, singles, args.rounds)
    rows = {}
    for name, fn in backends.items():
        rows[name] = {
            "batch1": batch1_stats(timings[name]),
            "batch256_ms_per_patient": time_batch(fn, batch, 256),
        }
        if name in files:
            rows[name]["nodes"] = _nodes(files[name])
    print("students: done", file=sys.stderr)

    # ---- teachers: the run's (fine-tuned, or frozen with a probe) and the frozen LLM
    max_items = cfg.get("prompt_max_items")
    t_pick = [int(i[0]) for i in single_idx[: args.teacher_single]]
    b_pick = [int(i) for i in order[: args.teacher_batch]]
    teachers, teacher_info, sizes_teacher, prompt_tokens = {}, {}, {}, {}

    def add_teacher(key: str, model, onnx_dir: Path | None, onnx_export) -> None:
        from export.teacher import OnnxTeacher

        model.eval()
        texts = _prompts(samples, cohort.titles, model.tokenizer, args.prompt_tokens, max_items)
        length = min(args.prompt_tokens, model.max_length_limit)
        prompt_tokens[key] = _token_stats(model.tokenizer, [texts[i] for i in t_pick], length)

        def run_torch(idx, model=model, texts=texts):
            enc = model.tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=length,
                padding=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                model(enc["input_ids"], enc["attention_mask"])

        teachers[f"{key}_torch"] = (run_torch, texts)
        sizes_teacher[f"{key}_fp32_params_bytes"] = 4 * sum(p.numel() for p in model.parameters())
        if onnx_dir is None:
            return
        try:
            info = onnx_export(onnx_dir)
        except Exception as e:  # an optimum export failure is a finding, not a crash
            teacher_info[key] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{key} export failed: {teacher_info[key]['error']}", file=sys.stderr)
            return
        teacher_info[key] = info
        for which in ("fp32", "int8"):
            ot = OnnxTeacher(onnx_dir, which, max_length=length)
            teachers[f"{key}_onnx_{which}"] = (
                lambda idx, ot=ot, texts=texts: ot.logits([texts[i] for i in idx]),
                texts,
            )
            sizes_teacher[f"{key}_onnx_{which}"] = info["bytes"][which]

    from export.teacher import export_teacher, export_teacher_model, frozen_teacher

    teacher_dir = args.run / "fold0" / "teacher"
    if teacher_dir.is_dir():
        teacher = load_teacher(teacher_dir)
        teacher.max_length_limit = _position_limit(teacher)
        add_teacher(
            "teacher",
            teacher,
            None if args.no_teacher_onnx else tmp / "teacher",
            lambda out: export_teacher(teacher_dir, out, preset="avx512_vnni"),
        )
    if not args.no_llm_teacher:
        llm = frozen_teacher(args.llm_teacher, scfg.n_labels, max_length=args.prompt_tokens)
        llm.max_length_limit = _position_limit(llm)
        add_teacher(
            "llm_teacher",
            llm,
            None if args.no_teacher_onnx else tmp / "llm",
            lambda out: export_teacher_model(llm, out, preset="avx512_vnni"),
        )
    t_fns = {name: fn for name, (fn, _) in teachers.items()}
    t_times = time_interleaved(t_fns, [np.array([i]) for i in t_pick], rounds=1)
    for name, fn in t_fns.items():
        rows[name] = {
            "batch1": batch1_stats(t_times[name]),
            "batch_ms_per_patient": time_batch(fn, b_pick, len(b_pick), repeats=1),
        }
    print("teachers: done", file=sys.stderr)

    sizes = {
        "student_safetensors": (args.run / "fold0" / "student_kd.safetensors").stat().st_size,
        "student_onnx_fp32": files["ort_fp32"].stat().st_size,
        "student_onnx_fp32_compact": files["ort_fp32_compact"].stat().st_size,
        "student_onnx_int8_traced": files["ort_int8_traced"].stat().st_size,
        "student_onnx_int8_dynamic": files["ort_int8_dynamic"].stat().st_size,
        "student_onnx_int8": files["ort_int8"].stat().st_size,
        **sizes_teacher,
    }
    if bundle is not None:
        sizes["bundle_total"] = sum(p.stat().st_size for p in args.bundle.iterdir() if p.is_file())
    memory = {}
    if bundle is not None:
        for backend in ("onnxruntime", "numpy"):
            out = subprocess.run(
                [sys.executable, "-c", RUNTIME_ONLY, str(args.bundle), backend],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout.split()
            memory[backend] = {
                "peak_rss_mib": int(out[0]) / 1024,
                "load_plus_201_calls_s": float(out[1]),
                "heavy_modules_loaded": out[2],
            }

    refs = [r for r in ("llm_teacher_onnx_int8", "teacher_onnx_int8", "teacher_torch") if r in rows]
    ref_name = refs[0] if refs else "ort_fp32"
    ref = rows[ref_name]
    print(f"\nstudent int8 preset {preset}; ratios against {ref_name}")
    print(
        "\n| model | nodes | batch 1 p50 ms | best-round p50 | p95 ms | batched ms/patient | "
        f"x faster than {ref_name} (p50) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        b1 = r["batch1"]
        batched = r.get("batch256_ms_per_patient", r.get("batch_ms_per_patient"))
        print(
            f"| {name} | {r.get('nodes', '')} | {b1['p50_ms']:.4f} | "
            f"{b1['best_round_p50_ms']:.4f} | {b1['p95_ms']:.4f} | {batched:.4f} | "
            f"{ref['batch1']['p50_ms'] / b1['p50_ms']:.0f}x |"
        )
    print("\n| size | bytes |\n|---|---:|")
    for k, v in sizes.items():
        print(f"| {k} | {v:,} |")
    if prompt_tokens:
        print("\n| teacher prompt tokens | mean | p50 | max |\n|---|---:|---:|---:|")
        for k, v in prompt_tokens.items():
            print(f"| {k} | {v['mean']:.0f} | {v['p50']:.0f} | {v['max']} |")
    if memory:
        print("\n| runtime-only process | peak RSS MiB | load + 201 calls s | heavy modules |")
        print("|---|---:|---:|---|")
        for k, v in memory.items():
            cells = f"{v['peak_rss_mib']:.1f} | {v['load_plus_201_calls_s']:.2f}"
            print(f"| {k} | {cells} | {v['heavy_modules_loaded']} |")

    def p50(name):
        return rows[name]["batch1"]["p50_ms"]

    def best(name):
        return rows[name]["batch1"]["best_round_p50_ms"]

    pairs = {
        "int8_vs_fp32_as_exported": ("ort_fp32", "ort_int8"),
        "int8_vs_fp32_optimised": ("ort_fp32_opt", "ort_int8"),
        "int8_vs_fp32_compact": ("ort_fp32_compact", "ort_int8"),
        "int8_dynamic_vs_fp32_compact": ("ort_fp32_compact", "ort_int8_dynamic"),
        "int8_vs_int8_dynamic": ("ort_int8_dynamic", "ort_int8"),
        "int8_vs_int8_traced": ("ort_int8_traced", "ort_int8"),
        "int8_vs_int8_plain": ("ort_int8_plain", "ort_int8"),
        "numpy_vs_int8": ("numpy", "ort_int8"),
    }
    pairs = {k: v for k, v in pairs.items() if all(x in rows for x in v)}
    result = {
        "run": str(args.run),
        "bundle": str(args.bundle) if bundle is not None else None,
        "threads": 1,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
        },
        "student_int8_preset": preset,
        "student_int8_graph": qinfo["graph"],
        "student_int8_storage": qinfo["form"],
        "student_int8_dynamic_optimization": qdyn["optimization"],
        "student_int8_optimization": qinfo["optimization"],
        "student_int8_traced_optimization": traced_q["optimization"],
        "latency": rows,
        "size_bytes": sizes,
        "runtime_memory": memory,
        "ratios_p50": {k: p50(a) / p50(b) for k, (a, b) in pairs.items()},
        "ratios_best_round_p50": {k: best(a) / best(b) for k, (a, b) in pairs.items()},
        "teacher_prompt_budget_tokens": args.prompt_tokens,
        "teacher_prompt_tokens": prompt_tokens,
        "teacher_batch": len(b_pick),
        "teacher_onnx": teacher_info.get("teacher"),
        "llm_teacher_onnx": teacher_info.get("llm_teacher"),
    }
    for name in teachers:
        result["ratios_p50"][f"student_int8_vs_{name}"] = p50(name) / p50("ort_int8")
        result.setdefault("ratios_batched", {})[f"student_int8_vs_{name}"] = (
            rows[name]["batch_ms_per_patient"] / rows["ort_int8"]["batch256_ms_per_patient"]
        )
    atomic_write_json(args.out, result)
    print(f"\nwrote {args.out}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


def _position_limit(teacher) -> int:
    """The most tokens the teacher's backbone takes (its position table), or a large number."""
    limit = getattr(teacher.backbone_config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) else 1 << 30


if __name__ == "__main__":
    main()
