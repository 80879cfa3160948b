"""A few concurrent Flet protocol clients (bench/kiosk_protocol_load.py, no browser) doing whole
visits on one web server for a short while: no errors, every session saves at least one visit,
and the database check finds nothing lost or partial and passes its integrity check.

Bounded by the bench's own deadlines (load, per-step and grace timeouts, then cancellation and
the server stopped); the timeouts are generous and nothing about speed is asserted, so a busy
2-core machine only makes fewer visits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("flet")
pytest.importorskip("flet_web")
pytest.importorskip("websockets")

from bench.harness.bundles import sound_bundle  # noqa: E402

pytestmark = pytest.mark.slow

SESSIONS = 4
SECONDS = 15.0


@pytest.fixture(scope="module")
def bench():
    from bench import kiosk_protocol_load

    return kiosk_protocol_load


@pytest.fixture
def bundle_dir(request) -> Path:
    """The shipped bundle when it is there and sound, else the tiny test bundle
    ($POCKETREC_PROTOCOL_BUNDLE=tiny forces the tiny one, or names another bundle folder)."""
    chosen = sound_bundle(os.environ.get("POCKETREC_PROTOCOL_BUNDLE", ""))
    return chosen or request.getfixturevalue("tiny_bundle")


def test_protocol_clients_save_every_visit(bench, bundle_dir: Path, tmp_path: Path):
    cfg = bench.Config(
        sessions=SESSIONS,
        seconds=SECONDS,
        load_timeout=120.0,
        step_timeout=60.0,
        grace=90.0,
        bundle=str(bundle_dir),
    )
    result = bench.run_load(cfg, out=tmp_path / "kiosk_protocol_load.json")
    summary, db = result["summary"], result["db_check"]
    report = result["table_markdown"]
    assert summary["sessions_loaded"] == SESSIONS, report
    assert result["errors"] == [], report
    assert summary["min_visits_per_session"] >= 1, report
    assert db["visits_confirmed"] >= SESSIONS, report
    assert db["lost"] == 0, report
    assert db["partial"] == 0, report
    assert db["mismatched"] == 0, report
    assert db["patients_confirmed_missing"] == 0, report
    assert db["integrity_check"] == ["ok"], report
    assert summary["patch_targets_missing"] == 0, report
    assert result["server_log_errors"] == [], report
    assert result["verdict"] == "PASS", report
