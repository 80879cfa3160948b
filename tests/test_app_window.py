"""How `pocketrec app` opens itself (app/main.py) and `pocketrec app pin` (app_commands): the
app-window command for Chromium/Chrome/Edge (own profile folder), the start-up line, and the
PIN's set/clear/status. Nothing here starts a browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from app import main
from app.kiosk import PinStore
from pocketrec.app_commands import add_pin_parser, cmd_app


def test_app_window_command_uses_its_own_profile(tmp_path, monkeypatch):
    command = main.app_window_command(
        "http://127.0.0.1:8550", exe="/usr/bin/chromium", profile=tmp_path / "prof"
    )
    assert command[0] == "/usr/bin/chromium"
    assert "--app=http://127.0.0.1:8550" in command
    assert f"--user-data-dir={tmp_path / 'prof'}" in command
    assert "--kiosk" not in command
    kiosk = main.app_window_command("http://127.0.0.1:1", kiosk=True, exe="chrome")
    assert kiosk[1] == "--kiosk" and "--app=http://127.0.0.1:1" in kiosk
    assert str(main.browser_profile(True)) in " ".join(kiosk)
    assert main.browser_profile(False) != main.browser_profile(True)
    assert Path.home() in main.browser_profile(False).parents

    monkeypatch.setattr(main.shutil, "which", lambda name: None)
    monkeypatch.setattr(main, "APP_BROWSER_PATHS", ())
    assert main.find_app_browser() is None
    assert main.app_window_command("http://127.0.0.1:1") is None
    monkeypatch.setattr(main.shutil, "which", lambda n: "/opt/edge" if n == "msedge" else None)
    assert main.find_app_browser() == "/opt/edge"


def test_startup_line_says_how_the_app_opens():
    url = "http://127.0.0.1:8550"
    window = main.startup_line(url, "desktop", ["/usr/bin/chromium", f"--app={url}"], False)
    assert "own window" in window and "chromium" in window and "127.0.0.1 only" in window
    tab = main.startup_line(url, "desktop", None, False)
    assert "browser tab" in tab
    assert "full screen" in main.startup_line(url, "kiosk", ["/x/chrome", "--kiosk"], False)
    assert "serving only" in main.startup_line(url, "web", None, True)
    for line in (window, tab):
        assert "web_browser" not in line


def _pin_args(db: Path, action: str, pin: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(app_command="pin", pin_action=action, db=str(db), pin=pin)


def test_pin_set_status_clear(tmp_path, capsys):
    db = tmp_path / "data" / "pocketrec.db"
    store = PinStore.beside(db)
    assert cmd_app(_pin_args(db, "status")) == 0
    assert "no PIN is set" in capsys.readouterr().out
    assert cmd_app(_pin_args(db, "set", "12")) == 2  # too short: refused, nothing written
    assert not store.has_pin()
    assert cmd_app(_pin_args(db, "set", "4321")) == 0
    assert store.check("4321") and "4321" not in store.path.read_text()
    assert cmd_app(_pin_args(db, "set", "9876")) == 0  # changed
    assert store.check("9876") and not store.check("4321")
    capsys.readouterr()
    assert cmd_app(_pin_args(db, "status")) == 0
    assert "a PIN is set" in capsys.readouterr().out
    assert cmd_app(_pin_args(db, "clear")) == 0
    assert not store.has_pin()
    assert "PIN cleared" in capsys.readouterr().out


def test_pin_parser():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="app_command")
    add_pin_parser(sub)
    args = parser.parse_args(["pin", "set", "--db", "x.db", "--pin", "1234"])
    assert (args.pin_action, args.db, args.pin) == ("set", "x.db", "1234")
