"""A finished medication distill run -> int8 students for every fold -> `student_int8` -> the
bundle of fold 0's student.

The shipped student is fold 0's KD student: trained on the other folds' patients, so fold 0's
held-out (validation and test) patients are truly held out for the int8-vs-fp32 parity check.
Every fold's student is quantized too, so the `student_int8` row is measured the same way as the
run's other models. Each student is written as the compact graph of
`export.medication.compact` (fp32 for the parity reference; for the bundle, int8 in the form
asked: 8-bit weights restored to float when loaded, by default, or integer products per the
preset).

Export reads only the run folder (`distill.medication.export_inputs` lists what the run keeps
for it) and never writes into it: its results go to ``<bundle>.export.json`` beside the bundle
and into the bundle's manifest; `combined_report` merges them with the run's report, as
``pocketrec pipeline`` writes it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from contract.files import atomic_write_json
from contract.layout import INPUT_NAMES
from distill.data.tensors import MedVocabs
from distill.medication import evaluate as ev
from distill.medication.export_inputs import (
    Heldout,
    read_bundle_inputs,
    read_heldout,
    read_trained_ids,
)
from distill.medication.student import load_student
from distill.runs import read_config
from export.medication.bundle import write_bundle
from export.medication.prune import prune_student, prune_vocab, remap_arrays
from export.onnx import model_entry

__all__ = [
    "combined_report",
    "export_json_path",
    "export_run",
    "pipeline_report",
    "write_pipeline_report",
]

log = logging.getLogger(__name__)

# the numpy fallback's weights in the bundle: int8 tables (code embeddings, wide path) with a
# per-row scale, the rest float16 (export.medication.weights), to keep the bundle near 1 MB
WEIGHTS_DTYPE = "int8"


def export_json_path(bundle_dir: Path) -> Path:
    """Where the export of `bundle_dir` writes its results: ``<bundle_dir>.export.json``."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.with_name(bundle_dir.name + ".export.json")


def combined_report(report: dict, results: dict) -> dict:
    """The run's report with the export's additions: the `student_int8` row, `size_bytes`,
    `export` (int8 form, preset (None for the weights form), fold 0's parity) and `bundle`."""
    out = dict(report)
    out["models"] = {**report["models"], **results["models"]}
    out["size_bytes"] = results["size_bytes"]
    out["export"] = results["export"]
    if results.get("bundle"):
        out["bundle"] = results["bundle"]
    return out


def pipeline_report(run_dir: str | Path, bundle_dir: str | Path) -> dict:
    """The run's report.json combined with the export results beside `bundle_dir`."""
    path = export_json_path(Path(bundle_dir))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (export the run to {bundle_dir} first)")
    results = json.loads(path.read_text(encoding="utf-8"))
    return combined_report(_read_report(Path(run_dir)), results)


def write_pipeline_report(run_dir: str | Path, bundle_dir: str | Path, out_dir: str | Path) -> dict:
    """Write `pipeline_report` as ``out_dir/report.json`` and ``report.md``; returns it."""
    report = pipeline_report(run_dir, bundle_dir)
    ev.write_report(report, Path(out_dir))
    return report


def _ort_probs(path: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {k: arrays[k] for k in INPUT_NAMES})[0]
    return 1.0 / (1.0 + np.exp(-logits))


