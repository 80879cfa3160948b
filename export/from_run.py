"""A finished distill run -> int8 students for every fold -> `student_int8` in the report ->
the bundle of fold 0's student.

The shipped student is fold 0's KD student: trained on the other folds' patients, so fold 0's
test patients are truly held out for the int8-vs-fp32 parity check. Every fold's student is
quantized too, so the report's `student_int8` row is measured the same way as the others.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from distill import evaluate as ev
from distill.config import DataConfig
from distill.data import codes, load_cohort
from distill.data.samples import build_samples
from distill.data.tensors import INPUT_NAMES, MedVocabs, TensorConfig, encode_samples
from distill.data.vocab import write_json_atomic
from distill.student import load_student
from export.bundle import write_bundle


def _log(msg: str) -> None:
    print(f"[pocketrec export] {msg}", file=sys.stderr, flush=True)


def _ort_probs(path: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {k: arrays[k] for k in INPUT_NAMES})[0]
    return 1.0 / (1.0 + np.exp(-logits))


def export_run(run_dir: Path, out_dir: Path, preset: str = "avx2", force: bool = False) -> dict:
    from export.onnx import export_student
    from export.parity import parity_report
    from export.quantize import PRESETS, quantize
    from export.weights import save_numpy_weights

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "report.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no report.json (expected a finished distill run)")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass --force to replace it")
    cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    d = DataConfig(**cfg["data"])
    cohort = load_cohort(d.source, Path(d.path) if d.path else None, d.fmt)
    samples = build_samples(cohort, d.protocol, d.require_procedures)
    vocabs = MedVocabs.load(run_dir / "vocab")
    labels = list(vocabs.labels)
    arrays = encode_samples(samples, vocabs, TensorConfig(**cfg["tensors"]))
    y = arrays["y"]
    ddi_idx = ev.ddi_label_pairs(labels)

    per_fold, sizes = [], {}
    with tempfile.TemporaryDirectory(prefix="pocketrec-export-") as tmpname:
        tmp = Path(tmpname)
        for fold in range(d.folds):
            fdir = run_dir / f"fold{fold}"
            model, scfg = load_student(fdir / "student_kd.safetensors")
            chosen = json.loads((fdir / "metrics.json").read_text())["chosen_on_validation"]
            threshold = float(chosen["student_kd"])
            fp32, int8 = tmp / f"fold{fold}.fp32.onnx", tmp / f"fold{fold}.int8.onnx"
            info = export_student(model, scfg, fp32)
            qinfo = quantize(fp32, int8, PRESETS[preset])
            _tr, va, te = ev.fold_indices(samples, d.folds, fold, d.seed)
            test = {k: v[te] for k, v in arrays.items()}
            probs = _ort_probs(int8, test)
            per_fold.append(ev.medication_scores(y[te], probs, probs >= threshold, ddi_idx))
            if fold == 0:
                # every sample fold 0's student never trained on: validation and test patients
                held = np.concatenate([va, te])
                held_out = {k: v[held] for k, v in arrays.items()}
                parity = parity_report(model, fp32, int8, held_out, y[held], threshold, ddi_idx)
                shipped = (model, scfg, int8, threshold, info, qinfo)
                sizes = {"onnx_fp32": fp32.stat().st_size, "onnx_int8": int8.stat().st_size}
            _log(f"fold {fold + 1}/{d.folds}: int8 jaccard {per_fold[-1]['jaccard']:.4f}")

        report["models"]["student_int8"] = ev.summarize(per_fold)
        report["size_bytes"] = sizes
        report["export"] = {"preset": preset, "parity_fold0": parity}
        ev.write_report(report, run_dir)

        model, scfg, int8, threshold, info, qinfo = shipped
        weights = tmp / "weights.npz"
        save_numpy_weights(model, scfg, weights, dtype="float16")
        label_rows = [{"code": c, "name": codes.title(c)} for c in labels]
        index = set(labels)
        ddi = [[a, b] for a, b in sorted(codes.ddi_pairs()) if a in index and b in index]
        titles = {
            c: codes.title(c, cohort.titles)
            for vocab in (vocabs.diagnoses, vocabs.procedures)
            for c in vocab.tokens[2:]
        }
        vocab_json = {
            "diagnoses": vocabs.diagnoses.to_json(),
            "procedures": vocabs.procedures.to_json(),
            "medications": vocabs.medications.to_json(),
            "profile": vocabs.profile.to_json(),
        }
        write_bundle(
            out_dir,
            name=f"medication-{report['source']}",
            int8_model=int8,
            weights=weights,
            vocab=vocab_json,
            labels=label_rows,
            ddi=ddi,
            titles=titles,
            student_config=scfg.to_dict(),
            tensor_config=cfg["tensors"],
            threshold=threshold,
            model_info={
                "opset": info["opset"],
                "inputs": [i["name"] for i in info["inputs"]],
                "outputs": [o["name"] for o in info["outputs"]],
                "input_specs": info["inputs"],
                "output_specs": info["outputs"],
                "ops": info.get("ops"),
                "fp32_bytes": info.get("bytes"),
                "quantization": qinfo,
            },
            metrics=report["models"],
            params=report["params"],
            teacher=report["teacher"],
            data={
                "source": report["source"],
                "protocol": report["protocol"],
                "folds": report["folds"],
                "samples": report["samples"],
                "shipped_fold": 0,
            },
            parity=parity,
            weights_dtype="float16",
            force=force,
        )
    write_json_atomic(run_dir / "export.json", {"bundle": str(out_dir), "preset": preset})
    _log(f"bundle written to {out_dir}")
    return report
