"""Child process of tests/test_crash.py: save visits into a History as fast as possible.

    python tests/crash_writer.py DB_PATH SEED

Prints `READY <patient id>` once the database is open, then, for each visit, one line
`VISIT <visit id> <n suggestions> <n decisions>` (flushed) only after `save_visit` returned,
i.e. after its COMMIT. Each visit's note repeats the counts, so the parent can check visits the
child committed but was killed before reporting. Runs until it is killed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.storage.database import History  # noqa: E402

CHOICES = ("accepted", "rejected", "added")


def main() -> None:
    db_path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    history = History(db_path)
    patient = history.add_patient(f"crash patient {seed}", {"gender": rng.choice("FM")})
    print(f"READY {patient}", flush=True)
    while True:
        n_suggestions = rng.randint(1, 12)
        n_decisions = rng.randint(0, n_suggestions)
        suggestions = [
            {"code": f"ATC{k:02d}", "probability": rng.random(), "suggested": k < 3}
            for k in range(n_suggestions)
        ]
        decisions = {s["code"]: rng.choice(CHOICES) for s in suggestions[:n_decisions]}
        visit_id = history.save_visit(
            patient,
            [f"DX{rng.randrange(900)}" for _ in range(rng.randint(1, 6))],
            [f"PX{rng.randrange(300)}" for _ in range(rng.randint(0, 3))],
            suggestions,
            decisions,
            note=f"s={n_suggestions} d={n_decisions}",
            bundle_name="crash-bundle",
            bundle_version=f"seed-{seed}",
        )
        print(f"VISIT {visit_id} {n_suggestions} {n_decisions}", flush=True)


if __name__ == "__main__":
    main()
