"""Child process of tests/test_draft_crash.py: a clinician drafting a visit as fast as possible.

    python tests/draft_writer.py BUNDLE DB_PATH

Opens the app's state on BUNDLE and DB_PATH, creates a patient, prints `READY <patient id>`,
then forever: one "keystroke batch" (a few characters appended to the note, now and then a
diagnosis), `sync_draft()` as the app's watch does once a second, and `SYNCED <n>` (flushed)
once the draft with `n` batches is on disk. Runs until it is killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.medication.state import PatientForm  # noqa: E402
from app.state import AppState  # noqa: E402


def main() -> None:
    bundle, db_path = sys.argv[1], sys.argv[2]
    state = AppState.open(bundle, db_path)
    med = state.medication
    patient = med.create_patient(PatientForm("Draft Crash Patient"))
    codes = [c for c in med.bundle.vocabs["diagnoses"] if c not in ("<pad>", "<unk>")][:5]
    print(f"READY {patient['id']}", flush=True)
    n = 0
    while True:
        n += 1
        visit = med.visit
        visit.note = f"{visit.note}b{n};"
        if n % 7 == 0 and codes:
            visit.add_code("dx", codes[(n // 7) % len(codes)])
        med.sync_draft()
        print(f"SYNCED {n}", flush=True)


if __name__ == "__main__":
    main()
