"""MIMIC-III and MIMIC-IV readers on the embedded demos, cross-checked against the raw CSVs.

The expected values here are computed row by row in plain Python (csv module, the
`distill.data.codes` lookups), independently of the reader's vectorised pandas code.
"""

from __future__ import annotations

import csv
import gzip
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from distill.data import codes
from distill.data.mimic import read_mimic3, read_mimic4

DATA = Path(__file__).resolve().parents[1] / "assets" / "data"
MIMIC3 = DATA / "mimic3_demo"
MIMIC4 = DATA / "mimic4_demo"
ATC3 = re.compile(r"[A-Z]\d\d[A-Z]")


def raw_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def table(fmt: str, name: str) -> Path:
    """Raw table path of a demo: MIMIC-III names are upper case, MIMIC-IV's live in hosp/."""
    if fmt == "mimic3":
        return MIMIC3 / f"{name.upper()}.csv.gz"
    return MIMIC4 / "hosp" / f"{name}.csv.gz"


def expected_atc3(row: dict[str, str]) -> str:
    """The documented lookup order, one row at a time: GSN first, then NDC; '' if neither."""
    gsn = codes.normalise_gsn(row.get("gsn", ""))
    if gsn and gsn in codes.gsn_to_atc3():
        return codes.gsn_to_atc3()[gsn]
    ndc = codes.normalise_ndc(row.get("ndc", ""))
    if ndc and ndc in codes.ndc_to_atc3():
        return codes.ndc_to_atc3()[ndc]
    return ""


def icd_code(fmt: str, row: dict[str, str], kind: str) -> str:
    if fmt == "mimic3":
        return f"icd9{kind}:{row['icd9_code'].strip()}"
    return f"icd{row['icd_version'].strip()}{kind}:{row['icd_code'].strip()}"


@pytest.fixture(scope="module")
def m3():
    return read_mimic3(MIMIC3)


@pytest.fixture(scope="module")
def m4():
    return read_mimic4(MIMIC4)


@pytest.fixture(scope="module", params=["mimic3", "mimic4"])
def demo(request, m3, m4):
    return request.param, (m3 if request.param == "mimic3" else m4)


def test_demo_sizes(m3, m4):
    assert len(m3.patients()) == 100
    assert len(m3.visits) == 129
    assert len(m4.patients()) == 100
    assert len(m4.visits) == 275


def test_visit_ids_are_the_raw_admissions(demo):
    fmt, cohort = demo
    adm = raw_rows(table(fmt, "admissions"))
    assert sorted(v.visit_id for v in cohort.visits) == sorted(r["hadm_id"] for r in adm)
    owner = {r["hadm_id"]: r["subject_id"] for r in adm}
    assert all(owner[v.visit_id] == v.patient_id for v in cohort.visits)
    assert len({v.visit_id for v in cohort.visits}) == len(cohort.visits)


def test_mimic3_codes_are_icd9_only(m3):
    dx = [c for v in m3.visits for c in v.diagnoses]
    px = [c for v in m3.visits for c in v.procedures]
    assert dx and px
    assert all(c.startswith("icd9cm:") for c in dx)
    assert all(c.startswith("icd9pcs:") for c in px)


def test_mimic4_codes_carry_their_icd_version(m4):
    dx_systems = Counter(c.split(":", 1)[0] for v in m4.visits for c in v.diagnoses)
    px_systems = Counter(c.split(":", 1)[0] for v in m4.visits for c in v.procedures)
    assert set(dx_systems) == {"icd9cm", "icd10cm"}
    assert set(px_systems) == {"icd9pcs", "icd10pcs"}


@pytest.mark.parametrize("kind, name", [("cm", "diagnoses_icd"), ("pcs", "procedures_icd")])
def test_mimic4_prefix_follows_each_rows_version(m4, kind, name):
    rows = raw_rows(table("mimic4", name))
    expected: dict[str, set[str]] = defaultdict(set)
    versions_of_body: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        expected[r["hadm_id"]].add(icd_code("mimic4", r, kind))
        versions_of_body[r["icd_code"].strip()].add(r["icd_version"].strip())
    got = {v.visit_id: set(v.diagnoses if kind == "cm" else v.procedures) for v in m4.visits}
    for hadm, codes_ in expected.items():
        assert got[hadm] == codes_, hadm
    # a code body the raw data lists under both versions stays two distinct prefixed codes
    both = [b for b, vs in versions_of_body.items() if vs == {"9", "10"}]
    all_codes = {c for cs in got.values() for c in cs}
    for body in both:
        assert {f"icd9{kind}:{body}", f"icd10{kind}:{body}"} <= all_codes
    if kind == "cm":
        assert both, "the demo lists E8881 and E8809 under both ICD versions"


