"""bench/clinical_cases.py: the case list checks out against the shipped dictionaries and
bundle, and the report runs through the app runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import clinical_cases as cc  # noqa: E402

BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"


def _labels() -> list[str]:
    return [x["code"] for x in json.loads((BUNDLE / "labels.json").read_text())]


def test_at_least_20_cases_each_in_icd9_and_icd10():
    assert len(cc.CASES) >= 20
    for c in cc.CASES:
        assert c.icd9 and c.icd10 and c.expected and c.reason, c.name


def test_every_code_in_the_dictionaries_and_every_class_a_label():
    assert cc.check_cases(cc.CASES, _labels()) == []


def test_check_cases_names_the_problems():
    bad = cc.Case("bad", ("Z99Z", "N06A"), "r", ("icd10cm:F329",), ("icd9cm:99999x",))
    problems = cc.check_cases([bad], ["A10A"])
    assert any("Z99Z is not an ATC level-3 class" in p for p in problems)
    assert any("N06A is not one of the bundle's labels" in p for p in problems)
    assert any("icd9cm:99999x is not in" in p for p in problems)
    assert any("icd10cm:F329 is listed as ICD-9" in p for p in problems)


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="no shipped bundle")
def test_report_on_the_shipped_bundle(tmp_path):
    report = cc.main(["--bundle", str(BUNDLE), "--out", str(tmp_path), "--backend", "numpy"])
    assert (tmp_path / "clinical_cases.md").read_text().startswith("# Clinical cases")
    saved = json.loads((tmp_path / "clinical_cases.json").read_text())
    assert saved["summary"] == report["summary"]
    assert len(saved["runs"]) == 2 * len(cc.CASES)
    n = saved["n_labels"]
    for run in saved["runs"]:
        assert run["system"] in ("ICD-9", "ICD-10")
        assert set(run["unknown_codes"]) <= set(run["diagnoses"] + run["procedures"])
        for e in run["expected"]:
            assert 1 <= e["rank"] <= n and 0.0 <= e["probability"] <= 1.0
            # a visit the model reads nothing of shows no suggestions: no hit
            assert e["in_top10"] == (run["visit_read"] and e["rank"] <= 10)
            # the "why" has one leave-one-out item per entered code the model reads (itself
            # or through its category); the others change nothing
            read = run["n_codes"] - len(run["unknown_codes"]) + len(run["unknown_known_category"])
            assert len(e["why"]) == read
            assert run["visit_read"] == (read > 0)
