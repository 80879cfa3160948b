"""The Flet app's entry: `run(...)` composes the app's state (`app.state.AppState`: the clinic,
the news feed, the kiosk) once and serves one `app.shell.PocketrecApp` per page.

A desktop window by default, or (`web=True`, `kiosk=True`) a web app served by flet-web on
127.0.0.1 only, with every asset (CanvasKit/skwasm, fonts) served locally (`no_cdn=True`).
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

    - desktop window by default (needs the `flet-desktop` package; without it, the browser);
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
    )
    if not web and not kiosk and importlib.util.find_spec("flet_desktop") is None:
        print(
            "pocketrec: flet-desktop is not installed; serving the app to the browser instead",
            file=sys.stderr,
        )
        web = True
    if not (web or kiosk):
        ft.run(main, view=ft.AppView.FLET_APP, assets_dir=None)
        return

    # our arguments win over FLET_SERVER_IP / FLET_SERVER_PORT left in the environment
    os.environ["FLET_SERVER_IP"] = HOST
    os.environ["FLET_SERVER_PORT"] = str(int(port))
    url = f"http://{HOST}:{int(port)}"
    quiet = os.environ.get("POCKETREC_NO_BROWSER") == "1" or not _has_display()
    if kiosk or quiet:
        # Flet prints the URL instead of opening a browser when this is set
        os.environ.setdefault("FLET_DISPLAY_URL_PREFIX", "pocketrec: serving at")
        if kiosk and not quiet:
            threading.Thread(target=_open_kiosk_browser, args=(url,), daemon=True).start()
    print(f"pocketrec: {url} (127.0.0.1 only)", flush=True)
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


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_kiosk_browser(url: str, wait_s: float = 30.0) -> None:
    """Once the server answers, open `url` full screen: Chromium/Chrome in --kiosk mode when one
    is installed, else the default browser."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1):
                break
        time.sleep(0.3)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            profile = Path.home() / ".cache" / "pocketrec-kiosk-browser"
            subprocess.Popen(
                [exe, "--kiosk", f"--app={url}", f"--user-data-dir={profile}", "--no-first-run"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return
    webbrowser.open(url)


if __name__ == "__main__":
    run()
