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
    assert r.returncode == 2 and "no known code" in r.stderr and "base rates" in r.stderr


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
