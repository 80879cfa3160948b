"""Child process of tests/test_history_disk_full.py: run the history on a really full disk.

    python tests/disk_full_writer.py MODE DIR [LIVE_DB]

DIR is an empty tmpfs of a few hundred KiB that the test mounted for this process alone (in a
private mount namespace, see `unshare(1)`), so "No space left on device" comes from the kernel,
not from a mock. The mount goes away with the process, so everything is checked here and
reported as one JSON object on stdout:

- `save`: open a History in DIR, write a filler file, save visits until one fails; check that
  every visit `save_visit` returned reads back whole and that nothing else is there; free the
  filler and save again;
- `open`: fill DIR to the last byte, open a new History there (create + migrate); free and open
  again; then close it, fill DIR again and reopen the existing file;
- `backup`: LIVE_DB lives elsewhere; with DIR nearly full, `pocketrec app backup --out DIR/...`
  (the real CLI) and `export_all` into DIR; free and back up again.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.storage.database import History  # noqa: E402

CHOICES = ("accepted", "rejected", "added")
MAX_VISITS = 5000  # a 1 MiB disk fills after a few dozen; stop rather than loop forever


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a filler file until the disk is full, then give `leave` bytes back."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):  # unbuffered: no flush left to fail at close
            pass
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)}


def sound(path: Path) -> dict:
    """What a brand-new connection sees: integrity, foreign keys, and whether every visit is
    whole (its note says how many suggestions and decisions it has, and it has one audit row)."""
    conn = sqlite3.connect(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        visits = dict(conn.execute("SELECT id, note FROM visits"))
        n_s = dict(conn.execute("SELECT visit_id, count(*) FROM suggestions GROUP BY visit_id"))
        n_d = dict(conn.execute("SELECT visit_id, count(*) FROM decisions GROUP BY visit_id"))
        audits = dict(
            conn.execute(
                "SELECT visit_id, count(*) FROM audit WHERE action = 'save_visit' GROUP BY visit_id"
            )
        )
    finally:
        conn.close()
    partial = sum(
        1
        for vid, note in visits.items()
        if note != f"s={n_s.get(vid, 0)} d={n_d.get(vid, 0)}" or audits.get(vid) != 1
    )
    partial += len((set(n_s) | set(n_d) | set(audits)) - set(visits))  # rows of no visit
    return {
        "integrity": integrity,
        "fk_violations": len(fk),
        "visits": len(visits),
        "partial": partial,
    }


def new_visit(rng: random.Random) -> dict:
    n_s = rng.randint(1, 12)
    n_d = rng.randint(0, n_s)
    suggestions = [
        {"code": f"ATC{k:02d}", "probability": round(rng.random(), 6), "suggested": k < 3}
        for k in range(n_s)
    ]
    return {
        "diagnoses": [f"DX{rng.randrange(900)}" for _ in range(rng.randint(1, 6))],
        "procedures": [f"PX{rng.randrange(300)}" for _ in range(rng.randint(0, 3))],
        "suggestions": suggestions,
        "decisions": {s["code"]: rng.choice(CHOICES) for s in suggestions[:n_d]},
        "note": f"s={n_s} d={n_d}",
    }


def big_visit(rng: random.Random) -> dict:
    """A visit with a 64 KiB note: more than any slack a full disk or database has left."""
    return {**new_visit(rng), "note": "x" * 65536}


def as_read(visit: dict) -> dict:
    """The fields of a timeline entry that save_visit wrote."""
    keys = ("diagnoses", "procedures", "suggestions", "decisions", "note")
    out = {key: visit[key] for key in keys}
    out["suggestions"] = [
        {"code": s["code"], "probability": s["probability"], "suggested": s["suggested"]}
        for s in visit["suggestions"]
    ]
    return out


def save_mode(folder: Path) -> dict:
    db = folder / "pocketrec.db"
    rng = random.Random(20251126)
    history = History(db)
    patient = history.add_patient("full disk patient")
    filler = folder / "filler"
    filler.write_bytes(b"\0" * 256 * 1024)  # freed later to make room again
    committed: dict[str, dict] = {}
    failure = None
    while len(committed) < MAX_VISITS:
        visit = new_visit(rng)
        try:
            committed[history.save_visit(patient, **visit)] = visit
        except Exception as exc:
            failure = error(exc)
            break
    report: dict = {"db": str(db), "committed": len(committed), "error": failure}
    report["in_transaction_after"] = history.db.conn.in_transaction

    # every visit that save_visit returned, whole, and nothing else
    timeline = {v["id"]: as_read(v) for v in history.timeline(patient)}
    report["read_back"] = sum(1 for vid, v in committed.items() if timeline.get(vid) == v)
    report["extra"] = len(set(timeline) - set(committed))
    report["model_history"] = len(history.history_for_model(patient))
    report["on_disk"] = sound(db)

    # still full: a visit that needs room fails the same clean way, and leaves nothing either
    try:
        history.save_visit(patient, **big_visit(rng))
        report["second_error"] = None
    except Exception as exc:
        report["second_error"] = error(exc)

    filler.unlink()
    visit = new_visit(rng)
    try:
        vid = history.save_visit(patient, **visit)
        committed[vid] = visit
        report["saved_after_free"] = as_read(history.timeline(patient)[0]) == visit
    except Exception as exc:
        report["saved_after_free"] = error(exc)
    history.close()
    with History(db) as again:  # a fresh connection (WAL recovery) sees exactly the same
        timeline = {v["id"]: as_read(v) for v in again.timeline(patient)}
    report["read_back_after_reopen"] = sum(
        1 for vid, v in committed.items() if timeline.get(vid) == v
    )
    report["visits_after_reopen"] = len(timeline)
    report["final"] = sound(db)
    return report


def open_mode(folder: Path) -> dict:
    db = folder / "pocketrec.db"
    filler = fill(folder)
    report: dict = {"db": str(db)}
    try:
        History(db).close()
        report["create_error"] = None
    except Exception as exc:
        report["create_error"] = error(exc)
    filler.unlink()
    with History(db) as history:
        patient = history.add_patient("opened after freeing space")
        history.save_visit(patient, **new_visit(random.Random(1)))
        report["migrations"] = [
            r[0] for r in history.db.conn.execute("SELECT name FROM _migrations ORDER BY rowid")
        ]
    filler = fill(folder)
    try:  # a cleanly closed file: SQLite must allocate its -shm file again, on a full disk
        with History(db) as history:
            report["reopen_full"] = {"visits": len(history.timeline(patient))}
    except Exception as exc:
        report["reopen_full"] = error(exc)
    filler.unlink()
    with History(db) as history:
        report["visits_after_free"] = len(history.timeline(patient))
    report["final"] = sound(db)
    return report


def backup_mode(folder: Path, live: Path) -> dict:
    out = folder / "backup.db"
    conn = sqlite3.connect(live)
    size = (
        conn.execute("PRAGMA page_count").fetchone()[0]
        * conn.execute("PRAGMA page_size").fetchone()[0]
    )
    conn.close()
    cli = [sys.executable, "-m", "pocketrec.cli", "app", "backup", "--db", str(live), "--out"]
    report: dict = {"live_bytes": size, "out": str(out)}

    filler = fill(folder, leave=size // 3)  # room for a third of the copy: fails half-way
    run = subprocess.run([*cli, str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    left = sorted(p.name for p in folder.iterdir() if p != filler)
    report["full"] = {"rc": run.returncode, "stderr": run.stderr, "left": left}

    filler.unlink()
    filler = fill(folder)  # to the last byte: not even the first CSV of an export fits
    with History(live) as history:
        try:
            history.export_all(folder / "export")
            report["export_error"] = None
        except Exception as exc:
            report["export_error"] = error(exc)
    export = folder / "export"
    report["export_left"] = sorted(os.listdir(export)) if export.is_dir() else []

    filler.unlink()
    run = subprocess.run([*cli, str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    report["after_free"] = {"rc": run.returncode, "stderr": run.stderr}
    report["backup"] = sound(out) if out.exists() else None
    report["live"] = sound(live)
    return report


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "save":
        report = save_mode(folder)
    elif mode == "open":
        report = open_mode(folder)
    elif mode == "backup":
        report = backup_mode(folder, Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