def test_medications_are_sorted_unique_atc3(demo):
    _, cohort = demo
    meds = [m for v in cohort.visits for m in v.medications]
    assert meds
    assert all(len(m) == 4 and ATC3.fullmatch(m) for m in meds)
    for v in cohort.visits:
        assert list(v.medications) == sorted(set(v.medications))


def test_mapping_tables_only_give_atc3():
    # the ETHOS GSN table has a few ATC1/ATC2 codes ('A', 'A12') and non-ATC ones ('T127')
    for mapping in (codes.gsn_to_atc3(), codes.ndc_to_atc3()):
        assert mapping
        bad = {k: v for k, v in mapping.items() if not ATC3.fullmatch(v)}
        assert not bad
        assert "" not in mapping


def test_order_is_time_sorted_per_patient(demo):
    fmt, cohort = demo
    raw_time = {r["hadm_id"]: r["admittime"].strip() for r in raw_rows(table(fmt, "admissions"))}
    for pid, visits in cohort.patients().items():
        assert [v.order for v in visits] == list(range(len(visits))), pid
        times = [v.time for v in visits]
        assert times == sorted(times), pid
        for v in visits:
            assert v.time == raw_time[v.visit_id]
    # visits come grouped by patient: each patient's block is contiguous
    seen, last = set(), None
    for v in cohort.visits:
        if v.patient_id != last:
            assert v.patient_id not in seen
            seen.add(v.patient_id)
            last = v.patient_id


def test_multi_visit_patient_order(m3):
    # patient 41976 is the MIMIC-III demo's most frequent visitor
    visits = m3.patients()["41976"]
    assert len(visits) == 15
    assert [v.order for v in visits] == list(range(15))
    assert visits[0].time < visits[-1].time


@pytest.mark.parametrize(
    "fmt, hadm, diagnoses",
    [
        (
            "mimic3",
            "165520",
            ("0389", "41071", "78551", "486", "42731", "20280", "4240", "4582", "2724"),
        ),
        # the MIMIC-IV file lists this admission's diagnoses as seq 5, 2, 1, 3, 4
        ("mimic4", "27327816", ("42731", "4019", "2724", "56210", "V1582")),
    ],
)
def test_hand_checked_admission(m3, m4, fmt, hadm, diagnoses):
    cohort = m3 if fmt == "mimic3" else m4
    visit = next(v for v in cohort.visits if v.visit_id == hadm)

    dx_rows = [r for r in raw_rows(table(fmt, "diagnoses_icd")) if r["hadm_id"] == hadm]
    dx_rows.sort(key=lambda r: int(r["seq_num"]))
    assert visit.diagnoses == tuple(icd_code(fmt, r, "cm") for r in dx_rows)
    assert visit.diagnoses == tuple(f"icd9cm:{c}" for c in diagnoses)  # read off by hand

    px_rows = [r for r in raw_rows(table(fmt, "procedures_icd")) if r["hadm_id"] == hadm]
    px_rows.sort(key=lambda r: int(r["seq_num"]))
    assert visit.procedures == tuple(icd_code(fmt, r, "pcs") for r in px_rows)

    rx_rows = [r for r in raw_rows(table(fmt, "prescriptions")) if r["hadm_id"] == hadm]
    mapped = {expected_atc3(r) for r in rx_rows} - {""}
    assert len(mapped) >= 10
    assert any(expected_atc3(r) == "" for r in rx_rows)  # some rows of it are unmapped
    assert set(visit.medications) == mapped


