"""Per-patient latency and size: teacher (torch), student (torch), ONNX Runtime fp32 and int8,
and the numpy backend; plus the peak memory of a runtime-only process.

One thread everywhere (torch.set_num_threads(1), ORT intra_op 1), batch 1 (p50/p95 over many
single-patient calls) and batch 256 (the batch's time / 256). All figures come from one run on
this machine, so compare them as ratios, not as absolute numbers.

Usage: python bench/latency.py [--run runs/demo/run] [--bundle assets/bundles/medication-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def time_batch(fn, batch, n: int, repeats: int = 3) -> float:
    fn(batch)
    best = min(_once(fn, batch) for _ in range(repeats))
    return best / n * 1e3  # ms per patient


def _once(fn, batch) -> float:
    t = time.perf_counter()
    fn(batch)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "run")
    ap.add_argument("--bundle", type=Path, default=ROOT / "assets" / "bundles" / "medication-demo")
    ap.add_argument("--single", type=int, default=300, help="single-patient calls per backend")
    ap.add_argument("--teacher-single", type=int, default=30)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from app.medication.backends import NumpyBackend
    from app.medication.bundle import load_bundle
    from app.medication.encoding import trim_padding
    from contract.layout import INPUT_NAMES, TensorConfig
    from distill.data import load_cohort
    from distill.data.config import DataConfig
    from distill.data.samples import build_samples
    from distill.data.tensors import MedVocabs, encode_samples
    from distill.medication.student import load_student
    from distill.medication.teacher import load_teacher
    from export.medication.graph import export_student
    from export.quantize import PRESETS, quantize

    torch.set_num_threads(1)
    cfg = json.loads((args.run / "config.json").read_text())
    d = DataConfig(**cfg["data"])
    cohort = load_cohort(d.source, Path(d.path) if d.path else None, d.fmt)
    samples = build_samples(cohort, d.protocol, d.require_procedures)
    arrays = encode_samples(
        samples, MedVocabs.load(args.run / "vocab"), TensorConfig(**cfg["tensors"])
    )
    texts = [json.loads(line)["text"] for line in (args.run / "prompts.jsonl").open()]
    n = len(samples)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    big = np.resize(order, 256)  # batch 256 from the 250 demo samples (a few repeat)
    single = [np.array([i]) for i in np.resize(order, args.single)]

    def sub(idx):
        # as the app's Recommender does: unused pad slots and columns dropped (same outputs)
        return trim_padding({k: arrays[k][idx] for k in INPUT_NAMES})

    rows = {}
    student, scfg = load_student(args.run / "fold0" / "student_kd.safetensors")
    student.eval()

    def torch_student(idx):
        with torch.inference_mode():
            inputs = sub(idx)
            student(*[torch.from_numpy(inputs[k]) for k in INPUT_NAMES])

    tmp = Path(tempfile.mkdtemp(prefix="pocketrec-latency-"))
    fp32, int8 = tmp / "student.fp32.onnx", tmp / "student.int8.onnx"
    export_student(student, scfg, fp32)
    quantize(fp32, int8, PRESETS["avx2"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sessions = {
        name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for name, p in (("ort_fp32", fp32), ("ort_int8", int8))
    }
    bundle = load_bundle(args.bundle)
    numpy_backend = NumpyBackend(bundle.weights_path, bundle.manifest["student_config"])

    backends = {
        "student_torch": torch_student,
        "ort_fp32": lambda idx: sessions["ort_fp32"].run(["logits"], sub(idx)),
        "ort_int8": lambda idx: sessions["ort_int8"].run(["logits"], sub(idx)),
        "numpy": lambda idx: numpy_backend.run(sub(idx)),
    }
    for name, fn in backends.items():
        rows[name] = {
            "batch1": percentiles(time_each(fn, single)),
            "batch256_ms_per_patient": time_batch(fn, big, 256),
        }
        print(f"{name}: done", file=sys.stderr)

    teacher = load_teacher(args.run / "fold0" / "teacher")
    tok = teacher.tokenizer

    def run_teacher(idx):
        enc = tok(
            [texts[i] for i in idx],
            truncation=True,
            max_length=teacher.max_length,
            padding=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            teacher(enc["input_ids"], enc["attention_mask"])

    rows["teacher_torch"] = {
        "batch1": percentiles(time_each(run_teacher, single[: args.teacher_single], warmup=2)),
        "batch256_ms_per_patient": time_batch(run_teacher, big, 256, repeats=1),
    }
    print("teacher: done", file=sys.stderr)

    sizes = {
        "teacher_fp32_params_bytes": 4 * sum(p.numel() for p in teacher.parameters()),
        "student_safetensors": (args.run / "fold0" / "student_kd.safetensors").stat().st_size,
        "onnx_fp32": fp32.stat().st_size,
        "onnx_int8": int8.stat().st_size,
        "bundle_total": sum(p.stat().st_size for p in args.bundle.iterdir() if p.is_file()),
    }
    memory = {}
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

    teacher_p50 = rows["teacher_torch"]["batch1"]["p50_ms"]
    print("\n| model | batch 1 p50 ms | p95 ms | batch 256 ms/patient | vs teacher (p50) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        b1 = r["batch1"]
        print(
            f"| {name} | {b1['p50_ms']:.3f} | {b1['p95_ms']:.3f} | "
            f"{r['batch256_ms_per_patient']:.4f} | {teacher_p50 / b1['p50_ms']:.0f}x |"
        )
    print("\n| size | bytes |\n|---|---:|")
    for k, v in sizes.items():
        print(f"| {k} | {v:,} |")
    print("\n| runtime-only process | peak RSS MiB | load + 201 calls s | heavy modules |")
    print("|---|---:|---:|---|")
    for k, v in memory.items():
        cells = f"{v['peak_rss_mib']:.1f} | {v['load_plus_201_calls_s']:.2f}"
        print(f"| {k} | {cells} | {v['heavy_modules_loaded']} |")

    out = ROOT / "bench" / "results" / "latency.json"
    result = {
        "run": str(args.run),
        "bundle": str(args.bundle),
        "threads": 1,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
        },
        "latency": rows,
        "size_bytes": sizes,
        "runtime_memory": memory,
        "speedup_int8_vs_teacher_p50": teacher_p50 / rows["ort_int8"]["batch1"]["p50_ms"],
        "teacher_prompt_tokens_max": teacher.max_length,
    }
    atomic_write_json(out, result)


if __name__ == "__main__":
    main()
