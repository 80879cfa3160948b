"""Drafts of the open visit (app.medication.state over app.storage.records): kept as the visit
changes, restored when the patient is opened again, hidden (never deleted) by closing the
patient or the kiosk's idle timeout, discarded on request, deleted by saving; a visit saved in
another session is taken into the open visit's past and re-scored."""

from __future__ import annotations

import pytest

from app.medication.state import PatientForm, draft_snapshot
from app.state import AppState


@pytest.fixture
def app_state(tiny_bundle, tmp_path):
    s = AppState.open(tiny_bundle, tmp_path / "pocketrec.db", kiosk=True, idle_timeout=30)
    yield s
    s.history.close()


def _dx(state, n=2):
    return [c for c in state.bundle.vocabs["diagnoses"] if c not in ("<pad>", "<unk>")][:n]


def test_draft_round_trip_through_close_and_reopen(app_state):
    med = app_state.medication
    patient = med.create_patient(PatientForm("Draft Patient"))
    assert med.sync_draft() is False  # nothing entered: nothing written
    assert med.history.get_draft(patient["id"]) is None
    visit = med.visit
    for code in _dx(med):
        visit.add_code("dx", code)
    visit.suggest()
    drug = visit.suggestions()[0].code
    visit.accept(drug)
    visit.note = "half-written note"
    assert med.sync_draft() is True
    assert med.sync_draft() is False  # unchanged: no second write
    stored = med.history.get_draft(patient["id"])
    assert stored["data"]["diagnoses"] == _dx(med)
    assert stored["data"]["decisions"] == {drug: "accepted"}

    visit.note = "half-written note, more"
    med.close_patient()  # flushes the last change, keeps the draft
    assert med.patient is None
    assert med.history.get_draft(patient["id"])["data"]["note"] == "half-written note, more"

    med.open_patient(patient["id"])
    assert med.draft_restored
    again = med.visit
    assert again.diagnoses == _dx(med) and again.note == "half-written note, more"
    assert again.decisions == {drug: "accepted"}
    assert again.recommendation is not None  # re-scored, the decision beside its suggestion
    assert draft_snapshot(again) == med.history.get_draft(patient["id"])["data"]


def test_idle_timeout_hides_the_draft_and_never_deletes_it(app_state):
    med = app_state.medication
    patient = med.create_patient(PatientForm("Idle Patient"))
    med.visit.add_code("dx", _dx(med, 1)[0])
    app_state.on_idle()  # the kiosk's timeout, before any poll wrote the draft
    assert med.patient is None and med.visit is None
    assert med.history.get_draft(patient["id"])["data"]["diagnoses"] == _dx(med, 1)
    med.open_patient(patient["id"])
    assert med.visit.diagnoses == _dx(med, 1) and med.draft_restored


def test_discard_and_save_remove_the_draft(app_state):
    med = app_state.medication
    patient = med.create_patient(PatientForm("Discard Patient"))
    med.visit.add_code("dx", _dx(med, 1)[0])
    med.sync_draft()
    med.discard_draft()
    assert med.history.get_draft(patient["id"]) is None
    assert med.visit.diagnoses == [] and not med.draft_restored
    assert any(a["action"] == "discard_draft" for a in med.history.audit(patient["id"]))

    med.visit.add_code("dx", _dx(med, 1)[0])
    med.sync_draft()
    med.visit.save()  # the same transaction deletes the draft
    assert med.history.get_draft(patient["id"]) is None
    med.new_visit()
    assert med.sync_draft() is False and med.history.get_draft(patient["id"]) is None


def test_emptying_the_visit_deletes_the_draft(app_state):
    med = app_state.medication
    patient = med.create_patient(PatientForm("Empty Patient"))
    code = _dx(med, 1)[0]
    med.visit.add_code("dx", code)
    med.sync_draft()
    med.visit.remove_code("dx", code)
    assert med.sync_draft() is True
    assert med.history.get_draft(patient["id"]) is None


def test_a_visit_saved_in_another_session_is_taken_in_and_rescored(app_state):
    tab_a = app_state.medication
    tab_b = app_state.session().medication
    patient = tab_a.create_patient(PatientForm("Two Tabs"))
    dx = _dx(tab_a)
    tab_a.visit.add_code("dx", dx[0])
    tab_a.visit.suggest()
    before = tab_a.visit
    assert tab_a.check_other_saves() == []

    tab_b.open_patient(patient["id"])
    tab_b.visit.add_code("dx", dx[1])
    tab_b.visit.suggest()
    tab_b.visit.accept(tab_b.visit.suggestions()[0].code)
    saved = tab_b.visit.save()
    tab_b.new_visit()
    assert tab_b.check_other_saves() == [] and tab_b.check_other_saves() == []  # its own save

    assert tab_a.check_other_saves() == []  # seen once: not yet (an own save may be under way)
    taken = tab_a.check_other_saves()
    assert [v["id"] for v in taken] == [saved]
    assert tab_a.visit is not before
    assert [v.visit_id for v in tab_a.visit.past] == [saved]
    assert tab_a.visit.diagnoses == [dx[0]]  # what was entered here stays
    assert tab_a.visit.recommendation is not None
    assert tab_a.check_other_saves() == [] and tab_a.other_saves == taken


def test_accent_insensitive_patient_search(app_state):
    med = app_state.medication
    jose = med.history.add_patient("José Núñez")
    zoe = med.history.add_patient("ZOË Brontë")
    assert [p["id"] for p in med.search_patients("jose")] == [jose]
    assert [p["id"] for p in med.search_patients("nunez")] == [jose]
    assert [p["id"] for p in med.search_patients("JOSÉ")] == [jose]
    assert [p["id"] for p in med.search_patients("zoe bron")] == [zoe]