def test_every_admission_matches_plain_python(demo):
    fmt, cohort = demo
    known = {v.visit_id for v in cohort.visits}
    meds: dict[str, set[str]] = defaultdict(set)
    for r in raw_rows(table(fmt, "prescriptions")):
        if r["hadm_id"] in known and (atc3 := expected_atc3(r)):
            meds[r["hadm_id"]].add(atc3)
    dx: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in raw_rows(table(fmt, "diagnoses_icd")):
        dx[r["hadm_id"]].append((int(r["seq_num"]), icd_code(fmt, r, "cm")))
    for v in cohort.visits:
        assert v.medications == tuple(sorted(meds[v.visit_id])), v.visit_id
        assert v.diagnoses == tuple(c for _, c in sorted(dx[v.visit_id])), v.visit_id


def test_unmapped_rows_are_counted(demo):
    fmt, cohort = demo
    rows = raw_rows(table(fmt, "prescriptions"))
    unmapped = [r for r in rows if expected_atc3(r) == ""]
    report = cohort.report
    assert report.medication_rows == len(rows)
    assert report.unmapped_medication_rows == len(unmapped)
    assert 0 < report.unmapped_medication_rows < report.medication_rows
    assert report.mapped_share == pytest.approx(1 - len(unmapped) / len(rows))
    assert report.unmapped_examples == Counter(r["drug"].strip() for r in unmapped)
    assert not +report.skipped  # every demo row belongs to a known admission


def test_profile_of_a_known_patient(m3, m4):
    v3 = next(v for v in m3.visits if v.visit_id == "165520")
    # born 2038, admitted 2125: 87 years old
    assert v3.profile_dict()["gender"] == "F"
    assert v3.profile_dict()["age_band"] == "80-89"
    assert v3.profile_dict()["insurance"] == "Medicare"
    v4 = next(v for v in m4.visits if v.visit_id == "27327816")
    assert v4.profile_dict()["gender"] == "M"
    assert v4.profile_dict()["race"] == "WHITE"
    for cohort in (m3, m4):
        for pid, visits in cohort.patients().items():
            genders = {v.profile_dict().get("gender") for v in visits}
            assert len(genders) == 1 and genders != {None}, pid


def _rewrite_header(path: Path, change) -> None:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        header, rest = f.readline(), f.read()
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write(change(header) + rest)


def test_upper_case_columns_read_the_same(tmp_path, m3):
    folder = tmp_path / "mimic3"
    shutil.copytree(MIMIC3, folder)
    for path in folder.glob("*.csv.gz"):
        _rewrite_header(path, str.upper)
        with gzip.open(path, "rt") as f:
            assert "SUBJECT_ID" in f.readline()
    other = read_mimic3(folder)
    assert other.visits == m3.visits
    assert other.report.unmapped_medication_rows == m3.report.unmapped_medication_rows


def test_lower_case_plain_csv_files_read_the_same(tmp_path, m3):
    folder = tmp_path / "mimic3"
    folder.mkdir()
    for path in MIMIC3.glob("*.csv.gz"):
        with gzip.open(path, "rb") as f:
            (folder / path.name.lower().removesuffix(".gz")).write_bytes(f.read())
    assert read_mimic3(folder).visits == m3.visits


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path, m4):
    folder = tmp_path / "mimic4"
    shutil.copytree(MIMIC4 / "hosp", folder)
    _rewrite_header(folder / "admissions.csv.gz", lambda h: "\ufeff" + h)
    assert read_mimic4(folder).visits == m4.visits


def test_small_chunks_give_the_same_visits(demo):
    fmt, cohort = demo
    reader, folder = (read_mimic3, MIMIC3) if fmt == "mimic3" else (read_mimic4, MIMIC4)
    small = reader(folder, chunk_rows=37)
    assert small.visits == cohort.visits
    assert small.report.medication_rows == cohort.report.medication_rows
    assert small.report.unmapped_medication_rows == cohort.report.unmapped_medication_rows
    assert small.report.unmapped_examples == cohort.report.unmapped_examples
    assert small.report.rows == cohort.report.rows


def test_mimic4_accepts_root_or_hosp_folder(m4):
    from_hosp = read_mimic4(MIMIC4 / "hosp")
    assert from_hosp.visits == m4.visits
    assert len(from_hosp.visits) == 275


def test_source_name_is_recorded():
    assert read_mimic3(MIMIC3, source="my-export").report.source == "my-export"
