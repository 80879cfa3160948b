"""A small but realistic medication bundle for the app's tests (state and browser).

Same recipe as tests/test_runtime.py (a random `LeaderStudent` exported to fp32 ONNX, its weights
as `.npz`, JSON side files hashed into the manifest), but with real ICD-9 titles, WHO ATC3 names,
a profile vocabulary with the app's fields and metrics in the manifest, so that type-ahead by
title words, the model card and the profile form have something to show.

This module is on the training side of the dependency wall (torch, distill, export); only tests
import it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

MODEL_FILE = "model.int8.onnx"

DIAGNOSES = {
    "icd9cm:4019": "Unspecified essential hypertension",
    "icd9cm:42731": "Atrial fibrillation",
    "icd9cm:4280": "Congestive heart failure, unspecified",
    "icd9cm:25000": "Diabetes mellitus without mention of complication, type II",
    "icd9cm:5849": "Acute kidney failure, unspecified",
    "icd9cm:2724": "Other and unspecified hyperlipidemia",
    "icd9cm:41401": "Coronary atherosclerosis of native coronary artery",
    "icd9cm:486": "Pneumonia, organism unspecified",
    "icd9cm:5990": "Urinary tract infection, site not specified",
    "icd9cm:2449": "Unspecified acquired hypothyroidism",
    "icd9cm:53081": "Esophageal reflux",
    "icd9cm:311": "Depressive disorder, not elsewhere classified",
    "icd9cm:40390": "Hypertensive chronic kidney disease, unspecified",
    "icd9cm:V5861": "Long-term (current) use of anticoagulants",
    "icd9cm:2859": "Anemia, unspecified",
    "icd9cm:496": "Chronic airway obstruction, not elsewhere classified",
    "icd9cm:3051": "Tobacco use disorder",
    "icd9cm:2762": "Acidosis",
    "icd9cm:78552": "Septic shock",
    "icd9cm:99592": "Severe sepsis",
    "icd9cm:4240": "Mitral valve disorders",
    "icd9cm:V4581": "Aortocoronary bypass status",
}
PROCEDURES = {
    "icd9pcs:3893": "Venous catheterization, not elsewhere classified",
    "icd9pcs:9604": "Insertion of endotracheal tube",
    "icd9pcs:9671": "Continuous invasive mechanical ventilation for less than 96 hours",
    "icd9pcs:3961": "Extracorporeal circulation auxiliary to open heart surgery",
    "icd9pcs:8856": "Coronary arteriography using two catheters",
    "icd9pcs:3722": "Left heart cardiac catheterization",
    "icd9pcs:9904": "Transfusion of packed cells",
    "icd9pcs:3995": "Hemodialysis",
}
DRUGS = {
    "A02B": "Drugs for peptic ulcer and gastro-oesophageal reflux disease (GORD)",
    "B01A": "Antithrombotic agents",
    "C07A": "Beta blocking agents",
    "C09A": "ACE inhibitors, plain",
    "C10A": "Lipid modifying agents, plain",
    "N02B": "Other analgesics and antipyretics",
    "A10A": "Insulins and analogues",
    "C03C": "High-ceiling diuretics",
    "N05C": "Hypnotics and sedatives",
    "J01D": "Other beta-lactam antibacterials",
    "H03A": "Thyroid preparations",
    "A06A": "Drugs for constipation",
    "N06A": "Antidepressants",
    "C01A": "Cardiac glycosides",
    "M01A": "Antiinflammatory and antirheumatic products, non-steroids",
    "A12B": "Potassium",
}
# class-level interactions in the spirit of GAMENet's TWOSIDES pairs; dense enough that most
# visits get at least one warning among their suggestions
DDI = [
    ["B01A", "M01A"],
    ["B01A", "N06A"],
    ["B01A", "A02B"],
    ["B01A", "C10A"],
    ["C01A", "C03C"],
    ["C01A", "C07A"],
    ["C09A", "A12B"],
    ["C09A", "C03C"],
    ["N05C", "N02B"],
    ["N06A", "N05C"],
    ["A10A", "C07A"],
    ["J01D", "B01A"],
    ["H03A", "B01A"],
    ["A06A", "A12B"],
    ["M01A", "C09A"],
    ["M01A", "C03C"],
]
PROFILE = {
    "gender": ["F", "M"],
    "age_band": ["40-49", "50-59", "60-69", "70-79", "80-89"],
    "insurance": ["Medicare", "Medicaid", "Other"],
    "language": ["ENGLISH", "?"],
    "marital_status": ["MARRIED", "SINGLE", "WIDOWED"],
    "race": ["WHITE", "BLACK/AFRICAN AMERICAN", "UNKNOWN"],
    "religion": ["CATHOLIC", "NOT SPECIFIED"],
}
TENSOR_CONFIG = {
    "max_visits": 6,
    "max_diagnoses": 8,
    "max_procedures": 4,
    "max_medications": 8,
    "max_profile": 7,
}
METRICS = {
    "student_kd": {"jaccard": 0.41, "jaccard_std": 0.02, "f1": 0.56, "f1_std": 0.02,
                   "prauc": 0.63, "prauc_std": 0.03, "ddi_rate": 0.07, "ddi_rate_std": 0.01,
                   "avg_drugs": 11.2, "avg_drugs_std": 0.8},
    "student_nokd": {"jaccard": 0.39, "jaccard_std": 0.02, "f1": 0.54, "f1_std": 0.03,
                     "prauc": 0.61, "prauc_std": 0.03, "ddi_rate": 0.07, "ddi_rate_std": 0.01,
                     "avg_drugs": 10.9, "avg_drugs_std": 0.9},
}  # fmt: skip
CARD = """# Model card: tiny test bundle