def _read_report(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no report.json (expected a finished distill run)")
    return json.loads(path.read_text(encoding="utf-8"))


def export_run(
    run_dir: Path,
    out_dir: Path,
    preset: str | None = None,
    force: bool = False,
    int8_form: str = "weights",
) -> dict:
    """Export the run at `run_dir` to the bundle `out_dir`, each student's int8 file in
    `int8_form` (`export.medication.compact.INT8_FORMS`); returns the combined report (the
    run's report plus `student_int8`, `size_bytes` and `export`). `preset` chooses the integer
    kernels of the "dynamic" form (default avx2); the "weights" form computes in float, so a
    preset given with it is refused rather than recorded as if it had been used."""
    from export.medication.compact import INT8_FORMS, export_compact
    from export.medication.parity import parity_report
    from export.medication.weights import save_numpy_weights
    from export.quantize import PRESETS

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    report = _read_report(run_dir)
    if int8_form not in INT8_FORMS:
        raise ValueError(
            f"unknown int8 form {int8_form!r}; expected one of {', '.join(INT8_FORMS)}"
        )
    if int8_form == "weights" and preset is not None:
        raise ValueError(
            f"preset {preset!r} chooses the integer kernels of the dynamic int8 form; the "
            "weights form computes in float (leave the preset out, or use --int8 dynamic)"
        )
    if int8_form == "dynamic":
        preset = preset or "avx2"
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass --force to replace it")
    cfg = read_config(run_dir)
    vocabs = MedVocabs.load(run_dir / "vocab")
    inputs = read_bundle_inputs(run_dir)
    ddi_idx = inputs.ddi_label_pairs()
    folds = int(report["folds"])

    per_fold, sizes = [], {}
    with tempfile.TemporaryDirectory(prefix="pocketrec-export-") as tmpname:
        tmp = Path(tmpname)
        for fold in range(folds):
            fdir = run_dir / f"fold{fold}"
            model, scfg = load_student(fdir / "student_kd.safetensors")
            chosen = json.loads((fdir / "metrics.json").read_text())["chosen_on_validation"]
            threshold = float(chosen["student_kd"])
            held = read_heldout(fdir)
            trained = read_trained_ids(fdir)
            pruning = None
            if trained is not None:
                # only the codes this fold's students trained on; the others read as <unk>,
                # in the bundle as in the held-out arrays scored here (export.medication.prune)
                model, scfg, pruning = prune_student(model, scfg, trained)
                held = Heldout(remap_arrays(held.arrays, pruning), held.sample_ids,
                               held.n_validation)  # fmt: skip
            fp32, int8 = tmp / f"fold{fold}.fp32.onnx", tmp / f"fold{fold}.int8.onnx"
            info, qinfo = export_compact(model, scfg, fp32, int8, preset, int8_form)
            test = held.test
            probs = _ort_probs(int8, test)
            per_fold.append(ev.medication_scores(test["y"], probs, probs >= threshold, ddi_idx))
            if fold == 0:
                # every sample fold 0's student never trained on: validation and test patients
                held_out = held.arrays
                parity = parity_report(model, fp32, int8, held_out, held_out["y"], threshold,
                                       ddi_idx, int8_form=int8_form)  # fmt: skip
                shipped = (model, scfg, int8, threshold, info, qinfo, pruning)
                sizes = {"onnx_fp32": fp32.stat().st_size, "onnx_int8": int8.stat().st_size}
            log.info(f"fold {fold + 1}/{folds}: int8 jaccard {per_fold[-1]['jaccard']:.4f}")

        results = {
            "domain": "medication",
            "run": str(run_dir),
            "bundle": str(out_dir),
            "models": {"student_int8": ev.summarize(per_fold)},
            "size_bytes": sizes,
            "export": {"preset": preset, "int8_form": int8_form, "parity_fold0": parity},
        }
        if shipped[-1] is not None:
            results["export"]["vocabulary_fold0"] = shipped[-1].summary()
        combined = combined_report(report, results)

        model, scfg, int8, threshold, info, qinfo, pruning = shipped
        weights = tmp / "weights.npz"
        save_numpy_weights(model, scfg, weights, dtype=WEIGHTS_DTYPE)
        vocab_json = {
            "diagnoses": vocabs.diagnoses.to_json(),
            "procedures": vocabs.procedures.to_json(),
            "medications": vocabs.medications.to_json(),
            "profile": vocabs.profile.to_json(),
        }
        if pruning is not None:
            for kind in ("diagnoses", "procedures"):
                vocab_json[kind] = prune_vocab(vocab_json[kind], pruning, kind)
        write_bundle(
            out_dir,
            name=f"medication-{report['source']}",
            int8_model=int8,
            weights=weights,
            vocab=vocab_json,
            labels=inputs.labels,
            ddi=inputs.ddi,
            titles=inputs.titles,
            student_config=scfg.to_dict(),
            tensor_config=cfg["tensors"],
            threshold=threshold,
            model_info=model_entry(info, qinfo),
            metrics=combined["models"],
            # the shipped student's own count: its vocabulary is cut to what it trained on
            params={**report["params"], "student": sum(p.numel() for p in model.parameters())},
            teacher=report["teacher"],
            data={
                "source": report["source"],
                "protocol": report["protocol"],
                "folds": report["folds"],
                "samples": report["samples"],
                "shipped_fold": 0,
                **({"vocabulary": pruning.summary()} if pruning is not None else {}),
            },
            parity=parity,
            weights_dtype=WEIGHTS_DTYPE,
            force=force,
        )
    atomic_write_json(export_json_path(out_dir), results)
    log.info(f"bundle written to {out_dir}")
    return combined
