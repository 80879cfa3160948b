"""Synthea CSV reader: every encounter becomes a `Visit`.

Tables: patients, encounters, conditions, procedures, medications (upper-case headers, `.csv` or
`.csv.gz`). Procedures and medications name their encounter. Conditions are episodes with a START
and an optional STOP, so a visit's diagnoses are the conditions active on the encounter's date:
same patient, START <= encounter date <= STOP (no STOP: still active). Encounters are streamed in
chunks and each chunk is joined only against the conditions of its own patients (conditions are
held sorted by patient), so memory follows the chunk and the output, not encounters x conditions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from distill.data import codes
from distill.data.records import Cohort, ReadReport, Visit
from distill.data.tables import (
    CHUNK_ROWS,
    DataError,
    find_table,
    parse_times,
    read_table,
    require_values,
)

TABLES = ["patients", "encounters", "conditions", "procedures", "medications"]
_COND_COLUMNS = ["patient", "start", "stop", "code", "encounter"]


def _age_band(birth: pd.Series, when: pd.Series) -> pd.Series:
    """Decade band of the age in full years at `when` ('' where the birth date is unknown).

    Both series hold canonical 'YYYY-MM-DD HH:MM:SS' strings. An encounter before the birth date
    gets no band.
    """
    known = birth != ""
    b = birth.where(known, "0000-00-00")
    age = (
        when.str.slice(0, 4).astype(int)
        - b.str.slice(0, 4).astype(int)
        - (when.str.slice(5, 10) < b.str.slice(5, 10)).astype(int)
    )
    lo = age // 10 * 10
    band = lo.astype(str) + "-" + (lo + 9).astype(str)
    band = band.where(age < 90, "90+")
    return band.where(known & (age >= 0), "")


def _skip(report: ReadReport, reason: str, keep: pd.Series) -> None:
    """Count the rows `keep` leaves out under `reason` (no entry when none is left out)."""
    n = int((~keep).sum())
    if n:
        report.skipped[reason] += n


def _patients(path: Path, report: ReadReport, chunk_rows: int) -> pd.DataFrame:
    """One row per patient id: birth (canonical time or ''), gender, race."""
    parts = []
    for chunk in read_table(path, ["id", "birthdate", "gender", "race"], chunk_rows=chunk_rows):
        report.rows["patients"] += len(chunk)
        require_values(chunk, "id", path)
        chunk["birth"] = parse_times(chunk, "birthdate", path, allow_empty=True)
        chunk["patient"] = chunk["id"].str.strip()
        parts.append(chunk)
    pat = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if pat.empty:
        raise DataError(f"{path}: no patients (expected at least one data row)")
    dup = pat["patient"].duplicated()
    if dup.any():
        i = dup.idxmax()
        raise DataError(
            f"{path}: line {pat.at[i, 'line']}: Id {pat.at[i, 'patient']} repeats "
            "(expected one row per patient)"
        )
    pat["gender"] = pat["gender"].str.strip()
    pat["race"] = pat["race"].str.strip()
    return pat[["patient", "birth", "gender", "race"]].set_index("patient")


def _conditions(
    path: Path, known: pd.Index, report: ReadReport, titles: dict[str, str], chunk_rows: int
) -> pd.DataFrame:
    """Condition episodes sorted by patient: patient, start, stop (dates, stop '' if open), code."""
    parts = []
    required = ["start", "stop", "patient", "code", "description"]
    for chunk in read_table(path, required, ["encounter"], chunk_rows=chunk_rows):
        report.rows["conditions"] += len(chunk)
        require_values(chunk, "patient", path)
        require_values(chunk, "code", path)
        start = parse_times(chunk, "start", path).str.slice(0, 10)
        stop = parse_times(chunk, "stop", path, allow_empty=True).str.slice(0, 10)
        patient = chunk["patient"].str.strip()
        keep = patient.isin(known)
        _skip(report, "conditions: unknown patient", keep)
        code = "snomed:" + chunk["code"].str.strip()
        _add_titles(titles, code[keep], chunk.loc[keep, "description"])
        parts.append(
            pd.DataFrame(
                {
                    "patient": patient[keep],
                    "start": start[keep],
                    "stop": stop[keep],
                    "code": code[keep],
                    # START is a local date, encounter START a UTC time: a condition recorded at
                    # an encounter can look a day early, so its own encounter always counts
                    "encounter": chunk.loc[keep, "encounter"].str.strip()
                    if "encounter" in chunk
                    else "",
                }
            )
        )
    cond = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_COND_COLUMNS)
    return cond.sort_values(["patient", "start", "code"], kind="stable", ignore_index=True)


def _add_titles(titles: dict[str, str], code: pd.Series, description: pd.Series) -> None:
    pairs = pd.DataFrame({"code": code, "title": description.str.strip()}).drop_duplicates("code")
    for c, t in zip(pairs["code"].tolist(), pairs["title"].tolist(), strict=True):
        if t:
            titles.setdefault(c, t)


class _ConditionIndex:
    """Conditions sorted by patient, with each patient's row range for cheap per-chunk slices."""

    def __init__(self, cond: pd.DataFrame) -> None:
        self.cond = cond
        first = cond.drop_duplicates("patient")
        starts = first.index.to_numpy()
        ends = np.append(starts[1:], len(cond))
        patients = first["patient"].to_numpy()
        self.ranges = pd.DataFrame({"first": starts, "end": ends}, index=patients)

    def of(self, patients: pd.Index) -> pd.DataFrame:
        r = self.ranges.reindex(patients).dropna().astype(int)
        lengths = (r["end"] - r["first"]).to_numpy()
        if lengths.sum() == 0:
            return self.cond.iloc[0:0]
        # row positions of every range, without a loop: each range's start repeated, plus 0..n-1
        offsets = np.repeat(r["first"].to_numpy() - np.cumsum(lengths) + lengths, lengths)
        return self.cond.iloc[offsets + np.arange(lengths.sum())]