## What it is
A randomly initialised LEADER-style student used by the app's tests. Its suggestions mean
nothing clinically.

## Metrics

| model | jaccard | f1 |
|---|---|---|
| student_kd | 0.41 | 0.56 |
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tiny_bundle(folder: Path, *, seed: int = 7, threshold: float = 0.7) -> Path:
    """Write a verified bundle into `folder` (created) and return it."""
    import torch
    from torch.export import Dim

    from contract.bundle import TITLES_FILE
    from contract.layout import INPUT_NAMES
    from distill.data import tensors as dt
    from distill.data.vocab import Vocab
    from distill.medication.student import LeaderStudent, StudentConfig
    from export.medication.weights import save_numpy_weights

    folder = Path(folder)
    folder.mkdir(parents=True)
    profile_tokens = [f"{k}={v}" for k, values in PROFILE.items() for v in values]
    vocabs = dt.MedVocabs(
        diagnoses=Vocab(("<pad>", "<unk>", *DIAGNOSES)),
        procedures=Vocab(("<pad>", "<unk>", *PROCEDURES)),
        medications=Vocab(("<pad>", "<unk>", *DRUGS)),
        profile=Vocab(("<pad>", "<unk>", *profile_tokens)),
    )
    cfg = StudentConfig.from_vocabs(
        vocabs, dim=32, heads=4, visit_layers=2, teacher_dim=16, max_visits=6, repeat_head=True
    )
    torch.manual_seed(seed)
    model = LeaderStudent(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.startswith("repeat_") else 0.22
            p.add_(torch.randn_like(p) * scale)

    tc = TENSOR_CONFIG
    rng = np.random.default_rng(seed)
    b, v = 2, 3
    example = {
        "dx": rng.integers(2, cfg.n_diagnoses, (b, v, tc["max_diagnoses"])),
        "px": rng.integers(0, cfg.n_procedures, (b, v, tc["max_procedures"])),
        "med": rng.integers(0, cfg.n_medications, (b, v, tc["max_medications"])),
        "visit_mask": np.ones((b, v), dtype=np.float32),
        "profile": rng.integers(0, cfg.n_profile, (b, tc["max_profile"])),
    }
    batch, visits = Dim("batch"), Dim("visits")
    onnx_path = folder / MODEL_FILE
    torch.onnx.export(
        model,
        tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES),
        str(onnx_path),
        dynamo=True,
        external_data=False,
        dynamic_shapes=(
            {0: batch, 1: visits, 2: Dim("n_dx")},
            {0: batch, 1: visits, 2: Dim("n_px")},
            {0: batch, 1: visits, 2: Dim("n_med")},
            {0: batch, 1: visits},
            {0: batch, 1: Dim("n_profile")},
        ),
        input_names=list(INPUT_NAMES),
        output_names=["logits", "features"],
        verbose=False,
    )
    save_numpy_weights(model, cfg, folder / "weights.npz")
    side = {
        "vocab.json": {
            k: getattr(vocabs, k).to_json()
            for k in ("diagnoses", "procedures", "medications", "profile")
        },
        "labels.json": [{"code": c, "name": DRUGS[c]} for c in vocabs.labels],
        "ddi.json": DDI,
    }
    for name, obj in side.items():
        (folder / name).write_text(json.dumps(obj, indent=1), encoding="utf-8")
    titles = json.dumps({**DIAGNOSES, **PROCEDURES}, ensure_ascii=False).encode("utf-8")
    if TITLES_FILE.endswith(".gz"):
        titles = gzip.compress(titles, mtime=0)
    (folder / TITLES_FILE).write_bytes(titles)
    (folder / "card.md").write_text(CARD, encoding="utf-8")
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir())}
    manifest = {
        "format": "pocketrec-bundle/1",
        "domain": "medication",
        "name": "tiny test bundle",
        "created": "2025-01-01T00:00:00+00:00",
        "model": {
            "file": MODEL_FILE,
            "inputs": list(INPUT_NAMES),
            "outputs": ["logits", "features"],
            "opset": 18,
            "quantization": {"name": "none (fp32 test model)"},
        },
        "numpy_weights": "weights.npz",
        "student_config": cfg.to_dict(),
        "tensor_config": dict(tc),
        "threshold": threshold,
        "files": files,
        "vocab_sha256": files["vocab.json"],
        "metrics": METRICS,
        "teacher": {},
        "data": {"source": "synthetic"},
        "parity": {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return folder
