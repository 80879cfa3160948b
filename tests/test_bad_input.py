"""Broken exports: the reader raises DataError naming the file and what it expected, and
`pocketrec data stats` turns that into exit code 2 and one error line, never a traceback.

Each case copies a demo into tmp_path and breaks one file of the copy.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from distill.data import load_cohort
from distill.data.tables import DataError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "assets" / "data"


@dataclass
class Broken:
    folder: Path
    fmt: str
    file_name: str  # the file the message must name
    expected: tuple[str, ...]  # what the message must say (case-insensitive)


def copy_demo(tmp_path: Path, fmt: str) -> Path:
    folder = tmp_path / f"{fmt}_export"
    src = DATA / "mimic3_demo" if fmt == "mimic3" else DATA / "mimic4_demo" / "hosp"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.txt", "*.md"))
    return folder


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read().splitlines(keepends=True)


def write_gz(path: Path, data: str | bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def edit_line(path: Path, index: int, change) -> None:
    """Rewrite line `index` (0 = header) of a gzipped CSV, keeping the first 40 lines only."""
    lines = read_lines(path)[:40]
    lines[index] = change(lines[index])
    write_gz(path, "".join(lines))


def replace_field(line: str, column: int, value: str) -> str:
    fields = line.rstrip("\r\n").split(",")
    fields[column] = value
    return ",".join(fields) + "\n"


# each maker breaks one file of a fresh copy and says what the error must mention


def missing_table(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    (folder / "PROCEDURES_ICD.csv.gz").unlink()
    return Broken(folder, "mimic3", "PROCEDURES_ICD.csv.gz", ("missing table PROCEDURES_ICD",))


def missing_column(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "DIAGNOSES_ICD.csv.gz"
    edit_line(path, 0, lambda h: h.replace("icd9_code", "icd_code"))
    return Broken(folder, "mimic3", path.name, ("missing column(s) icd9_code", "found"))


def too_many_fields(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "DIAGNOSES_ICD.csv.gz"
    edit_line(path, 5, lambda line: line.rstrip("\r\n") + ",V1582\n")  # a stray comma
    return Broken(folder, "mimic3", path.name, ("unparsable row", "expected 5 fields"))


def bad_admittime(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "ADMISSIONS.csv.gz"
    edit_line(path, 3, lambda line: replace_field(line, 3, "2125-13-45 23:36:00"))
    return Broken(folder, "mimic3", path.name, ("line 4", "admittime", "expected a date"))


def icd_version_11(tmp_path):
    folder = copy_demo(tmp_path, "mimic4")
    path = folder / "diagnoses_icd.csv.gz"
    edit_line(path, 7, lambda line: replace_field(line, 4, "11"))
    return Broken(
        folder, "mimic4", path.name, ("line 8", "icd_version is '11'", "expected 9 or 10")
    )


def empty_hadm_id(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "ADMISSIONS.csv.gz"
    edit_line(path, 2, lambda line: replace_field(line, 2, ""))
    return Broken(folder, "mimic3", path.name, ("line 3", "empty hadm_id", "expected an id"))


def nan_subject_id(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "ADMISSIONS.csv.gz"
    edit_line(path, 3, lambda line: replace_field(line, 1, "NaN"))
    return Broken(folder, "mimic3", path.name, ("line 4", "subject_id is 'NaN'", "missing value"))


def null_patient_id(tmp_path):
    folder = copy_demo(tmp_path, "mimic4")
    path = folder / "patients.csv.gz"
    edit_line(path, 6, lambda line: replace_field(line, 0, "NULL"))
    return Broken(folder, "mimic4", path.name, ("line 7", "subject_id is 'NULL'", "expected an id"))


def huge_code_field(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "DIAGNOSES_ICD.csv.gz"
    edit_line(path, 9, lambda line: replace_field(line, 4, "4" * 2_000_000))
    return Broken(folder, "mimic3", path.name, ("line 10", "icd9_code holds 2,000,000 characters"))


def huge_quoted_drug_name(tmp_path):
    # an unclosed quote swallows the rest of the file into one field
    folder = copy_demo(tmp_path, "mimic4")
    path = folder / "prescriptions.csv.gz"
    lines = read_lines(path)
    header = lines[0].rstrip("\r\n").split(",")
    at = header.index("drug")
    lines[4] = replace_field(lines[4], at, '"Heparin')
    write_gz(path, "".join(lines))
    return Broken(folder, "mimic4", path.name, ("column drug holds", "stray quote"))


def truncated_gzip(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "PRESCRIPTIONS.csv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # the header still reads, the body does not
    return Broken(folder, "mimic3", path.name, ("truncated or corrupt gzip",))


def truncated_gzip_header(tmp_path):
    folder = copy_demo(tmp_path, "mimic4")
    path = folder / "patients.csv.gz"
    path.write_bytes(path.read_bytes()[:20])
    return Broken(folder, "mimic4", path.name, ("cannot read the header", "compressed file ended"))


def latin1_row(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "ADMISSIONS.csv.gz"
    text = "".join(read_lines(path)[:40]).replace("HOME HEALTH CARE", "SOINS \u00c0 DOMICILE", 1)
    write_gz(path, text.encode("latin-1"))
    return Broken(folder, "mimic3", path.name, ("not utf-8",))


def latin1_header(tmp_path):
    folder = copy_demo(tmp_path, "mimic4")
    path = folder / "admissions.csv.gz"
    text = "".join(read_lines(path)[:40]).replace("race", "ra\u00e7e", 1)
    write_gz(path, text.encode("latin-1"))
    return Broken(folder, "mimic4", path.name, ("header line is not utf-8",))


def empty_plain_file(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    (folder / "PATIENTS.csv.gz").unlink()
    (folder / "PATIENTS.csv").write_bytes(b"")
    return Broken(folder, "mimic3", "PATIENTS.csv", ("empty file", "expected a csv header"))


def empty_gzip_file(tmp_path):
    folder = copy_demo(tmp_path, "mimic4")
    path = folder / "prescriptions.csv.gz"
    path.write_bytes(b"")
    return Broken(folder, "mimic4", path.name, ("empty file", "expected a csv header"))


def header_only_admissions(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "ADMISSIONS.csv.gz"
    write_gz(path, read_lines(path)[0])
    return Broken(folder, "mimic3", path.name, ("no admissions", "expected at least one data row"))


def not_a_folder(tmp_path):
    folder = tmp_path / "no_such_export"
    return Broken(folder, "mimic4", folder.name, ("not a directory", "expected the folder"))


CASES = [
    missing_table,
    missing_column,
    too_many_fields,
    bad_admittime,
    icd_version_11,
    empty_hadm_id,
    nan_subject_id,
    null_patient_id,
    huge_code_field,
    huge_quoted_drug_name,
    truncated_gzip,
    truncated_gzip_header,
    latin1_row,
    latin1_header,
    empty_plain_file,
    empty_gzip_file,
    header_only_admissions,
    not_a_folder,
]


@pytest.fixture(params=CASES, ids=lambda f: f.__name__)
def broken(request, tmp_path) -> Broken:
    return request.param(tmp_path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", "data", "stats", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def check_message(message: str, case: Broken) -> None:
    assert case.file_name in message
    for text in case.expected:
        assert text.lower() in message.lower(), (text, message)


def test_reader_raises_data_error(broken):
    with pytest.raises(DataError) as info:
        load_cohort(path=broken.folder, fmt=broken.fmt)
    check_message(str(info.value), broken)


def test_cli_exits_2_with_one_error_line(broken):
    done = run_cli("--path", str(broken.folder), "--format", broken.fmt, "--json")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("pocketrec: error:")
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    check_message(done.stderr, broken)


def test_the_unbroken_copy_reads(tmp_path):
    # guards the cases above: the copies fail because of the breakage, not the copying
    for fmt, visits in (("mimic3", 129), ("mimic4", 275)):
        cohort = load_cohort(path=copy_demo(tmp_path / fmt, fmt), fmt=fmt)
        assert len(cohort.visits) == visits


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--source", "mimic3-demo", "--path", "assets/data/mimic3_demo", "--format", "mimic3"],
            "exactly one of --source or --path",
        ),
        (["--path", "assets/data/mimic3_demo"], "--path needs --format"),
        ([], "exactly one of --source or --path"),
    ],
    ids=["source-and-path", "path-without-format", "neither"],
)
def test_cli_rejects_bad_argument_combinations(args, message):
    done = run_cli(*args, "--json")
    assert done.returncode == 2
    assert done.stderr.startswith("pocketrec: error:")
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_missing_value_spellings_in_code_columns_are_counted_not_codes(tmp_path):
    folder = copy_demo(tmp_path, "mimic3")
    path = folder / "DIAGNOSES_ICD.csv.gz"
    lines = read_lines(path)
    for k in (2, 3, 4):
        lines[k] = replace_field(lines[k], 4, ("NaN", "null", " n/a ")[k - 2])
    write_gz(path, "".join(lines))
    cohort = load_cohort(path=folder, fmt="mimic3")
    assert cohort.report.skipped["diagnoses: empty code"] == 3
    codes = {c for v in cohort.visits for c in v.diagnoses}
    assert not {c for c in codes if c.split(":", 1)[1].lower() in ("nan", "null", "n/a")}


def test_unknown_source_is_a_data_error():
    with pytest.raises(DataError, match="unknown source 'mimic5-demo'"):
        load_cohort("mimic5-demo")
    with pytest.raises(DataError, match="unknown format 'csv'"):
        load_cohort(path=DATA / "mimic3_demo", fmt="csv")


def test_distill_on_an_unreadable_export_leaves_no_run_folder(tmp_path):
    """The run folder is made before the data are read; when they cannot be, it goes again,
    so nothing half-made stays and the corrected command needs no --force."""
    folder = copy_demo(tmp_path, "mimic3")
    (folder / "PRESCRIPTIONS.csv.gz").unlink()
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", "distill", "--path", str(folder),
         "--format", "mimic3", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # after the data stage's progress line
    assert last.startswith("pocketrec: error:") and "Traceback" not in done.stderr
    assert "missing table PRESCRIPTIONS" in last
    assert not out.exists()
    # a folder the user made (empty, so allowed without --force) stays, emptied again
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", "distill", "--path", str(folder),
         "--format", "mimic3", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and out.is_dir() and not any(out.iterdir())


def test_distill_on_an_export_with_no_usable_visit_says_why(tmp_path):
    """Every table reads, but prescriptions.csv.gz holds its header alone: no visit has a drug,
    so no sample. Said with the source folder and the reader's counts, exit 2, no folder."""
    folder = copy_demo(tmp_path, "mimic4")
    path = folder / "prescriptions.csv.gz"
    write_gz(path, read_lines(path)[0])
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", "distill", "--path", str(folder),
         "--format", "mimic4", "--out", str(out), "--quick", "--teacher", "minilm"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pocketrec: error: {folder}: only 0 usable samples (all-visits)")
    assert "read 100 patients, 275 visits and 0 medication rows" in last
    assert "0 a mapped drug" in last and "Traceback" not in done.stderr
    assert not out.exists()
