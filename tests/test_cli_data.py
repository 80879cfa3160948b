"""`pocketrec data stats` on the three embedded demos, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "patients",
    "visits",
    "multi_visit_patients",
    "diagnoses",
    "procedures",
    "medications",
    "unmapped_medication_rows",
    "mapped_share",
}


def stats(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", "data", "stats", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done


_cache: dict[tuple[str, ...], str] = {}


def stats_json(*args: str) -> dict:
    """A fresh dict each call; the command runs once per argument list."""
    if args not in _cache:
        _cache[args] = stats(*args, "--json").stdout
    return json.loads(_cache[args])


@pytest.mark.parametrize(
    "source, patients, visits",
    [
        ("mimic3-demo", 100, 129),
        ("mimic4-demo", 100, 275),
        ("synthea-demo", 111, None),
    ],
)
def test_demo_source_stats(source, patients, visits):
    out = stats_json("--source", source)
    assert KEYS <= set(out)
    assert out["source"] == source
    assert out["patients"] == patients
    if visits is not None:
        assert out["visits"] == visits
    assert out["visits"] >= out["patients"]
    assert 0 < out["multi_visit_patients"] < out["patients"]
    for key in ("diagnoses", "procedures", "medications"):
        assert isinstance(out[key], int) and out[key] > 0, key
    assert 0 < out["unmapped_medication_rows"] < out["medication_rows"]
    share = 1 - out["unmapped_medication_rows"] / out["medication_rows"]
    assert out["mapped_share"] == pytest.approx(share, abs=1e-4)


def test_mimic_multi_visit_counts():
    # read off ADMISSIONS by hand: 14 of the MIMIC-III demo patients came back, 48 in MIMIC-IV
    assert stats_json("--source", "mimic3-demo")["multi_visit_patients"] == 14
    assert stats_json("--source", "mimic4-demo")["multi_visit_patients"] == 48


def test_path_gives_the_same_numbers_as_the_source():
    by_source = stats_json("--source", "mimic3-demo")
    by_path = stats_json("--path", "assets/data/mimic3_demo", "--format", "mimic3")
    assert by_path.pop("source") == "mimic3:mimic3_demo"
    by_source.pop("source")
    assert by_path == by_source


def test_plain_output_prints_the_same_keys_and_values():
    out = stats_json("--source", "mimic3-demo")
    lines = stats("--source", "mimic3-demo").stdout.splitlines()
    printed = dict(line.split(None, 1) for line in lines)
    assert list(printed) == list(out)
    for key, value in out.items():
        if isinstance(value, (int, float, str)):
            assert printed[key] == str(value), key
    assert printed["patients"] == "100"
    assert printed["visits"] == "129"
