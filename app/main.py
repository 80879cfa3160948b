"""The Flet app's entry: `run(...)` composes the app's state (`app.state.AppState`: the clinic,
the news feed, the kiosk) once and serves one `app.shell.PocketrecApp` per page.

A desktop window by default, or (`web=True`, `kiosk=True`) a web app served by flet-web on
127.0.0.1 only, with every asset (CanvasKit/skwasm, fonts) served locally (`no_cdn=True`).
Without the Flet desktop client (downloaded at its first run, so not offline) the desktop app
is served the same way and opened in its own window of Chromium, Chrome or Edge (`--app=URL`,
a profile folder of its own) where one is installed, else in a tab of the default browser; the
start-up line says which (`startup_line`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import webbrowser
from pathlib import Path

import flet as ft

from app.kiosk import DEFAULT_IDLE_TIMEOUT
from app.shell import PocketrecApp
from app.state import AppState

HOST = "127.0.0.1"  # never 0.0.0.0: the history holds patient data
ASSETS = Path(__file__).resolve().parents[1] / "assets"
# browsers with an app-window mode (--app=URL), by executable name
APP_BROWSERS = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "microsoft-edge",
    "microsoft-edge-stable",
    "msedge",
    "chrome",
)
# where they live when not on PATH (Windows, macOS)
APP_BROWSER_PATHS = (
    r"C:\Program Files\Google\Chrome\Application\chrome.exe",
    r"C:\Program Files (x86)\Google\Chrome\Application\chrome.exe",
    r"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe",
    r"C:\Program Files\Microsoft\Edge\Application\msedge.exe",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "/Applications/Microsoft Edge.app/Contents/MacOS/Microsoft Edge",
)

_shared: AppState | None = None  # loaded once by `run`, one `session()` per browser tab


def main(page: ft.Page) -> None:
    """The Flet entry point: one `PocketrecApp` per page (browser tab or window)."""
    global _shared
    if _shared is None:
        _shared = AppState.open(idle_timeout=_idle_timeout())
    PocketrecApp(page, _shared.session()).mount()


def _idle_timeout() -> float:
    raw = os.environ.get("POCKETREC_IDLE_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_IDLE_TIMEOUT
    except ValueError:
        value = DEFAULT_IDLE_TIMEOUT
    return value if value > 0 else DEFAULT_IDLE_TIMEOUT


def run(
    bundle: str | os.PathLike[str] | None = None,
    web: bool = False,
    port: int = 8550,
    kiosk: bool = False,
    db: str | os.PathLike[str] | None = None,
    pin: str | None = None,
    news_bundle: str | os.PathLike[str] | None = None,
) -> None:
    """Start the app (blocks until it is closed).

    - desktop window by default (needs the `flet-desktop` package; without it, served as in web
      mode and opened in its own Chromium/Chrome/Edge window, else a browser tab);
    - `web=True`: served by flet-web on http://127.0.0.1:`port` only, every asset local
      (`no_cdn`), opened in the default browser when there is a display;
    - `kiosk=True`: web, full screen (Chromium's --kiosk when found), back to the start screen
      with the patient's data hidden after `$POCKETREC_IDLE_TIMEOUT` seconds idle (default 120);
    - `pin`: sets the PIN (at least 4 digits) that opens the app; only its salted PBKDF2 hash is
      kept, in a settings file beside the database. A PIN set earlier stays in force;
    - `news_bundle`: the News tab's bundle (default: the shipped `assets/bundles/news-demo`).

    `$POCKETREC_NO_BROWSER=1` serves without opening any browser.
    """
    global _shared
    _shared = AppState.open(
        bundle,
        db,
        kiosk=kiosk,
        idle_timeout=_idle_timeout(),
        pin=pin or None,
        news_bundle=news_bundle,
        warm=True,
    )
    desktop = not web and not kiosk
    if desktop and importlib.util.find_spec("flet_desktop") is not None:
        ft.run(main, view=ft.AppView.FLET_APP, assets_dir=str(ASSETS))
        return

    # our arguments win over FLET_SERVER_IP / FLET_SERVER_PORT left in the environment
    os.environ["FLET_SERVER_IP"] = HOST
    os.environ["FLET_SERVER_PORT"] = str(int(port))
    # Flet opens no browser and prints nothing itself: the start-up line and the window are ours
    os.environ["FLET_FORCE_WEB_SERVER"] = "1"
    os.environ.pop("FLET_DISPLAY_URL_PREFIX", None)
    url = f"http://{HOST}:{int(port)}"
    quiet = os.environ.get("POCKETREC_NO_BROWSER") == "1" or not _has_display()
    mode = "kiosk" if kiosk else "desktop" if desktop else "web"
    command = None if quiet or mode == "web" else app_window_command(url, kiosk=kiosk)
    print(startup_line(url, mode, command, quiet), flush=True)
    if not quiet:
        threading.Thread(target=_open_when_ready, args=(url, command), daemon=True).start()
    from app.web_offline import prepare_client

    ft.run(
        main,
        name="",
        host=HOST,
        port=int(port),
        view=ft.AppView.WEB_BROWSER,
        # Flet's own client only, with an index.html whose CSP and Rive stub keep the browser
        # from asking any other host (app/web_offline.py)
        assets_dir=prepare_client(int(port)),
        no_cdn=True,
    )


def find_app_browser() -> str | None:
    """Chromium, Chrome or Edge (they have an app-window mode), or None."""
    for name in APP_BROWSERS:
        exe = shutil.which(name)
        if exe:
            return exe
    for path in APP_BROWSER_PATHS:
        if Path(path).is_file():
            return path
    return None


def browser_profile(kiosk: bool = False) -> Path:
    """The app window's own browser profile folder (never the user's everyday profile)."""
    return Path.home() / ".cache" / ("pocketrec-kiosk-browser" if kiosk else "pocketrec-window")


def app_window_command(
    url: str, kiosk: bool = False, exe: str | None = None, profile: Path | None = None
) -> list[str] | None:
    """The command that opens `url` in its own browser window (`--app=`, full screen with
    `kiosk`), with a profile folder of its own; None when no such browser is installed."""
    exe = exe or find_app_browser()
    if exe is None:
        return None
    profile = profile or browser_profile(kiosk)
    command = [
        exe,
        f"--app={url}",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
    ]
    if kiosk:
        command.insert(1, "--kiosk")
    return command


def startup_line(url: str, mode: str, command: list[str] | None, quiet: bool) -> str:
    """What `run` prints first: where the app is served and how it is opened."""
    where = f"pocketrec: {url} (127.0.0.1 only)"
    if quiet:
        return f"{where}; serving only: open it in a browser"
    if command is not None:
        name = Path(command[0]).name
        how = "full screen (--kiosk)" if mode == "kiosk" else "in its own window (--app)"
        return f"{where}; opening it {how} with {name}"
    if mode == "desktop":
        return f"{where}; no Flet desktop client nor Chromium/Chrome/Edge: opening a browser tab"
    return f"{where}; opening it in a tab of the default browser"


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_when_ready(url: str, command: list[str] | None, wait_s: float = 30.0) -> None:
    """Once the server answers, open `url`: with `command` (an app window) when given, else in
    the default browser."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1):
                break
        time.sleep(0.3)
    if command is not None:
        with contextlib.suppress(OSError):
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
    webbrowser.open(url)


if __name__ == "__main__":
    run()