def _encounters(
    path: Path,
    known: pd.Index,
    conditions: _ConditionIndex,
    report: ReadReport,
    chunk_rows: int,
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """All encounters (visit_id, patient, time, line) and visit_id -> active condition codes."""
    parts, dx = [], {}
    for chunk in read_table(path, ["id", "start", "patient"], chunk_rows=chunk_rows):
        report.rows["encounters"] += len(chunk)
        require_values(chunk, "id", path)
        require_values(chunk, "patient", path)
        enc = pd.DataFrame(
            {
                "visit_id": chunk["id"].str.strip(),
                "patient": chunk["patient"].str.strip(),
                "time": parse_times(chunk, "start", path),
                "line": chunk["line"],
            }
        )
        keep = enc["patient"].isin(known)
        _skip(report, "encounters: unknown patient", keep)
        enc = enc[keep]
        parts.append(enc)
        day = pd.DataFrame({"visit_id": enc["visit_id"], "patient": enc["patient"]})
        day["day"] = enc["time"].str.slice(0, 10)
        cond = conditions.of(pd.Index(day["patient"].unique()))
        pairs = day.merge(cond, on="patient")
        started = pairs["start"] <= pairs["day"]
        active = started & ((pairs["stop"] == "") | (pairs["stop"] >= pairs["day"]))
        active |= pairs["encounter"] == pairs["visit_id"]
        pairs = pairs.loc[active, ["visit_id", "start", "code"]]
        pairs = pairs.sort_values(["visit_id", "start", "code"], kind="stable")
        pairs = pairs.drop_duplicates(["visit_id", "code"])
        for v, c in zip(pairs["visit_id"].tolist(), pairs["code"].tolist(), strict=True):
            dx.setdefault(v, []).append(c)
    enc = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if enc.empty:
        raise DataError(f"{path}: no encounters left after reading (expected at least one row)")
    dup = enc["visit_id"].duplicated()
    if dup.any():
        i = dup.idxmax()
        raise DataError(
            f"{path}: line {enc.at[i, 'line']}: Id {enc.at[i, 'visit_id']} repeats "
            "(expected one row per encounter)"
        )
    return enc, dx


def _procedures(
    path: Path, known: pd.Index, report: ReadReport, titles: dict[str, str], chunk_rows: int
) -> dict[str, list[str]]:
    """visit_id -> SNOMED procedure codes in order of appearance, each once."""
    seen: dict[str, dict[str, None]] = {}
    for chunk in read_table(path, ["encounter", "code", "description"], chunk_rows=chunk_rows):
        report.rows["procedures"] += len(chunk)
        require_values(chunk, "encounter", path)
        require_values(chunk, "code", path)
        visit = chunk["encounter"].str.strip()
        keep = visit.isin(known)
        _skip(report, "procedures: unknown encounter", keep)
        code = "snomed:" + chunk["code"].str.strip()
        _add_titles(titles, code[keep], chunk.loc[keep, "description"])
        pairs = pd.DataFrame({"visit_id": visit[keep], "code": code[keep]}).drop_duplicates()
        for v, c in zip(pairs["visit_id"].tolist(), pairs["code"].tolist(), strict=True):
            seen.setdefault(v, {})[c] = None
    return {v: list(cs) for v, cs in seen.items()}


def _medications(
    path: Path, known: pd.Index, report: ReadReport, chunk_rows: int
) -> dict[str, list[str]]:
    """visit_id -> sorted ATC3 classes; RxNorm first, then the drug name; unmapped rows counted."""
    rx_map = codes.rxcui_to_atc3()
    by_name: dict[str, str] = {}
    found: dict[str, set[str]] = {}
    for chunk in read_table(path, ["encounter", "code", "description"], chunk_rows=chunk_rows):
        report.rows["medications"] += len(chunk)
        require_values(chunk, "encounter", path)
        require_values(chunk, "code", path)
        visit = chunk["encounter"].str.strip()
        keep = visit.isin(known)
        _skip(report, "medications: unknown encounter", keep)
        visit = visit[keep]
        name = chunk.loc[keep, "description"].str.strip()
        atc3 = chunk.loc[keep, "code"].str.strip().map(rx_map).fillna("")
        missing = atc3 == ""
        for n in name[missing].unique():
            if n not in by_name:
                by_name[n] = codes.atc3_from_drug_name(n)
        atc3 = atc3.where(~missing, name.map(by_name))
        unmapped = atc3 == ""
        report.medication_rows += len(visit)
        report.unmapped_medication_rows += int(unmapped.sum())
        report.unmapped_examples.update(name[unmapped].value_counts().to_dict())
        pairs = pd.DataFrame({"visit_id": visit[~unmapped], "atc3": atc3[~unmapped]})
        pairs = pairs.drop_duplicates()
        for v, a in zip(pairs["visit_id"].tolist(), pairs["atc3"].tolist(), strict=True):
            found.setdefault(v, set()).add(a)
    return {v: sorted(a) for v, a in found.items()}


def read_synthea(folder: Path, source: str = "synthea", chunk_rows: int = CHUNK_ROWS) -> Cohort:
    """Read a Synthea CSV export into one visit per encounter, sorted by patient then time."""
    folder = Path(folder)
    report = ReadReport(source=source, unmapped_examples=Counter())
    paths = {n: find_table(folder, n) for n in TABLES}
    titles: dict[str, str] = {}
    pat = _patients(paths["patients"], report, chunk_rows)
    cond = _conditions(paths["conditions"], pat.index, report, titles, chunk_rows)
    enc, dx = _encounters(paths["encounters"], pat.index, _ConditionIndex(cond), report, chunk_rows)
    del cond
    known = pd.Index(enc["visit_id"])
    px = _procedures(paths["procedures"], known, report, titles, chunk_rows)
    rx = _medications(paths["medications"], known, report, chunk_rows)

    enc = enc.sort_values(["patient", "time", "visit_id"], kind="stable", ignore_index=True)
    enc["order"] = enc.groupby("patient", sort=False).cumcount()
    enc = enc.join(pat, on="patient")
    enc["age_band"] = _age_band(enc["birth"], enc["time"])
    fields = ["gender", "race", "age_band"]
    # plain lists: iterating pandas string columns element by element is slow
    columns = [enc[c].tolist() for c in ["patient", "visit_id", "order", "time", *fields]]
    visits = []
    for patient, v, order, time, *values in zip(*columns, strict=True):
        visits.append(
            Visit(
                patient_id=patient,
                visit_id=v,
                order=int(order),
                time=time,
                diagnoses=tuple(dx.get(v, ())),
                procedures=tuple(px.get(v, ())),
                medications=tuple(rx.get(v, ())),
                profile=tuple((f, x) for f, x in zip(fields, values, strict=True) if x),
            )
        )
    return Cohort(visits=visits, report=report, titles=titles)
