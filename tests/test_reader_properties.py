"""Property-based tests of the MIMIC-III reader: random small exports written as real CSV files,
read back, and checked against what was written."""

from __future__ import annotations

import csv
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.data import codes
from distill.data.mimic import read_mimic3

NDCS = sorted(codes.ndc_to_atc3())[:40] + ["0", "", "99999999999"]  # mapped, none, unknown
ICD9 = ["4019", "4280", "42731", "5849", "25000", "V5861", "E8791", "2724"]
PROC = ["3893", "9604", "3615", "9672"]
# commas, quotes and non-ASCII in names must survive CSV quoting
DRUG_NAMES = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


@st.composite
def exports(draw):
    n_patients = draw(st.integers(1, 5))
    admissions, dx, px, rx = [], [], [], []
    hadm = 100
    for p in range(n_patients):
        for _ in range(draw(st.integers(1, 3))):
            hadm += 1
            day = draw(st.integers(1, 28))
            admissions.append((10 + p, hadm, f"2150-02-{day:02d} 10:00:00"))
            for seq, code in enumerate(draw(st.lists(st.sampled_from(ICD9), max_size=5)), 1):
                dx.append((10 + p, hadm, seq, code))
            for seq, code in enumerate(draw(st.lists(st.sampled_from(PROC), max_size=3)), 1):
                px.append((10 + p, hadm, seq, code))
            for ndc in draw(st.lists(st.sampled_from(NDCS), max_size=6)):
                rx.append((10 + p, hadm, ndc, draw(DRUG_NAMES)))
    return n_patients, admissions, dx, px, rx


def write(folder: Path, name: str, header: list[str], rows) -> None:
    with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exports())
def test_reader_keeps_every_admission_and_counts_every_drug_row(export):
    n_patients, admissions, dx, px, rx = export
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write(
            folder,
            "ADMISSIONS",
            ["subject_id", "hadm_id", "admittime", "insurance"],
            [(*a, "Medicare") for a in admissions],
        )
        write(
            folder,
            "PATIENTS",
            ["subject_id", "gender", "dob"],
            [(10 + p, "F", "2100-01-01 00:00:00") for p in range(n_patients)],
        )
        write(folder, "DIAGNOSES_ICD", ["subject_id", "hadm_id", "seq_num", "icd9_code"], dx)
        write(folder, "PROCEDURES_ICD", ["subject_id", "hadm_id", "seq_num", "icd9_code"], px)
        write(folder, "PRESCRIPTIONS", ["subject_id", "hadm_id", "ndc", "drug"], rx)
        cohort = read_mimic3(folder, chunk_rows=3)  # tiny chunks: chunk seams everywhere

    visits = {v.visit_id: v for v in cohort.visits}
    assert len(visits) == len(admissions)
    assert len({v.patient_id for v in cohort.visits}) == n_patients
    for _subject, hadm, _seq, code in dx:
        assert f"icd9cm:{code}" in visits[str(hadm)].diagnoses
    for _subject, hadm, _seq, code in px:
        assert f"icd9pcs:{code}" in visits[str(hadm)].procedures
    # every prescription row is either mapped into its visit or counted as unmapped
    ndc_map = codes.ndc_to_atc3()
    expected = {str(h): set() for _, h, _ in admissions}
    unmapped = Counter()
    for _subject, hadm, ndc, name in rx:
        atc3 = ndc_map.get(codes.normalise_ndc(ndc), "")
        if atc3:
            expected[str(hadm)].add(atc3)
        else:
            unmapped[name.strip()] += 1
    assert cohort.report.medication_rows == len(rx)
    assert cohort.report.unmapped_medication_rows == sum(unmapped.values())
    for h, want in expected.items():
        assert set(visits[h].medications) == want
        assert all(len(m) == 4 for m in visits[h].medications)
    # visit order follows admission time within each patient
    for vs in cohort.patients().values():
        times = [v.time for v in sorted(vs, key=lambda v: v.order)]
        assert times == sorted(times)
