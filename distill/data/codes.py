"""Code tables shipped in assets/codes: drug mappings to ATC level 3, titles, DDI pairs.

Drug mapping order for MIMIC rows (first hit wins):
  1. GSN -> ATC (ETHOS gsn_atc_ndc_mapping), truncated to ATC3;
  2. NDC -> ATC3 (MoleRec's ndc2atc3, the GAMENet/SafeDrug pipeline's result);
  3. NDC -> ATC via the example NDCs of the GSN table.
Synthea's RxNorm codes map through NDC (ndc2rxcui) to the same ATC3 tables; the remaining ones
by the ingredient name at the start of the drug description against WHO ATC level-5 names.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from functools import lru_cache
from pathlib import Path

ATC3_LEN = 4


def assets_dir() -> Path:
    """assets/ of this checkout; POCKETREC_ASSETS overrides it (e.g. for an installed wheel)."""
    env = os.environ.get("POCKETREC_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "assets"


def codes_dir() -> Path:
    return assets_dir() / "codes"


def _rows(name: str):
    path = codes_dir() / name
    raw = gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")
    with io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def normalise_ndc(ndc: str) -> str:
    """MIMIC NDCs are 11-digit strings; '0' and '' mean none."""
    ndc = ndc.strip()
    if not ndc or set(ndc) == {"0"}:
        return ""
    return ndc.zfill(11) if ndc.isdigit() else ndc


def normalise_gsn(gsn: str) -> str:
    """GSNs are 6 digits; MIMIC-III sometimes lists several separated by spaces: take the first."""
    first = gsn.strip().split(" ", 1)[0]
    return first.zfill(6) if first.isdigit() and set(first) != {"0"} else ""


_ATC3 = re.compile(r"[A-Z]\d\d[A-Z]")


def _atc3(atc: str) -> str:
    """ATC3 of an ATC level 3-5 code; '' for a shorter or malformed one (the GSN table has 'A12',
    'A' and 'T127'), so those rows count as unmapped instead of yielding a non-ATC3 class."""
    atc3 = atc.strip()[:ATC3_LEN]
    return atc3 if _ATC3.fullmatch(atc3) else ""


@lru_cache(maxsize=1)
def gsn_to_atc3() -> dict[str, str]:
    rows = _rows("gsn_atc_ndc_mapping.csv.gz")
    return {normalise_gsn(r["gsn"]): a for r in rows if (a := _atc3(r["atc"]))}


@lru_cache(maxsize=1)
def ndc_to_atc3() -> dict[str, str]:
    rows = _rows("gsn_atc_ndc_mapping.csv.gz")
    out = {normalise_ndc(r["ndc"]): a for r in rows if (a := _atc3(r["atc"]))}
    # MoleRec's table is the published pipeline's own answer: it wins where both know an NDC
    out.update({normalise_ndc(r["ndc"]): r["atc3"] for r in _rows("ndc2atc3_molerec.csv.gz")})
    # NDCs are digits: the tables carry a few junk keys ('?') that no MIMIC row should match
    return {k: v for k, v in out.items() if k.isdigit()}


@lru_cache(maxsize=1)
def rxcui_to_atc3() -> dict[str, str]:
    """RxNorm concept -> ATC3 through its NDCs; the most common class among them wins."""
    ndc_map = ndc_to_atc3()
    votes: dict[str, dict[str, int]] = {}
    for r in _rows("ndc2rxcui.csv.gz"):
        atc3 = ndc_map.get(normalise_ndc(r["ndc"]))
        rxcui = r["rxcui"].strip()
        if atc3 and rxcui:
            counts = votes.setdefault(rxcui, {})
            counts[atc3] = counts.get(atc3, 0) + 1
    return {rx: max(sorted(c), key=c.__getitem__) for rx, c in votes.items()}


@lru_cache(maxsize=1)
def atc_names() -> dict[str, str]:
    """Every ATC level (A, A01, A01A, A01AA, A01AA01) -> its WHO name."""
    out: dict[str, str] = {}
    for r in _rows("atc_coding.csv.gz"):
        out.setdefault(r["atc_code"].strip(), r["atc_name"].strip())  # first name is the main one
    return out


# US drug names that the WHO index spells differently
_US_NAMES = {
    "acetaminophen": "paracetamol",
    "albuterol": "salbutamol",
    "aspirin": "acetylsalicylic acid",
}


@lru_cache(maxsize=1)
def _ingredient_index() -> dict[str, str]:
    # every name a level-5 code has (the table lists synonyms as extra rows); lowest code wins
    rows = sorted(
        (r["atc_code"].strip(), r["atc_name"].strip().lower()) for r in _rows("atc_coding.csv.gz")
    )
    out: dict[str, str] = {}
    for code, name in rows:
        if len(code) == 7:
            out.setdefault(name, code[:ATC3_LEN])
    return out


def atc3_from_drug_name(description: str) -> str:
    """ATC3 of the first ingredient named in a drug description, or '' if none is known.

    'Amoxicillin 500 MG Oral Tablet' -> 'J01C'. Leading quantities ('12 HR', '0.4 ML') and
    approval numbers ('NDA020800') are skipped; the longest known name of up to 4 words wins.
    """
    words = [w for w in re.split(r"[\s/\[\]]+", description.lower()) if w]
    while words and (re.fullmatch(r"[\d.]+|nda\d+|hr|ml|day|actuat|abuse-deterrent", words[0])):
        words.pop(0)
    index = _ingredient_index()
    for k in range(min(4, len(words)), 0, -1):
        name = " ".join(words[:k])
        name = _US_NAMES.get(name, name)
        if name in index:
            return index[name]
    return ""


@lru_cache(maxsize=1)
def icd_titles() -> dict[str, str]:
    """'icd9cm:4019' -> 'Unspecified essential hypertension' (ICD-9/10, CM and PCS)."""
    return {f"{r['system']}:{r['code']}": r["title"] for r in _rows("icd_titles.csv.gz")}


def title(code: str, extra: dict[str, str] | None = None) -> str:
    """A readable title for any code the records use; the code itself when none is known."""
    if extra and code in extra:
        return extra[code]
    if ":" in code:
        return icd_titles().get(code, code)
    return atc_names().get(code, code)


@lru_cache(maxsize=1)
def ddi_pairs() -> frozenset[tuple[str, str]]:
    """Undirected ATC3 interaction pairs, each stored once as (a, b) with a < b."""
    pairs = set()
    for r in _rows("ddi_atc3_pairs_gamenet.csv"):
        a, b = r["atc3_a"].strip(), r["atc3_b"].strip()
        if a != b:
            pairs.add((min(a, b), max(a, b)))
    return frozenset(pairs)
