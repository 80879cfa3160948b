"""read_synthea on the embedded 111-patient sample and on broken copies of it."""

from __future__ import annotations

import csv
import gzip
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest

from distill.data.synthea import _age_band, read_synthea
from distill.data.tables import DataError

DEMO = Path(__file__).resolve().parents[1] / "assets" / "data" / "synthea_demo"

# hand-checked against conditions.csv.gz: an outpatient consultation on 2017-07-23
PATIENT = "0827b1b3-0fc6-23d4-d524-e8c168e51d06"
ENCOUNTER = "a9ac1ce1-d09e-e658-3954-f36be1e14180"


@pytest.fixture(scope="module")
def cohort():
    return read_synthea(DEMO)


def _raw_rows(folder: Path, table: str) -> tuple[list[str], list[list[str]]]:
    with gzip.open(folder / f"{table}.csv.gz", "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _write_rows(folder: Path, table: str, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    with gzip.open(folder / f"{table}.csv.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "synthea"
    shutil.copytree(DEMO, folder)
    return folder


# --- the embedded sample --------------------------------------------------------------------


def test_demo_counts(cohort):
    visits = cohort.visits
    assert len(cohort.patients()) == 111
    assert len(visits) == 7584
    assert len({v.visit_id for v in visits}) == 7584
    assert sum(bool(v.diagnoses) for v in visits) > 1000
    assert sum(bool(v.procedures) for v in visits) > 1000
    assert sum(bool(v.medications) for v in visits) > 1000
    assert dict(cohort.report.rows) == {
        "patients": 111,
        "encounters": 7584,
        "conditions": 4428,
        "procedures": 11742,
        "medications": 6124,
    }
    assert not cohort.report.skipped
    assert cohort.report.medication_rows == 6124


def test_demo_mapped_share(cohort):
    # measured: 5,982 of 6,124 medication rows map to ATC3 (0.977); the unmapped ones are mostly
    # brand-name contraceptive packs ("Jolivette 28 Day Pack") and devices
    report = cohort.report
    assert 0.5 < report.mapped_share <= 1.0
    assert sum(report.unmapped_examples.values()) == report.unmapped_medication_rows
    for v in cohort.visits:
        assert list(v.medications) == sorted(set(v.medications))
        assert all(len(a) == 4 for a in v.medications)


def test_demo_order_and_sorting(cohort):
    keys = [(v.patient_id, v.order) for v in cohort.visits]
    assert keys == sorted(keys)
    for visits in cohort.patients().values():
        assert [v.order for v in visits] == list(range(len(visits)))
        times = [(v.time, v.visit_id) for v in visits]
        assert times == sorted(times)
    assert all(len(v.time) == 19 and v.time[10] == " " for v in cohort.visits)


def test_demo_codes_profile_titles(cohort):
    for v in cohort.visits:
        for code in (*v.diagnoses, *v.procedures):
            assert code.startswith("snomed:")
            assert code in cohort.titles
        assert len(set(v.diagnoses)) == len(v.diagnoses)
        assert len(set(v.procedures)) == len(v.procedures)
        names = [k for k, _ in v.profile]
        assert names == [k for k in ("gender", "race", "age_band") if k in names]
    assert cohort.titles["snomed:44054006"] == "Diabetes mellitus type 2 (disorder)"


def test_hand_checked_patient(cohort):
    visit = next(v for v in cohort.visits if v.visit_id == ENCOUNTER)
    assert visit.patient_id == PATIENT
    assert visit.time == "2017-07-23 17:15:11"
    _, rows = _raw_rows(DEMO, "conditions")
    day = visit.time[:10]
    active = sorted(
        (start, code)
        for start, stop, patient, _enc, code, _desc in rows
        if patient == PATIENT and start[:10] <= day and (not stop or stop[:10] >= day)
    )
    expected = list(dict.fromkeys("snomed:" + code for _, code in active))
    assert list(visit.diagnoses) == expected
    # the same list, read by eye off the raw rows
    assert visit.diagnoses == (
        "snomed:224299000",  # Received higher education, 1995-11-06, open
        "snomed:15777000",  # Prediabetes, 2011-11-28, open
        "snomed:271737000",  # Anemia, 2011-11-28, open
        "snomed:1121000119107",  # Chronic neck pain, 2014-02-05, open
        "snomed:82423001",  # Chronic pain, 2014-02-05, open
        "snomed:160903007",  # Full-time employment, 2014-02-17 to 2020-03-23
        "snomed:314529007",  # Medication review due, 2016-02-29 to 2020-03-23
        "snomed:73595000",  # Stress, 2016-02-29 to 2018-03-12
    )
    assert visit.profile == (("gender", "F"), ("race", "white"), ("age_band", "30-39"))


def test_chunked_reading_gives_the_same_visits(cohort):
    small = read_synthea(DEMO, chunk_rows=50)
    assert small.visits == cohort.visits
    assert small.titles == cohort.titles
    assert small.report == cohort.report


def test_age_band():
    birth = pd.Series(["1950-06-15 00:00:00"] * 5 + [""])
    when = pd.Series(
        [
            "1950-06-15 08:00:00",  # 0
            "1990-06-14 08:00:00",  # 39, birthday not reached yet
            "1990-06-15 08:00:00",  # 40
            "2040-06-14 08:00:00",  # 89
            "2040-06-15 08:00:00",  # 90
            "2000-01-01 00:00:00",  # no birth date
        ]
    )
    assert list(_age_band(birth, when)) == ["0-9", "30-39", "40-49", "80-89", "90+", ""]


def test_plain_csv_and_unknown_rows(copy):
    header, rows = _raw_rows(copy, "procedures")
    rows.append(list(rows[0]))
    rows[-1][header.index("ENCOUNTER")] = "no-such-encounter"
    (copy / "procedures.csv.gz").unlink()
    with open(copy / "procedures.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    cohort = read_synthea(copy)
    assert len(cohort.visits) == 7584
    assert cohort.report.rows["procedures"] == 11743
    assert cohort.report.skipped == {"procedures: unknown encounter": 1}


# --- broken copies ----------------------------------------------------------------------------


def test_missing_table(copy):
    (copy / "medications.csv.gz").unlink()
    with pytest.raises(DataError, match=r"missing table medications .*medications\.csv\.gz"):
        read_synthea(copy)


def test_missing_column(copy):
    header, rows = _raw_rows(copy, "encounters")
    i = header.index("START")
    rows = [r[:i] + r[i + 1 :] for r in rows]
    _write_rows(copy, "encounters", header[:i] + header[i + 1 :], rows)
    with pytest.raises(DataError, match=r"encounters\.csv\.gz: missing column\(s\) start"):
        read_synthea(copy)


def test_unparsable_date(copy):
    header, rows = _raw_rows(copy, "conditions")
    rows[4][header.index("START")] = "next tuesday"
    _write_rows(copy, "conditions", header, rows)
    expected = r"conditions\.csv\.gz: line 6: column start is 'next tuesday', expected a date"
    with pytest.raises(DataError, match=expected):
        read_synthea(copy)


def test_empty_key(copy):
    header, rows = _raw_rows(copy, "medications")
    rows[9][header.index("ENCOUNTER")] = ""
    _write_rows(copy, "medications", header, rows)
    expected = r"medications\.csv\.gz: line 11: empty encounter \(expected an id\)"
    with pytest.raises(DataError, match=expected):
        read_synthea(copy)


def test_truncated_gzip(copy):
    path = copy / "encounters.csv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"encounters\.csv\.gz: truncated or corrupt gzip"):
        read_synthea(copy)


def test_header_only_encounters(copy):
    header, _ = _raw_rows(copy, "encounters")
    _write_rows(copy, "encounters", header, [])
    expected = r"encounters\.csv\.gz: no encounters left after reading \(expected at least one row"
    with pytest.raises(DataError, match=expected):
        read_synthea(copy)
