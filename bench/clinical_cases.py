"""Textbook cases, tried on a bundle as a clinician would try them in the app.

Each case is a presentation written from clinical knowledge (NOT picked from the demo data):
its diagnosis codes in ICD-9-CM and in ICD-10-CM (procedures where they are typical), a short
profile, and the ATC level-3 drug classes a clinician expects for it, with the reason. Each case
runs twice, once per code system, through the app's own runtime (`app.medication`: the bundle
loader, the `Recommender`, and `VisitState.explain` for the "why", the leave-one-out basis the
visit screen shows). Per run it reports the rank of each expected class among all classes, the
hits in the top 10, the probability, the rank the class has with no input at all (the base
rate: a class that ranks high without input says nothing about the case), which codes the model
does not know (and whether their ICD category is known), and the inputs that move the score.

A report to read, not a target to tune on: the cases and their expectations were fixed before
looking at any model's answers, and no model choice may be made on them.

Usage: python bench/clinical_cases.py [--bundle assets/bundles/medication-demo]
       [--out bench/results] [--backend auto|onnxruntime|numpy]
Writes <out>/clinical_cases.json and <out>/clinical_cases.md, prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.files import atomic_write_json, atomic_write_text  # noqa: E402
from contract.layout import code_ancestors  # noqa: E402

DEFAULT_BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"
TOP_K = 10


@dataclass(frozen=True)
class Case:
    name: str
    expected: tuple[str, ...]  # ATC3 classes, the most specific expectation first
    reason: str  # why a clinician expects them
    icd9: tuple[str, ...]  # diagnoses, primary first
    icd10: tuple[str, ...]
    px9: tuple[str, ...] = ()  # procedures, where typical
    px10: tuple[str, ...] = ()
    profile: dict[str, str] = field(default_factory=dict)  # gender, age_band

    def variants(self) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        return [("ICD-9", self.icd9, self.px9), ("ICD-10", self.icd10, self.px10)]


def _p(gender: str, age: str) -> dict[str, str]:
    return {"gender": gender, "age_band": age}


CASES: tuple[Case, ...] = (
    Case(
        "Diabetic ketoacidosis",
        ("A10A", "A12B"),
        "insulin infusion closes the anion gap; insulin drives potassium into cells, so "
        "potassium is replaced",
        ("icd9cm:25013",),  # DM with ketoacidosis, type I, uncontrolled
        ("icd10cm:E1010",),  # type 1 DM with ketoacidosis without coma
        profile=_p("M", "20-29"),
    ),
    Case(
        "Acute systolic heart failure",
        ("C03C", "C09A", "C07A", "C03D"),
        "IV loop diuretic for congestion; ACE inhibitor, beta blocker and mineralocorticoid "
        "antagonist are the guideline therapy of reduced ejection fraction",
        ("icd9cm:42821",),
        ("icd10cm:I5021",),
        profile=_p("M", "70-79"),
    ),
    Case(
        "COPD exacerbation",
        ("R03A", "R03B", "H02A"),
        "nebulised short-acting beta agonist and ipratropium; systemic corticosteroid "
        "shortens the exacerbation (GOLD)",
        ("icd9cm:49121",),  # obstructive chronic bronchitis with acute exacerbation
        ("icd10cm:J441",),
        profile=_p("M", "60-69"),
    ),
    Case(
        "Major depressive episode",
        ("N06A",),
        "an SSRI/SNRI or other antidepressant is first-line drug treatment",
        ("icd9cm:29620",),
        ("icd10cm:F329",),
        profile=_p("F", "40-49"),
    ),
    Case(
        "Urinary tract infection",
        ("J01M", "J01D", "J01E", "J01X"),
        "ciprofloxacin, ceftriaxone/cephalexin, trimethoprim-sulfamethoxazole, nitrofurantoin "
        "or fosfomycin (J01X)",
        ("icd9cm:5990",),
        ("icd10cm:N390",),
        profile=_p("F", "30-39"),
    ),
    Case(
        "Community-acquired pneumonia",
        ("J01D", "J01F", "J01M"),
        "ceftriaxone plus azithromycin, or a respiratory fluoroquinolone (IDSA/ATS, inpatient)",
        ("icd9cm:486",),
        ("icd10cm:J189",),
        profile=_p("M", "60-69"),
    ),
    Case(
        "Atrial fibrillation",
        ("B01A", "C07A", "C08D", "C01B"),
        "anticoagulation for stroke prevention; rate control with a beta blocker or diltiazem; "
        "amiodarone for rhythm control",
        ("icd9cm:42731",),
        ("icd10cm:I4891",),
        profile=_p("M", "70-79"),
    ),
    Case(
        "Septic shock",
        ("C01C", "J01X", "J01D", "J01C"),
        "norepinephrine; empirical vancomycin plus an anti-pseudomonal beta-lactam (cefepime, "
        "meropenem or piperacillin-tazobactam) within the first hour",
        ("icd9cm:0389", "icd9cm:78552"),
        ("icd10cm:A419", "icd10cm:R6521"),
        px9=("icd9pcs:3893",),  # central venous catheter for vasopressors
        px10=("icd10pcs:02HV33Z",),
        profile=_p("M", "60-69"),
    ),
    Case(
        "Hypothyroidism",
        ("H03A",),
        "levothyroxine replacement",
        ("icd9cm:2449",),
        ("icd10cm:E039",),
        profile=_p("F", "50-59"),
    ),
    Case(
        "Epilepsy",
        ("N03A",),
        "maintenance antiepileptic (levetiracetam, valproate, lamotrigine)",
        ("icd9cm:34590",),
        ("icd10cm:G40909",),
        profile=_p("M", "30-39"),
    ),
    Case(
        "Asthma exacerbation",
        ("R03A", "H02A", "R03B"),
        "salbutamol nebs, systemic corticosteroid, ipratropium in severe attacks (GINA)",
        ("icd9cm:49392",),
        ("icd10cm:J45901",),
        profile=_p("F", "20-29"),
    ),
    Case(
        "Bleeding duodenal ulcer",
        ("A02B",),
        "high-dose IV proton pump inhibitor after endoscopic haemostasis",
        ("icd9cm:53240",),
        ("icd10cm:K264",),
        px9=("icd9pcs:4513", "icd9pcs:9904"),  # upper endoscopy, red cell transfusion
        px10=("icd10pcs:0DJ08ZZ", "icd10pcs:30233N1"),
        profile=_p("M", "60-69"),
    ),
    Case(
        "Essential hypertension",
        ("C09A", "C08C", "C09C", "C03A"),
        "ACE inhibitor, dihydropyridine calcium channel blocker, ARB or thiazide (first-line)",
        ("icd9cm:4019",),
        ("icd10cm:I10",),
        profile=_p("F", "60-69"),
    ),
    Case(
        "Hyperlipidaemia",
        ("C10A",),
        "a statin",
        ("icd9cm:2724",),
        ("icd10cm:E785",),
        profile=_p("M", "50-59"),
    ),
    Case(
        "Gout flare",
        ("M04A", "M01A", "H02A"),
        "colchicine (and later allopurinol), an NSAID, or a corticosteroid",
        ("icd9cm:2749",),
        ("icd10cm:M109",),
        profile=_p("M", "50-59"),
    ),
    Case(
        "Parkinson's disease",
        ("N04B",),
        "levodopa/carbidopa or a dopamine agonist",
        ("icd9cm:3320",),
        ("icd10cm:G20",),
        profile=_p("M", "70-79"),
    ),
    Case(
        "Alcohol withdrawal",
        ("N05B", "A11D", "B03B"),
        "benzodiazepine (chlordiazepoxide, lorazepam) by symptom score; thiamine against "
        "Wernicke's; folic acid",
        ("icd9cm:29181", "icd9cm:30390"),
        ("icd10cm:F10239",),
        profile=_p("M", "40-49"),
    ),
    Case(
        "Schizophrenia",
        ("N05A",),
        "an antipsychotic",
        ("icd9cm:29590",),
        ("icd10cm:F209",),
        profile=_p("M", "20-29"),
    ),
    Case(
        "Opioid overdose",
        ("V03A", "N07B"),
        "naloxone (an antidote, V03AB); buprenorphine or methadone for the opioid use disorder",
        ("icd9cm:96509", "icd9cm:E8502"),
        ("icd10cm:T402X1A",),
        profile=_p("M", "30-39"),
    ),
    Case(
        "Iron deficiency anaemia",
        ("B03A",),
        "oral or IV iron",
        ("icd9cm:2809",),
        ("icd10cm:D509",),
        profile=_p("F", "30-39"),
    ),
    Case(
        "Deep vein thrombosis",
        ("B01A",),
        "anticoagulation: heparin, then a DOAC or warfarin",
        ("icd9cm:45340",),
        ("icd10cm:I82409",),
        profile=_p("F", "50-59"),
    ),
    Case(
        "Pulmonary embolism",
        ("B01A",),
        "anticoagulation: heparin, then a DOAC or warfarin",
        ("icd9cm:41519",),
        ("icd10cm:I2699",),
        profile=_p("M", "50-59"),
    ),
    Case(
        "Ischaemic stroke",
        ("B01A", "C10A"),
        "aspirin (or dual antiplatelet) and a high-intensity statin for secondary prevention",
        ("icd9cm:43491",),
        ("icd10cm:I639",),
        profile=_p("M", "70-79"),
    ),
    Case(
        "NSTEMI with coronary stent",
        ("B01A", "C10A", "C07A", "C01D", "C09A"),
        "aspirin + P2Y12 inhibitor + heparin, high-intensity statin, beta blocker, nitrate for "
        "angina, ACE inhibitor",
        ("icd9cm:41071",),
        ("icd10cm:I214",),
        px9=("icd9pcs:0066", "icd9pcs:3607"),  # PTCA, drug-eluting stent
        px10=("icd10pcs:027034Z",),
        profile=_p("M", "60-69"),
    ),
    Case(
        "Clostridioides difficile colitis",
        ("A07A", "J01X"),
        "oral vancomycin or fidaxomicin (A07AA); IV metronidazole (J01XD) added when fulminant",
        ("icd9cm:00845",),
        ("icd10cm:A0472",),
        profile=_p("F", "70-79"),
    ),
    Case(
        "Hepatic encephalopathy",
        ("A06A", "A07A"),
        "lactulose (A06AD) and rifaximin (A07AA)",
        ("icd9cm:5722",),
        ("icd10cm:K7290",),  # hepatic failure without coma: the pre-2023 code for it
        profile=_p("M", "50-59"),
    ),
    Case(
        "Hip fracture, surgically fixed",
        ("N02A", "N02B", "B01A"),
        "opioid and paracetamol analgesia; thromboprophylaxis after hip fracture surgery",
        ("icd9cm:82020",),
        ("icd10cm:S72001A",),
        px9=("icd9pcs:7915",),  # closed reduction with internal fixation, femur
        px10=("icd10pcs:0QS634Z",),
        profile=_p("F", "80-89"),
    ),
    Case(
        "Benign prostatic hyperplasia with obstruction",
        ("G04C",),
        "an alpha blocker (tamsulosin) or 5-alpha reductase inhibitor",
        ("icd9cm:60001",),
        ("icd10cm:N401",),
        profile=_p("M", "70-79"),
    ),
    Case(
        "Primary open-angle glaucoma",
        ("S01E",),
        "prostaglandin analogue or timolol eye drops",
        ("icd9cm:36511",),
        ("icd10cm:H401190",),
        profile=_p("F", "70-79"),
    ),
    Case(
        "HIV disease",
        ("J05A", "J01E"),
        "antiretroviral therapy; trimethoprim-sulfamethoxazole as Pneumocystis prophylaxis",
        ("icd9cm:042",),
        ("icd10cm:B20",),
        profile=_p("M", "30-39"),
    ),
    Case(
        "Graves' hyperthyroidism",
        ("H03B", "C07A"),
        "methimazole; a beta blocker for the adrenergic symptoms",
        ("icd9cm:24200",),
        ("icd10cm:E0500",),
        profile=_p("F", "30-39"),
    ),
    Case(
        "Alzheimer's dementia",
        ("N06D",),
        "a cholinesterase inhibitor (donepezil) or memantine",
        ("icd9cm:3310",),
        ("icd10cm:G309",),
        profile=_p("F", "80-89"),
    ),
    Case(
        "Type 2 diabetes",
        ("A10B", "A10A"),
        "metformin and other oral agents; insulin when needed (inpatients: insulin)",
        ("icd9cm:25000",),
        ("icd10cm:E119",),
        profile=_p("M", "50-59"),
    ),
    Case(
        "Hypokalaemia",
        ("A12B",),
        "potassium chloride replacement",
        ("icd9cm:2768",),
        ("icd10cm:E876",),
        profile=_p("F", "60-69"),
    ),
    Case(
        "Herpes zoster",
        ("J05A",),
        "valaciclovir or aciclovir",
        ("icd9cm:0539",),
        ("icd10cm:B029",),
        profile=_p("F", "70-79"),
    ),
    Case(
        "Osteoporosis",
        ("M05B", "A12A", "A11C"),
        "a bisphosphonate with calcium and vitamin D",
        ("icd9cm:73300",),
        ("icd10cm:M810",),
        profile=_p("F", "70-79"),
    ),
    Case(
        "Generalised anxiety disorder",
        ("N06A", "N05B"),
        "an SSRI/SNRI first-line; a benzodiazepine short term",
        ("icd9cm:30002",),
        ("icd10cm:F411",),
        profile=_p("F", "30-39"),
    ),
    Case(
        "Insomnia",
        ("N05C",),
        "a hypnotic (zolpidem, melatonin) after sleep hygiene",
        ("icd9cm:78052",),
        ("icd10cm:G4700",),
        profile=_p("F", "50-59"),
    ),
)


# --------------------------------------------------------------------------------------------
# checks against the shipped dictionaries and the bundle


def check_cases(cases: Sequence[Case], labels: Sequence[str] | None = None) -> list[str]:
    """Problems with the case list: codes missing from the shipped ICD dictionaries, classes
    that are not ATC level-3 codes, classes that are not among `labels` (when given)."""
    from distill.data.codes import atc_names, icd_titles

    titles, atc = icd_titles(), atc_names()
    problems = []
    for c in cases:
        for code in (*c.icd9, *c.icd10, *c.px9, *c.px10):
            if code not in titles:
                problems.append(f"{c.name}: {code} is not in assets/codes/icd_titles.csv.gz")
        for code in c.icd9 + c.px9:
            if not code.startswith(("icd9cm:", "icd9pcs:")):
                problems.append(f"{c.name}: {code} is listed as ICD-9 but is not")
        for code in c.icd10 + c.px10:
            if not code.startswith(("icd10cm:", "icd10pcs:")):
                problems.append(f"{c.name}: {code} is listed as ICD-10 but is not")
        for cls in c.expected:
            if len(cls) != 4 or cls not in atc:
                problems.append(f"{c.name}: {cls} is not an ATC level-3 class")
            elif labels is not None and cls not in labels:
                problems.append(f"{c.name}: {cls} is not one of the bundle's labels")
    names = [c.name for c in cases]
    problems += [
        f"case {n!r} appears twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    return problems


# --------------------------------------------------------------------------------------------
# running


def _ranks(probs: np.ndarray) -> np.ndarray:
    """1-based rank of every class, ties in label order (as `Recommender.recommend`)."""
    order = np.argsort(-probs, kind="stable")
    ranks = np.empty(len(probs), dtype=np.int64)
    ranks[order] = np.arange(1, len(probs) + 1)
    return ranks


def _known_through_category(bundle, code: str) -> bool:
    kind = "procedures" if code.split(":", 1)[0].endswith("pcs") else "diagnoses"
    return any(a in bundle.vocabs[kind] for a in code_ancestors(code))


def run_case(bundle, recommender, case: Case, base_probs: np.ndarray) -> list[dict[str, Any]]:
    """Both variants of `case` through the app's visit state: ranks, top 10, unknown codes,
    the leave-one-out "why" of each expected class."""
    from app.medication.visit import VisitState

    ancestors_on = bool(getattr(bundle.tensor_config, "ancestors", False))
    base_ranks = _ranks(base_probs)
    out = []
    for system, dx, px in case.variants():
        state = VisitState(bundle, recommender, None, {"id": f"case:{case.name}", **case.profile})
        for code in dx:
            state.add_code("diagnoses", code)
        for code in px:
            state.add_code("procedures", code)
        result = state.suggest()
        rec = state.recommendation
        probs = np.zeros(len(bundle.label_codes))
        for d in rec.drugs:
            probs[bundle.label_index[d["code"]]] = d["probability"]
        ranks = _ranks(probs)
        # a visit the model reads nothing of gets no suggestions in the app: no hit either
        shown = result.visit_read
        top = [d["code"] for d in rec.drugs[:TOP_K]] if shown else []
        expected = []
        for cls in case.expected:
            if cls not in bundle.label_index:
                expected.append({"code": cls, "label": False})
                continue
            i = bundle.label_index[cls]
            explain = state.explain(cls) if hasattr(state, "explain") else None
            items = explain.items if explain is not None else state.basis(cls)
            expected.append(
                {
                    "code": cls,
                    "name": bundle.label_names[i],
                    "label": True,
                    "rank": int(ranks[i]),
                    "probability": float(probs[i]),
                    "in_top10": bool(shown and ranks[i] <= TOP_K),
                    "suggested": bool(probs[i] >= bundle.threshold),
                    "rank_without_input": int(base_ranks[i]),
                    "probability_without_input": float(base_probs[i]),
                    "why": [
                        {"kind": b.kind, "code": b.code, "drop": b.drop, "without": b.without}
                        for b in items
                    ],
                }
            )
        unknown = list(result.unknown_codes)
        out.append(
            {
                "case": case.name,
                "system": system,
                "diagnoses": list(dx),
                "procedures": list(px),
                "profile": case.profile,
                "reason": case.reason,
                "expected": expected,
                "hits_top10": sum(1 for e in expected if e.get("in_top10")),
                "n_expected": len(expected),
                "top10": top,
                "n_codes": len(dx) + len(px),
                "visit_read": bool(shown),
                "unknown_codes": unknown,
                "unknown_known_category": [
                    c for c in unknown if ancestors_on and _known_through_category(bundle, c)
                ],
            }
        )
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    exp = [e for r in rows for e in r["expected"] if e["label"]]
    primary = [r["expected"][0] for r in rows if r["expected"][0]["label"]]
    n_codes = sum(r["n_codes"] for r in rows)
    n_unknown = sum(len(r["unknown_codes"]) for r in rows)
    return {
        "runs": len(rows),
        "cases": len({r["case"] for r in rows}),
        "expected_classes": len(exp),
        "expected_in_top10": sum(e["in_top10"] for e in exp),
        "runs_with_a_hit": sum(1 for r in rows if r["hits_top10"] > 0),
        "primary_in_top10": sum(e["in_top10"] for e in primary),
        "median_rank": statistics.median(e["rank"] for e in exp) if exp else None,
        "median_rank_without_input": (
            statistics.median(e["rank_without_input"] for e in exp) if exp else None
        ),
        "expected_rank_improved": sum(1 for e in exp if e["rank"] < e["rank_without_input"]),
        "codes": n_codes,
        "unknown_codes": n_unknown,
        "runs_all_codes_unknown": sum(1 for r in rows if len(r["unknown_codes"]) == r["n_codes"]),
        "runs_nothing_read": sum(1 for r in rows if not r["visit_read"]),
    }


def _why_text(e: dict[str, Any], titles: dict[str, str], n: int = 2) -> str:
    items = sorted(e["why"], key=lambda b: -abs(b["drop"]))[:n]
    return "; ".join(f"{b['code']} {b['drop'] * 100:+.1f}" for b in items) or "-"


def markdown(report: dict[str, Any], titles: dict[str, str]) -> str:
    s = report["summary"]
    hierarchy = "on" if report["bundle"]["ancestors"] else "off"
    lines = [
        "# Clinical cases",
        "",
        f"Bundle `{report['bundle']['name']}` (created {report['bundle']['created']}, "
        f"backend {report['backend']}, code hierarchy {hierarchy}). "
        f"Made by `{report['command']}`.",
        "",
        "Textbook presentations written from clinical knowledge, not from the demo data; each in "
        "ICD-9 and in ICD-10 codes. A report to read, not a target to tune on.",
        "",
        f"- {s['cases']} cases, {s['runs']} runs; {s['expected_in_top10']} of "
        f"{s['expected_classes']} expected classes in the top {TOP_K}; {s['runs_with_a_hit']} of "
        f"{s['runs']} runs with at least one expected class in the top {TOP_K}; the first "
        f"expected class in the top {TOP_K} in {s['primary_in_top10']} runs.",
        f"- Median rank of an expected class: {s['median_rank']} of {report['n_labels']} "
        f"(with no input at all: {s['median_rank_without_input']}); the case's codes lift "
        f"{s['expected_rank_improved']} of {s['expected_classes']} expected classes above their "
        "no-input rank.",
        f"- Codes the model does not know: {s['unknown_codes']} of {s['codes']} entered; "
        f"{s['runs_all_codes_unknown']} runs where every code is unknown, "
        f"{s['runs_nothing_read']} of them with no known ICD category either: the model reads "
        "nothing of the visit, so the app shows no suggestions (counted as no hit).",
        "",
        "rank: among all classes (1 = best), `p` its probability, `base`: its rank with no input; "
        "why: the two inputs that move that class's score most when left out (points of "
        "probability; + = the input raises it). Unknown codes in *italics*.",
        "",
        "| case | codes | expected: rank (p, base) | hits@10 | why (first expected class) |",
        "|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        codes = ", ".join(
            f"*{c.split(':', 1)[1]}*" if c in r["unknown_codes"] else c.split(":", 1)[1]
            for c in r["diagnoses"] + r["procedures"]
        )
        exp = ", ".join(
            f"{e['code']} {e['rank']} ({e['probability']:.2f}, {e['rank_without_input']})"
            if e["label"]
            else f"{e['code']} not a label"
            for e in r["expected"]
        )
        first = r["expected"][0]
        why = _why_text(first, titles) if first["label"] else "-"
        lines.append(
            f"| {r['case']} ({r['system']}) | {codes} | {exp} | "
            f"{r['hits_top10']}/{r['n_expected']} | {why} |"
        )
    lines += ["", "## Reasons", ""]
    for c in report["cases"]:
        lines.append(f"- **{c['name']}** -> {', '.join(c['expected'])}: {c['reason']}")
    lines += ["", "## Top 10 per run", ""]
    for r in report["runs"]:
        top = " ".join(r["top10"]) or "no suggestions (the model reads nothing of the visit)"
        lines.append(f"- {r['case']} ({r['system']}): {top}")
    return "\n".join(lines) + "\n"


def run(bundle_path: Path, backend: str = "auto") -> dict[str, Any]:
    from app.medication.bundle import load_bundle
    from app.medication.encoding import encode_visit
    from app.medication.recommender import Recommender

    bundle = load_bundle(bundle_path)
    problems = check_cases(CASES, bundle.label_codes)
    if problems:
        raise SystemExit("clinical cases do not check out:\n  " + "\n  ".join(problems))
    recommender = Recommender(bundle, backend=backend)
    base_probs = recommender.scores(encode_visit(bundle, [], [], [], {})[0])[0].astype(np.float64)
    rows = [row for case in CASES for row in run_case(bundle, recommender, case, base_probs)]
    m = bundle.manifest
    return {
        "bundle": {
            "path": str(bundle_path),
            "name": bundle.name,
            "created": m.get("created"),
            "vocab_sha256": m.get("vocab_sha256"),
            "teacher": m.get("teacher"),
            "ancestors": bool(getattr(bundle.tensor_config, "ancestors", False)),
        },
        "backend": recommender.backend,
        "n_labels": len(bundle.label_codes),
        "top_k": TOP_K,
        "summary": summarise(rows),
        "cases": [
            {"name": c.name, "expected": list(c.expected), "reason": c.reason} for c in CASES
        ],
        "runs": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'case':<44} {'sys':<6} {'hits':>5}  expected rank (base)   unknown")
    for r in report["runs"]:
        exp = " ".join(
            f"{e['code']}:{e['rank']}({e['rank_without_input']})"
            if e["label"]
            else f"{e['code']}:-"
            for e in r["expected"]
        )
        print(
            f"{r['case'][:44]:<44} {r['system']:<6} {r['hits_top10']}/{r['n_expected']:<3} "
            f"{exp:<40} {len(r['unknown_codes'])}/{r['n_codes']}"
        )
    s = report["summary"]
    print(
        f"\n{s['expected_in_top10']}/{s['expected_classes']} expected classes in the top {TOP_K}; "
        f"{s['runs_with_a_hit']}/{s['runs']} runs with a hit; median rank {s['median_rank']} "
        f"(no input: {s['median_rank_without_input']}); unknown codes "
        f"{s['unknown_codes']}/{s['codes']}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "numpy"))
    ap.add_argument("--name", default="clinical_cases", help="file stem of the outputs")
    args = ap.parse_args(argv)
    report = run(args.bundle, args.backend)
    shown = args.bundle.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    report["command"] = f"python bench/clinical_cases.py --bundle {shown} --backend {args.backend}"
    from app.medication.bundle import load_bundle

    titles = load_bundle(args.bundle).titles
    atomic_write_json(args.out / f"{args.name}.json", report)
    atomic_write_text(args.out / f"{args.name}.md", markdown(report, titles))
    print_table(report)
    print(f"wrote {args.out / (args.name + '.json')} and .md")
    return report


if __name__ == "__main__":
    main()
