"""Rebuild assets/ from ../shared/data (run once; the result is committed).

Embedded demo tables are copied as they are (MIMIC-III CSVs gzipped with -n so the bytes are
reproducible). The ICD dictionaries are not copied into the data folders: they are merged into one
code/title table, assets/codes/icd_titles.csv.gz, with the code system made explicit, because the
ICD-9 and ICD-10 code spaces overlap ("V707" and "0090" exist in both).

Usage: python scripts/build_assets.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"


def _gzip_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as raw:
        # mtime=0 and no file name: the same input gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as fout:
            shutil.copyfileobj(fin, fout)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _write_gz_csv(dst: Path, header: list[str], rows) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(dst, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        w = csv.writer(text, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
        text.flush()
        text.detach()
    return n


def build(shared: Path) -> None:
    data = ASSETS / "data"
    codes = ASSETS / "codes"
    # MIMIC-III demo: the tables med-rec needs, gzipped
    m3 = shared / "mimic3_demo"
    for name in ["ADMISSIONS", "PATIENTS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS"]:
        _gzip_copy(m3 / f"{name}.csv", data / "mimic3_demo" / f"{name}.csv.gz")
    for name in ["LICENSE.txt", "SHA256SUMS.txt", "SOURCE.md"]:
        shutil.copy2(m3 / name, data / "mimic3_demo" / name)
    # MIMIC-IV demo: hosp tables as shipped (already gzipped)
    m4 = shared / "mimic4_demo"
    for name in ["admissions", "patients", "diagnoses_icd", "procedures_icd", "prescriptions"]:
        dst = data / "mimic4_demo" / "hosp" / f"{name}.csv.gz"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(m4 / "hosp" / f"{name}.csv.gz", dst)
    for name in ["LICENSE.txt", "SHA256SUMS.txt", "SOURCE.md", "README.txt"]:
        shutil.copy2(m4 / name, data / "mimic4_demo" / name)
    # Synthea sample
    sy = shared / "synthea_small"
    for name in ["patients", "encounters", "conditions", "procedures", "medications", "SOURCE"]:
        src = sy / (f"{name}.md" if name == "SOURCE" else f"{name}.csv.gz")
        dst = data / "synthea_demo" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)

    # One ICD title table, code system explicit
    def icd_rows():
        seen: set[tuple[str, str]] = set()
        with _open_text(m4 / "hosp" / "d_icd_diagnoses.csv.gz") as f:
            for r in csv.DictReader(f):
                key = (f"icd{r['icd_version']}cm", r["icd_code"].strip())
                if key not in seen:
                    seen.add(key)
                    yield [*key, r["long_title"].strip()]
        with _open_text(m4 / "hosp" / "d_icd_procedures.csv.gz") as f:
            for r in csv.DictReader(f):
                key = (f"icd{r['icd_version']}pcs", r["icd_code"].strip())
                if key not in seen:
                    seen.add(key)
                    yield [*key, r["long_title"].strip()]
        # MIMIC-III dictionaries: fill ICD-9 codes the MIMIC-IV tables lack
        for fname, system in [
            ("D_ICD_DIAGNOSES.csv", "icd9cm"),
            ("D_ICD_PROCEDURES.csv", "icd9pcs"),
        ]:
            with _open_text(m3 / fname) as f:
                for r in csv.DictReader(f):
                    key = (system, r["icd9_code"].strip())
                    if key not in seen:
                        seen.add(key)
                        yield [*key, r["long_title"].strip()]

    n = _write_gz_csv(codes / "icd_titles.csv.gz", ["system", "code", "title"], icd_rows())
    print(f"icd_titles: {n} rows")
    mm = shared / "medrec_mappings"
    for name in [
        "SOURCE.md",
        "atc_coding.csv.gz",
        "gsn_atc_ndc_mapping.csv.gz",
        "ddi_atc3_pairs_gamenet.csv",
    ]:
        shutil.copy2(mm / name, codes / name)
    # the ICD titles come from the MIMIC dictionaries: their ODbL licence travels with them
    shutil.copy2(m4 / "LICENSE.txt", codes / "LICENSE-ODbL.txt")
    for name in ["ndc2atc3_molerec.csv", "ndc2rxcui.csv"]:
        _gzip_copy(mm / name, codes / f"{name}.gz")
    print("assets rebuilt under", ASSETS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    build(ap.parse_args().shared)


if __name__ == "__main__":
    main()
