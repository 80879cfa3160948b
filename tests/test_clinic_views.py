"""The clinic's views and shell pieces that need no browser: the new-patient form (every field a
drop-down, a source's "?" not offered), the Export view in kiosk mode, the shipped fonts (page
fallback, served by the web client's own folder), scroll activity wiring."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import flet as ft
import pytest

from app.fonts import FONTS, FontLoader, apply_fonts, families_for, font_files
from app.shell import _watch_scrolling
from app.state import AppState
from app.views.export import ExportView
from app.views.patients import UNKNOWN, PatientsView


@pytest.fixture
def shell(tiny_bundle, tmp_path):
    def make(kiosk: bool = False):
        state = AppState.open(tiny_bundle, tmp_path / f"k{kiosk}" / "p.db", kiosk=kiosk)
        made.append(state)
        return SimpleNamespace(state=state, page=None, notify=lambda *a, **k: None)

    made: list[AppState] = []
    yield make
    for state in made:
        state.history.close()


def test_new_patient_form_is_drop_downs_without_a_sources_unknown(shell, monkeypatch):
    s = shell()
    options = s.state.medication.profile_options()
    options["language"] = ["?", "ENGLISH"]
    monkeypatch.setattr(s.state.medication, "profile_options", lambda: options)
    view = PatientsView(s)
    assert all(isinstance(c, ft.Dropdown) for c in view.fields.values())
    language = [o.key for o in view.fields["language"].options]
    assert language == [UNKNOWN, "ENGLISH"]
    religion = view.fields["religion"]
    if not options.get("religion"):
        assert "not used by this model" in religion.label
    # before any search: no "No patient found."; a hint instead
    view.refresh()
    texts = [c.content.value for c in view.results.content.controls]
    assert texts == ["No patients yet: create one below."]
    s.state.history.add_patient("José Núñez")
    view.search.value = "jose"
    view.refresh()
    assert len(view.results.content.controls) == 1


def test_export_view_in_kiosk_mode_has_no_folder_and_no_whole_history(shell):
    kiosk = ExportView(shell(kiosk=True))
    kiosk.refresh()
    assert kiosk.folder_box.visible is False and kiosk.all_button.disabled is True
    assert "Kiosk mode" in kiosk.kiosk_note.value
    normal = ExportView(shell())
    normal.refresh()
    assert normal.folder_box.visible is True and not normal.all_button.disabled


def test_shipped_fonts_are_the_themes_fallback_and_served_locally(monkeypatch, tmp_path):
    files = font_files()
    assert len(files) == len(FONTS)
    assert sum(p.stat().st_size for p in files) < 12_000_000
    page = SimpleNamespace(theme=ft.Theme(color_scheme_seed=ft.Colors.BLUE), fonts=None)
    apply_fonts(page)
    assert set(page.fonts) == set(FONTS)
    assert all(v.startswith("fonts/") for v in page.fonts.values())
    assert page.theme.text_theme.body_medium.font_family_fallback == list(FONTS)
    assert page.theme.color_scheme_seed == ft.Colors.BLUE
    assert families_for("Zoë Ñúñez Ζωή Юлия") == set()
    assert families_for("李小龍 علي 😀") == {
        "Noto Sans CJK",
        "Noto Sans Arabic",
        "Noto Color Emoji",
    }
    lazy = SimpleNamespace(theme=None, fonts=None)
    loader = FontLoader(lazy)
    assert loader.need("Maria Lopez") is False and lazy.fonts is None
    assert loader.need("علي") is True and list(lazy.fonts) == ["Noto Sans Arabic"]
    assert loader.need("علي") is False
    assert loader.need("김민준") is True and set(lazy.fonts) == {
        "Noto Sans Arabic",
        "Noto Sans CJK",
    }
    assert lazy.theme.text_theme.body_large.font_family_fallback == [
        "Noto Sans Arabic",
        "Noto Sans CJK",
    ]
    from app import web_offline

    monkeypatch.setattr(web_offline.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "web"))
    (tmp_path / "web").mkdir()
    folder = Path(web_offline.prepare_client(8550))
    assert sorted(p.name for p in (folder / "fonts").iterdir()) == sorted(p.name for p in files)
    licences = list(files[0].parent.glob("copyright-*.txt"))
    assert len(licences) == 3


def test_scrollable_columns_report_activity():
    inner = ft.Column([ft.Text("x")], scroll=ft.ScrollMode.AUTO)
    own = ft.Column(scroll=ft.ScrollMode.AUTO, on_scroll=lambda e: None)
    root = ft.Container(ft.Row([inner, own, ft.Column([ft.Text("plain")])]))

    def handler(e) -> None:
        pass

    _watch_scrolling(root, handler)
    assert inner.on_scroll is handler and inner.scroll_interval == 1000
    assert own.on_scroll is not handler


@pytest.mark.skipif(os.name != "posix", reason="the sweep is POSIX only")
def test_a_killed_servers_client_folder_is_swept_by_the_next_start(tmp_path):
    """A server killed with SIGKILL runs no exit handler and leaves its 8 MB client folder;
    the next start removes folders whose owner process is gone, and only those."""
    import subprocess
    import sys

    from app import web_offline

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        folders = {}
        for name, pid in (("dead", gone.pid), ("live", live.pid), ("mine", os.getpid())):
            folders[name] = tmp_path / f"{web_offline.CLIENT_PREFIX}{name}"
            (folders[name] / "fonts").mkdir(parents=True)
            (folders[name] / web_offline.OWNER_FILE).write_text(str(pid))
        folders["unowned"] = tmp_path / f"{web_offline.CLIENT_PREFIX}unowned"
        folders["unowned"].mkdir()  # no owner file (yet): left alone
        folders["odd"] = tmp_path / f"{web_offline.CLIENT_PREFIX}odd"
        folders["odd"].mkdir()  # not a process id at all: left alone, and no crash
        (folders["odd"] / web_offline.OWNER_FILE).write_text("99999999999999999999")
        other = tmp_path / "someone-else"
        other.mkdir()
        (other / web_offline.OWNER_FILE).write_text(str(gone.pid))
        removed = web_offline.sweep_stale_clients(tmp_path)
        assert removed == [folders["dead"]]
        assert not folders["dead"].exists() and other.exists()
        assert all(folders[k].exists() for k in ("live", "mine", "unowned", "odd"))
    finally:
        live.kill()
        live.wait()


def test_a_visit_the_model_reads_nothing_of_shows_why_instead_of_suggestions(shell):
    from app.medication.state import PatientForm
    from app.views.visit import VisitView

    s = shell()
    med = s.state.medication
    med.create_patient(PatientForm(display_name="Una Known"))
    view = VisitView(s)
    med.visit.add_code("dx", "icd9cm:99999")  # neither it nor icd9cm:999 is known
    view._show_result(med.visit.suggest(), rebuild=True)
    assert view.rows == {}
    assert "knows none of the entered codes" in view.suggestion_list.controls[0].value
    assert "No suggestions" in view.status.value and view.status.color is not None
    assert view.unknown_box.visible and "left out of the scores: icd9cm:99999" in view.unknown.value
    known = next(c for c in med.bundle.vocabs["diagnoses"] if c not in ("<pad>", "<unk>"))
    med.visit.add_code("dx", known)
    view._show_result(med.visit.suggest(), rebuild=True)
    assert view.rows and "No suggestions" not in view.status.value
