"""The bundle: the one directory the app needs, every file hash-checked by the manifest.

```
manifest.json  model.int8.onnx  weights.npz  vocab.json  labels.json  ddi.json  titles.json.gz
card.md
```
`weights.npz` carries the student (int8 tables + float16, see `export.medication.weights`) for the
numpy fallback of builds without onnxruntime.
The bundle is written into a temporary sibling directory and renamed into place, so a reader
never sees half a bundle.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from pathlib import Path

from contract.bundle import (
    BUNDLE_FORMAT,
    CARD_FILE,
    DDI_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TITLES_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
)
from contract.files import json_text, sha256_file, staging_dir


def write_json(path: Path, obj, compact: bool = True) -> None:
    # compact: the bundle is sized for devices; the manifest stays readable
    path.write_text(json_text(obj, compact=compact), encoding="utf-8")


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "an unknown number of"


def model_card(manifest: dict, labels: list[dict]) -> str:
    """A short model card: what it is, on what data, how good, what it must not be used for."""
    m = manifest
    metrics = m.get("metrics", {})
    lines = [
        f"# Model card: {m['name']}",
        "",
        "## What it is",
        f"A LEADER-style student ({_count(m['params'].get('student'))} parameters) distilled "
        f"from the teacher `{m['teacher'].get('backbone')}` ({_count(m['params'].get('teacher'))} "
        "parameters). Given a visit's diagnoses and procedures and the patient's earlier visits, "
        f"it scores {len(labels)} ATC level-3 drug classes; classes at or above the threshold "
        f"{m['threshold']:.2f} (chosen on non-test patients) are suggested.",
        "",
        "## Intended use",
        "Decision support for clinicians, offline: a ranked list to check, with drug-drug "
        "interaction warnings. It is not a prescription, does not know doses, allergies, renal "
        "function or current medication lists outside the entered history, and must not be "
        "used without a clinician's judgement.",
        "",
        "## Data",
        f"Source `{m['data'].get('source')}`, protocol `{m['data'].get('protocol')}`, "
        f"{m['data'].get('samples')} samples; the shipped student is fold 0's, trained on the "
        "patients outside fold 0. Drug classes come from NDC/GSN -> ATC3 mappings; unmapped "
        "prescription rows (flushes, diluents) were left out." + _vocabulary_line(m),
        "",
        "## Metrics (k-fold by patient, mean ± std over folds; test patients only)",
        "",
        "| model | jaccard | f1 | prauc | ddi_rate | avg_drugs |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in metrics.items():
        cells = [
            f"{v[k]:.4f} ± {v.get(k + '_std', 0):.4f}"
            for k in ("jaccard", "f1", "prauc", "ddi_rate", "avg_drugs")
            if k in v
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    parity = m.get("parity", {})
    quant = m["model"].get("quantization", {})
    if quant.get("form") == "weights":
        how = "int8 weights (8-bit in the file, restored to float when the session is made)"
    else:
        how = f"int8 quantisation preset `{quant.get('name', '?')}`"
    lines += [
        "",
        "## Export",
        f"ONNX opset {m['model'].get('opset')}, {how}. Parity on held-out samples: "
        + json.dumps(parity.get("summary", parity), sort_keys=True),
        "",
        "## Known limits",
        "- Trained on a 100-patient ICU demo: small, one hospital, not representative.",
        "- On such data the `previous_visit` baseline is hard to beat; compare before trusting. "
        "Simple rules that also use earlier visits and similar visits come close to this "
        "student on validation patients (see the README).",
        "- What it knows is what its training patients' prescriptions show; a code they "
        "never had is unknown to it (its ICD category may still count) and moves nothing.",
        "- The DDI graph is GAMENet's TWOSIDES-derived ATC3 pairs: incomplete, class-level.",
        "- ATC names are the WHO index's; ICD titles come from the MIMIC dictionaries.",
        "",
    ]
    return "\n".join(lines)


def _vocabulary_line(m: dict) -> str:
    vocab = m.get("data", {}).get("vocabulary")
    if not vocab:
        return ""
    parts = [f"{v['kept']:,} of {v['of']:,} {k}" for k, v in vocab.items()]
    return (" The vocabulary keeps the codes fold 0's training patients had (" + ", ".join(parts)
            + ", counting <pad> and <unk>); any other code is reported unknown.")  # fmt: skip


def write_bundle(
    out_dir: Path,
    *,
    name: str,
    int8_model: Path,
    weights: Path,
    vocab: dict,
    labels: list[dict],
    ddi: list[list[str]],
    titles: dict[str, str],
    student_config: dict,
    tensor_config: dict,
    threshold: float,
    model_info: dict,
    metrics: dict,
    params: dict,
    teacher: dict,
    data: dict,
    parity: dict,
    weights_dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Write a complete bundle to `out_dir` (replacing it only with `force`)."""
    out_dir = Path(out_dir)
    with staging_dir(out_dir, force=force) as tmp:
        shutil.copyfile(int8_model, tmp / MODEL_FILE)
        shutil.copyfile(weights, tmp / WEIGHTS_FILE)
        write_json(tmp / VOCAB_FILE, vocab)
        write_json(tmp / LABELS_FILE, labels)
        write_json(tmp / DDI_FILE, ddi)
        (tmp / TITLES_FILE).write_bytes(
            gzip.compress(json.dumps(titles, separators=(",", ":")).encode("utf-8"), mtime=0)
        )
        manifest = {
            "format": BUNDLE_FORMAT,
            "domain": "medication",
            "name": name,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": {**model_info, "file": MODEL_FILE},
            "numpy_weights": WEIGHTS_FILE,
            "numpy_weights_dtype": weights_dtype,
            "student_config": student_config,
            "tensor_config": tensor_config,
            "threshold": threshold,
            "metrics": metrics,
            "params": params,
            "teacher": teacher,
            "data": data,
            "parity": parity,
        }
        (tmp / CARD_FILE).write_text(model_card(manifest, labels), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest["files"] = {f: sha256_file(tmp / f) for f in files}
        manifest["vocab_sha256"] = manifest["files"][VOCAB_FILE]
        write_json(tmp / MANIFEST_FILE, manifest, compact=False)
    return out_dir
