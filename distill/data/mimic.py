"""MIMIC-III and MIMIC-IV readers: admissions become `Visit` records.

MIMIC-III: ADMISSIONS, PATIENTS, DIAGNOSES_ICD, PROCEDURES_ICD, PRESCRIPTIONS; ICD-9 only; NDC and
GSN drug codes. MIMIC-IV: the hosp/ module's lower-case tables, ICD-9 and ICD-10 told apart by
`icd_version`. Column names are matched case-insensitively. Large tables are read in chunks and
reduced per chunk to unique (admission, code) pairs, so memory follows the output, not the input.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from distill.data import codes
from distill.data.records import Cohort, ReadReport, Visit
from distill.data.tables import (
    CHUNK_ROWS,
    DataError,
    find_table,
    is_missing,
    parse_times,
    read_table,
    require_values,
)


def _age_band(age: pd.Series) -> pd.Series:
    """Decade bands; MIMIC shifts ages over 89 far out (to 300 in MIMIC-III), hence '90+'."""
    age = age.clip(lower=0)
    lo = (age // 10 * 10).astype("Int64")
    band = lo.astype(str) + "-" + (lo + 9).astype(str)
    return band.where(age < 90, "90+").where(age.notna(), "")


def _admissions(
    path: Path, profile: list[str], report: ReadReport, chunk_rows: int
) -> pd.DataFrame:
    parts = []
    for chunk in read_table(path, ["subject_id", "hadm_id", "admittime"], profile, chunk_rows):
        require_values(chunk, "subject_id", path)
        require_values(chunk, "hadm_id", path)
        chunk["admittime"] = parse_times(chunk, "admittime", path)
        parts.append(chunk)
    adm = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    report.rows[path.name] += len(adm)
    if adm.empty:
        raise DataError(f"{path}: no admissions (expected at least one data row)")
    dup = adm["hadm_id"].duplicated()
    if dup.any():
        line = adm.loc[dup.idxmax(), "line"]
        raise DataError(f"{path}: line {line}: hadm_id {adm.loc[dup.idxmax(), 'hadm_id']} repeats")
    for col in profile:
        if col not in adm:
            adm[col] = ""
    return adm


def _patients(path: Path, report: ReadReport, chunk_rows: int, extra: list[str]) -> pd.DataFrame:
    parts = []
    for chunk in read_table(path, ["subject_id", "gender"], extra, chunk_rows):
        require_values(chunk, "subject_id", path)
        parts.append(chunk)
    pat = pd.concat(parts, ignore_index=True)
    report.rows[path.name] += len(pat)
    return pat.drop_duplicates("subject_id").drop(columns="line")


def _icd_codes(
    path: Path,
    table: str,
    known: set[str],
    kind: str,
    fixed_version: str | None,
    report: ReadReport,
    chunk_rows: int,
) -> dict[str, list[str]]:
    """hadm_id -> prefixed ICD codes in seq_num order, each once."""
    code_col = "icd9_code" if fixed_version else "icd_code"
    required = ["hadm_id", code_col] + ([] if fixed_version else ["icd_version"])
    parts = []
    for chunk in read_table(path, required, ["seq_num"], chunk_rows):
        report.rows[path.name] += len(chunk)
        code = chunk[code_col].str.strip()
        hadm = chunk["hadm_id"].str.strip()
        version = (
            pd.Series(fixed_version, index=chunk.index)
            if fixed_version
            else chunk["icd_version"].str.strip()
        )
        bad = ~version.isin(["9", "10"])
        if bad.any():
            i = bad.idxmax()
            raise DataError(
                f"{path}: line {chunk.at[i, 'line']}: icd_version is {version[i]!r}, "
                "expected 9 or 10"
            )
        empty = is_missing(code)  # "" or "NaN": counted, never a code
        unknown = ~empty & ~hadm.isin(known)
        report.skipped[f"{table}: empty code"] += int(empty.sum())
        report.skipped[f"{table}: unknown admission"] += int(unknown.sum())
        keep = ~empty & ~unknown
        seq = (
            pd.to_numeric(chunk["seq_num"], errors="coerce")
            if "seq_num" in chunk
            else chunk["line"]
        )
        parts.append(
            pd.DataFrame(
                {
                    "hadm_id": hadm[keep],
                    "seq": seq[keep],
                    "code": "icd" + version[keep] + kind + ":" + code[keep],
                }
            )
        )
    df = pd.concat(parts, ignore_index=True).sort_values(["hadm_id", "seq"], kind="stable")
    df = df.drop_duplicates(["hadm_id", "code"])
    return df.groupby("hadm_id", sort=False)["code"].agg(list).to_dict()


def _medications(
    path: Path, known: set[str], report: ReadReport, chunk_rows: int
) -> dict[str, list[str]]:
    """hadm_id -> sorted ATC3 classes prescribed; unmapped rows counted with their drug names."""
    gsn_map, ndc_map = codes.gsn_to_atc3(), codes.ndc_to_atc3()
    pairs = []
    for chunk in read_table(path, ["hadm_id"], ["ndc", "gsn", "drug"], chunk_rows):
        report.rows[path.name] += len(chunk)
        hadm = chunk["hadm_id"].str.strip()
        unknown = ~hadm.isin(known)
        report.skipped["prescriptions: unknown admission"] += int(unknown.sum())
        chunk, hadm = chunk[~unknown], hadm[~unknown]
        atc3 = pd.Series("", index=chunk.index)
        if "gsn" in chunk:
            gsn = chunk["gsn"].str.strip().str.split(" ", n=1).str[0]
            gsn = gsn.where(~gsn.str.fullmatch(r"0*"), "").str.zfill(6)
            atc3 = gsn.map(gsn_map).fillna("")
        if "ndc" in chunk:
            ndc = chunk["ndc"].str.strip()
            ndc = ndc.where(~ndc.str.fullmatch(r"0*"), "").str.zfill(11)
            atc3 = atc3.where(atc3 != "", ndc.map(ndc_map).fillna(""))
        unmapped = atc3 == ""
        report.medication_rows += len(chunk)
        report.unmapped_medication_rows += int(unmapped.sum())
        if "drug" in chunk:
            report.unmapped_examples.update(
                chunk.loc[unmapped, "drug"].str.strip().value_counts().to_dict()
            )
        pairs.append(
            pd.DataFrame({"hadm_id": hadm[~unmapped], "atc3": atc3[~unmapped]}).drop_duplicates()
        )
    df = pd.concat(pairs, ignore_index=True).drop_duplicates().sort_values(["hadm_id", "atc3"])
    return df.groupby("hadm_id", sort=False)["atc3"].agg(list).to_dict()


def _build(
    adm: pd.DataFrame,
    profile_fields: list[tuple[str, str]],
    dx: dict[str, list[str]],
    px: dict[str, list[str]],
    rx: dict[str, list[str]],
    report: ReadReport,
) -> Cohort:
    adm = adm.sort_values(["subject_id", "admittime", "hadm_id"], kind="stable")
    adm["order"] = adm.groupby("subject_id", sort=False).cumcount()
    visits = []
    for row in adm.itertuples(index=False):
        r = row._asdict()
        profile = tuple(
            (name, str(r[col]).strip()) for name, col in profile_fields if str(r[col]).strip()
        )
        h = r["hadm_id"]
        visits.append(
            Visit(
                patient_id=str(r["subject_id"]),
                visit_id=str(h),
                order=int(r["order"]),
                time=r["admittime"],
                diagnoses=tuple(dx.get(h, ())),
                procedures=tuple(px.get(h, ())),
                medications=tuple(rx.get(h, ())),
                profile=profile,
            )
        )
    return Cohort(visits=visits, report=report)


def read_mimic3(folder: Path, source: str = "mimic3", chunk_rows: int = CHUNK_ROWS) -> Cohort:
    folder = Path(folder)
    report = ReadReport(source=source, unmapped_examples=Counter())
    paths = {
        n: find_table(folder, n)
        for n in ["ADMISSIONS", "PATIENTS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS"]
    }
    profile = ["insurance", "language", "religion", "marital_status", "ethnicity"]
    adm = _admissions(paths["ADMISSIONS"], profile, report, chunk_rows)
    pat = _patients(paths["PATIENTS"], report, chunk_rows, ["dob"])
    adm = adm.merge(pat, on="subject_id", how="left").fillna({"gender": "", "dob": ""})
    dob = pd.to_datetime(adm["dob"].str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    age = (pd.to_datetime(adm["admittime"]).dt.year - dob.dt.year).astype("Float64")
    adm["age_band"] = _age_band(age)
    known = set(adm["hadm_id"])
    dx = _icd_codes(paths["DIAGNOSES_ICD"], "diagnoses", known, "cm", "9", report, chunk_rows)
    px = _icd_codes(paths["PROCEDURES_ICD"], "procedures", known, "pcs", "9", report, chunk_rows)
    rx = _medications(paths["PRESCRIPTIONS"], known, report, chunk_rows)
    fields = [("gender", "gender"), ("age_band", "age_band")] + [(c, c) for c in profile]
    return _build(adm, fields, dx, px, rx, report)


def read_mimic4(folder: Path, source: str = "mimic4", chunk_rows: int = CHUNK_ROWS) -> Cohort:
    """`folder` is the export root (holding hosp/) or the hosp/ folder itself."""
    folder = Path(folder)
    hosp = folder / "hosp" if (folder / "hosp").is_dir() else folder
    report = ReadReport(source=source, unmapped_examples=Counter())
    paths = {
        n: find_table(hosp, n)
        for n in ["admissions", "patients", "diagnoses_icd", "procedures_icd", "prescriptions"]
    }
    profile = ["insurance", "language", "marital_status", "race"]
    adm = _admissions(paths["admissions"], profile, report, chunk_rows)
    pat = _patients(paths["patients"], report, chunk_rows, ["anchor_age", "anchor_year"])
    adm = adm.merge(pat, on="subject_id", how="left").fillna({"gender": ""})
    if "anchor_age" in adm and "anchor_year" in adm:
        # anchor_age is the age in anchor_year; admissions move it by the year difference
        years = pd.to_datetime(adm["admittime"]).dt.year
        age = (
            pd.to_numeric(adm["anchor_age"], errors="coerce")
            + years
            - pd.to_numeric(adm["anchor_year"], errors="coerce")
        )
        adm["age_band"] = _age_band(age.astype("Float64"))
    else:
        adm["age_band"] = ""
    known = set(adm["hadm_id"])
    dx = _icd_codes(paths["diagnoses_icd"], "diagnoses", known, "cm", None, report, chunk_rows)
    px = _icd_codes(paths["procedures_icd"], "procedures", known, "pcs", None, report, chunk_rows)
    rx = _medications(paths["prescriptions"], known, report, chunk_rows)
    fields = [("gender", "gender"), ("age_band", "age_band")] + [(c, c) for c in profile]
    return _build(adm, fields, dx, px, rx, report)
