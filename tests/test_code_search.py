"""app.medication.codes over the shipped dictionaries (assets/dictionary/): the whole ICD-9 and
ICD-10 dictionaries, not only the model's vocabulary; abbreviations and synonyms; drug classes by
substance; versions marked, the bundle's preferred; codes the model never saw marked; the
standard library only (no distill)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.medication.codes import CodeIndex, CodeOption, dictionary_index, drug_substances, fold
from app.medication.state import MedicationState
from app.state import AppState

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def med(tiny_bundle, tmp_path_factory) -> MedicationState:
    s = AppState.open(tiny_bundle, tmp_path_factory.mktemp("codes") / "p.db")
    yield s.medication
    s.history.close()


def codes(options) -> list[str]:
    return [o.code for o in options]


def test_everyday_words_and_abbreviations_find_codes(med):
    expect = {
        "copd": ("icd9cm:496", "icd10cm:J449"),
        "stroke": ("icd10cm:I639", "icd9cm:43491"),
        "depression": ("icd10cm:F329", "icd9cm:311"),
        "covid": ("icd10cm:U071",),
        "pregnancy": (),
        "mi": ("icd10cm:I219", "icd9cm:41071", "icd9cm:412"),
        "chf": ("icd9cm:4280", "icd10cm:I509"),
        "uti": ("icd9cm:5990", "icd10cm:N390"),
        "dka": ("icd10cm:E1010",),
    }
    for query, wanted in expect.items():
        found = codes(med.search_codes(query, "dx", limit=60))
        assert found, f"{query!r} finds nothing"
        if wanted:
            assert set(wanted) & set(found), f"{query!r} finds none of {wanted}: {found[:10]}"
    for query, wanted in {
        "echocardiogram": "icd9pcs:8872",
        "intubation": "icd9pcs:9604",
        "x-ray": "icd9pcs:8744",
    }.items():
        assert wanted in codes(med.search_codes(query, "px", limit=80)), query
    # an abbreviation finds what it stands for before titles whose words merely start so
    assert "myocardial infarction" in fold(med.search_codes("mi", "dx")[0].title)


def test_codes_by_code_dots_and_prefix(med):
    assert codes(med.search_codes("401.9", "dx"))[0] == "icd9cm:4019"
    assert codes(med.search_codes("icd9cm:4019", "dx")) == ["icd9cm:4019"]
    assert codes(med.search_codes("I10", "dx"))[0] == "icd10cm:I10"
    assert med.search_codes("3893", "diagnoses") == []  # kinds kept apart
    assert codes(med.search_codes("3893", "px"))[0] == "icd9pcs:3893"
    assert med.search_codes("", "dx") == [] and med.search_codes("zzqx", "dx") == []
    assert "No match" in med.no_match_text("zzqx", "dx") and "ICD-9" in med.no_match_text("x", "dx")


def test_versions_marked_and_unseen_codes_valid(med):
    option = med.search_codes("covid", "dx")[0]
    assert option.code == "icd10cm:U071" and option.version == "ICD-10"
    assert not option.known and "not seen by the model" in option.label
    known = med.search_codes("atrial fib", "dx")[0]  # the tiny bundle knows icd9cm:42731
    assert known.code == "icd9cm:42731" and known.known and "ICD-9" in known.label
    assert "not seen" not in known.label
    # the model's codes first, then the bundle's preferred version
    dx = med.search_codes("hypertension", "dx", limit=40)
    flags = [o.known for o in dx]
    assert flags == sorted(flags, reverse=True)
    unseen = [o for o in dx if not o.known]
    preferred = med.preferred_system("diagnoses")
    first_other = next(
        (k for k, o in enumerate(unseen) if not o.code.startswith(preferred)), len(unseen)
    )
    assert all(o.code.startswith(preferred) for o in unseen[:first_other])
    # a picked unseen code is a valid entry, titled from the dictionary
    assert med.title("icd10cm:U071") == "COVID-19"


def test_preferred_version_follows_the_bundle_source(med, monkeypatch):
    monkeypatch.setitem(med.bundle.manifest, "data", {"source": "mimic3-demo"})
    assert med.preferred_system("diagnoses") == "icd9cm"
    monkeypatch.setitem(med.bundle.manifest, "data", {"source": "mimic4-demo"})
    assert med.preferred_system("procedures") == "icd10pcs"
    index = dictionary_index("diagnoses", preferred="icd9cm")
    top = index.search("essential hypertension", 3)
    assert top[0].code.startswith("icd9cm:")


def test_drugs_by_substance(med):
    assert codes(med.search_drugs("furosemide"))[:1] == ["C03C"]
    assert "furosemide" in med.search_drugs("furosemide")[0].title
    assert "C07A" in codes(med.search_drugs("metoprolol"))
    assert codes(med.search_drugs("B01"))[0] == "B01A"
    assert codes(med.search_drugs("beta block"))[0] == "C07A"
    assert med.search_drugs("zzqx") == []
    subs = drug_substances(["C03C"])
    assert "furosemide" in subs["C03C"]


def test_code_index_ranking_and_folding():
    index = CodeIndex([("x:1", "Alpha one"), ("x:2", "Beta 486 thing"), ("icd:486", "Pneumonia")])
    assert codes(index.search("486")) == ["icd:486", "x:2"]  # exact code first
    assert codes(index.search("ALPHA")) == ["x:1"]
    accents = CodeIndex([("a:1", "Maladie de Ménière")])
    assert codes(accents.search("meniere")) == ["a:1"]
    assert CodeOption("c", "t", "ICD-9", False).label == "c — t  · ICD-9 · not seen by the model"


def test_the_app_reads_its_dictionary_with_the_standard_library():
    tree = ast.parse((ROOT / "app" / "medication" / "codes.py").read_text())
    imported = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [n])
    }
    assert "distill" not in imported and "pandas" not in imported
    assert (ROOT / "assets" / "dictionary" / "icd_titles.csv.gz").is_file()
