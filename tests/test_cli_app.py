"""`pocketrec app backup` / `restore` through the real CLI on real SQLite files."""

from __future__ import annotations

import json
import subprocess
import sys

from app.storage.database import History


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_backup_then_restore_keeps_every_visit(tmp_path):
    db = tmp_path / "live.db"
    h = History(db)
    pid = h.add_patient("Ada", {"gender": "F"})
    vid = h.save_visit(
        pid,
        ["icd9cm:4019"],
        [],
        [{"code": "C07A", "probability": 0.8, "suggested": True}],
        {"C07A": "accepted"},
        "",
        "demo",
        "v1",
    )
    h.close()
    r = cli("app", "backup", "--db", str(db), "--out", str(tmp_path / "b.db"))
    assert r.returncode == 0, r.stderr
    r = cli("app", "restore", "--backup", str(tmp_path / "b.db"), "--db", str(tmp_path / "new.db"))
    assert r.returncode == 0, r.stderr
    restored = History(tmp_path / "new.db")
    visits = restored.timeline(pid)
    assert [v["id"] for v in visits] == [vid]
    restored.close()


def test_restore_refuses_a_file_that_is_not_a_pocketrec_database(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    r = cli("app", "restore", "--backup", str(junk), "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2
    assert r.stderr.startswith("pocketrec: error:") and "junk.db" in r.stderr
    assert "Traceback" not in r.stderr


def test_app_refuses_an_unusable_database_or_bundle_before_serving(tmp_path):
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    result = cli("app", "--web", "--db", str(folder))
    assert result.returncode == 2
    assert "pocketrec: error: app:" in result.stderr and "is a folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("app", "--web", "--db", str(tmp_path / "ok.db"), "--bundle", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pocketrec: error: app:" in result.stderr


# ------------------------------------------------------------------ pocketrec recommend


def recommend(*args: str) -> subprocess.CompletedProcess:
    return cli("recommend", *args)


def test_no_known_code_is_refused_plainly():
    r = recommend("--dx", "XYZ123")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "XYZ123" in r.stderr and "icd9cm:" in r.stderr and "icd10cm:" in r.stderr
    r = recommend("--dx", "icd9cm:XYZ123")
    assert r.returncode == 2 and "no known code" in r.stderr and "empty visit" in r.stderr


def test_an_unknown_code_moves_no_score_and_is_reported_once():
    known = json.loads(recommend("--dx", "icd9cm:4280", "--json").stdout)
    more = recommend("--dx", "icd9cm:4280,icd9cm:ZZZZ,icd10cm:QQQ9", "--json")
    assert more.returncode == 0, more.stderr
    out = json.loads(more.stdout)
    assert out["drugs"] == known["drugs"]
    assert out["unknown_codes"] == ["icd9cm:ZZZZ", "icd10cm:QQQ9"]
    text = recommend("--dx", "icd9cm:4280,icd9cm:ZZZZ")
    assert text.returncode == 0 and text.stderr == ""
    assert text.stdout.count("icd9cm:ZZZZ") == 1 and "left out of the scores" in text.stdout


def test_a_code_read_through_its_category_is_not_refused():
    # icd9cm:4011 is not in the shipped vocabulary, its category icd9cm:401 is
    r = recommend("--dx", "icd9cm:4011", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unknown_codes"] == ["icd9cm:4011"]
    assert out["unknown_read_through_category"] == ["icd9cm:4011"]
    assert "read only through their ICD category" in recommend("--dx", "icd9cm:4011").stdout


def test_repeated_code_options_add_up():
    once = json.loads(recommend("--dx", "icd9cm:4280,icd9cm:42731", "--json").stdout)
    twice = json.loads(recommend("--dx", "icd9cm:4280", "--dx", "icd9cm:42731", "--json").stdout)
    assert twice["diagnoses"] == ["icd9cm:4280", "icd9cm:42731"]
    assert twice["drugs"] == once["drugs"]


def test_system_prefixes_in_any_case_and_semicolons_explained():
    lower = json.loads(recommend("--dx", "icd9cm:4019", "--json").stdout)
    upper = json.loads(recommend("--dx", "ICD9CM:4019", "--json").stdout)
    assert upper["diagnoses"] == ["icd9cm:4019"] and upper["drugs"] == lower["drugs"]
    r = recommend("--dx", "icd9cm:4019;icd9cm:4280")
    assert r.returncode == 2 and "commas" in r.stderr


def test_history_files_are_checked_visit_by_visit(tmp_path):
    cases = {
        '[{"diagnoses": "icd9cm:4280"}]': 'visit 1: "diagnoses" must be a list of code strings',
        '[{"diagnoses": [4280]}]': 'visit 1: "diagnoses" must be a list of code strings',
        '[{"diagnoses": ["icd9cm:4280"]}, {"diagnosis": ["icd9cm:4280"]}]': (
            "visit 2: unknown key(s) 'diagnosis'"
        ),
        '{"diagnoses": []}': "not a list of visits",
        '[{"diagnoses": ["4280"]': "not JSON",
    }
    for text, message in cases.items():
        f = tmp_path / "h.json"
        f.write_text(text, encoding="utf-8")
        r = recommend("--dx", "icd9cm:4019", "--history", str(f))
        assert r.returncode == 2 and "Traceback" not in r.stderr, (text, r.stderr)
        assert message in r.stderr and str(f) in r.stderr, (text, r.stderr)
    # codes without their system prefix are resolved in the history as in --dx
    bare, full = tmp_path / "bare.json", tmp_path / "full.json"
    bare.write_text('[{"diagnoses": ["4280"], "medications": ["C03C"]}]', encoding="utf-8")
    full.write_text('[{"diagnoses": ["icd9cm:4280"], "medications": ["C03C"]}]', encoding="utf-8")
    a = json.loads(recommend("--dx", "icd9cm:4019", "--history", str(bare), "--json").stdout)
    b = json.loads(recommend("--dx", "icd9cm:4019", "--history", str(full), "--json").stdout)
    assert a["drugs"] == b["drugs"] and a["unknown_codes"] == []


def test_a_code_without_its_system_is_resolved_when_unambiguous():
    bare = json.loads(recommend("--dx", "4019,427.31", "--json").stdout)
    full = json.loads(recommend("--dx", "icd9cm:4019,icd9cm:42731", "--json").stdout)
    assert bare["diagnoses"] == ["icd9cm:4019", "icd9cm:42731"]
    assert bare["drugs"] == full["drugs"] and bare["unknown_codes"] == []


def test_a_malformed_or_unknown_profile_field_is_refused():
    for bad in ("gender", "gender=", "sex=F"):
        r = recommend("--dx", "icd9cm:4019", "--profile", bad)
        assert r.returncode == 2 and "--profile" in r.stderr and "gender" in r.stderr, bad
    r = recommend("--dx", "icd9cm:4019", "--profile", "gender=F,age_band=70-79", "--json")
    assert r.returncode == 0, r.stderr


def test_text_output_explains_the_marker_the_cut_and_both_drugs_of_a_pair():
    r = recommend("--dx", "4280,42731,25000", "--profile", "gender=F")
    assert r.returncode == 0, r.stderr
    out = json.loads(
        recommend("--dx", "4280,42731,25000", "--profile", "gender=F", "--json").stdout
    )
    assert "* = suggested" in r.stdout and f"threshold {out['threshold']:.2f}" in r.stdout
    assert out["n_suggested"] > out["shown"] == 10  # the default cap cuts this visit
    assert f"10 of {out['n_suggested']} suggested classes shown" in r.stdout
    pair = out["ddi"][0]
    assert set(pair) == {"a", "name_a", "b", "name_b"}
    line = next(x for x in r.stdout.splitlines() if x.startswith("! interaction"))
    assert pair["a"] in line and pair["name_a"] in line and pair["b"] in line
    assert pair["name_b"] in line and "GAMENet/TWOSIDES" in r.stdout
    every = json.loads(
        recommend(
            "--dx", "4280,42731,25000", "--profile", "gender=F", "--top", "0", "--json"
        ).stdout
    )
    assert every["suggested_not_shown"] == 0 and len(every["drugs"]) > out["n_suggested"]
