"""The check after a kiosk load run that every visit the UI confirmed is in the database,
whole, as entered.

It runs after the server has stopped, with the app's own `History` on the DB: for each
session's patients (looked up by exact name), every confirmed visit must be there, matched by
the id prefix the UI showed (else it is LOST), and whole: its suggestions, its decisions and
its `save_visit` audit row (else PARTIAL); its diagnoses and accepted drugs must be those
entered (else mismatched); `PRAGMA integrity_check` must say ok. The sessions' `samples` and
`patients` are the records bench/harness/kiosk_session.py keeps.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.storage.database import History
from bench.harness.app_ui import ident


def check_database(db: Path, sessions: list) -> dict:
    """Every confirmed visit present and whole; content as entered; integrity_check."""
    report: dict = {
        "visits_confirmed": 0,
        "visits_in_db": 0,
        "visits_in_db_total": 0,
        "lost": 0,
        "partial": 0,
        "mismatched": 0,
        "unconfirmed_in_db": 0,
        "patients_attempted": 0,
        "patients_confirmed": 0,
        "patients_confirmed_missing": 0,
        "patients_duplicated": 0,
        "problems": [],
    }
    expected: dict[str, list[dict]] = {}
    for s in sessions:
        for sample in s.samples:
            if sample.get("save_confirmed"):
                expected.setdefault(sample["patient"], []).append(sample)
    history = History(db)
    try:
        for s in sessions:
            for patient in s.patients:
                name = patient["name"]
                report["patients_attempted"] += 1
                report["patients_confirmed"] += patient["created_confirmed"]
                rows = [r for r in history.search_patients(name) if r["display_name"] == name]
                if len(rows) > 1:
                    report["patients_duplicated"] += 1
                    report["problems"].append(f"{name}: {len(rows)} patients with this name")
                if not rows and patient["created_confirmed"]:
                    report["patients_confirmed_missing"] += 1
                    report["problems"].append(f"{name}: confirmed by the UI, not in the DB")
                visits, audit_ids = [], set()
                for row in rows:
                    visits += history.timeline(row["id"])
                    audit_ids |= {
                        a["visit_id"]
                        for a in history.audit(row["id"])
                        if a["action"] == "save_visit"
                    }
                report["visits_in_db"] += len(visits)
                by_prefix = {v["id"][:8]: v for v in visits}
                for v in visits:
                    whole = bool(v["suggestions"]) and bool(v["decisions"]) and v["id"] in audit_ids
                    if not whole:
                        report["partial"] += 1
                        report["problems"].append(
                            f"{name}: visit {v['id'][:8]} is partial (suggestions "
                            f"{len(v['suggestions'])}, decisions {len(v['decisions'])}, audit "
                            f"{v['id'] in audit_ids})"
                        )
                confirmed = expected.get(name, [])
                report["visits_confirmed"] += len(confirmed)
                matched = set()
                for sample in confirmed:
                    visit = by_prefix.get(sample["visit_prefix"])
                    if visit is None:
                        report["lost"] += 1
                        report["problems"].append(
                            f"{name}: confirmed visit {sample['visit_prefix']} is LOST"
                        )
                        continue
                    matched.add(visit["id"])
                    accepted = sorted(
                        ident(c) for c, d in visit["decisions"].items() if d == "accepted"
                    )
                    if visit["diagnoses"] != sample["diagnoses"] or accepted != sorted(
                        sample["accepted"]
                    ):
                        report["mismatched"] += 1
                        report["problems"].append(
                            f"{name}: visit {visit['id'][:8]} has diagnoses {visit['diagnoses']} "
                            f"accepted {accepted}; entered {sample['diagnoses']} "
                            f"accepted {sorted(sample['accepted'])}"
                        )
                report["unconfirmed_in_db"] += len([v for v in visits if v["id"] not in matched])
        (report["visits_in_db_total"],) = history.db.conn.execute(
            "SELECT count(*) FROM visits"
        ).fetchone()
    finally:
        history.close()
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        report["integrity_check"] = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        counts = {}
        for table in ("patients", "visits", "suggestions", "decisions", "audit"):
            (counts[table],) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        report["table_rows"] = counts
    finally:
        conn.close()
    report["problems"] = report["problems"][:200]
    return report


def db_failures(db_check: dict) -> list[str]:
    """What `check_database` found wrong, as the verdict names it."""
    failures = [
        f"{db_check[key]} {label}"
        for key, label in (
            ("lost", "lost"),
            ("partial", "partial"),
            ("mismatched", "mismatched"),
            ("patients_confirmed_missing", "confirmed patients missing"),
        )
        if db_check[key]
    ]
    if db_check["integrity_check"] != ["ok"]:
        failures.append("integrity_check not ok")
    return failures
