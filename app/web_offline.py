"""Keep the web client local: in web mode the browser asks no host but the app's own server.

Why: pocketrec promises "no network at run time, patient data never leaves". `no_cdn=True` makes
flet-web serve CanvasKit/skwasm and the fonts itself, but Flet's web client (1.0.5) still asks
https://cdn.jsdelivr.net for the Rive runtime: the `rive_native` Dart package compiled into
`main.dart.js` and `main.dart.wasm` holds that URL as a constant and, because Flet initialises
its Rive extension when every app starts, appends
`<script src="https://cdn.jsdelivr.net/npm/@rive-app/flutter-native-wasm@44.0.0/wasm/rive_native.js">`
to the page whether or not the app shows a Rive animation (pocketrec shows none). Offline the
request fails and nothing is lost; on a networked kiosk it would leave the machine.

How, without touching flet-web's files: `prepare_client` writes a copy of flet-web's
`index.html` into a fresh folder that `ft.run` gets as its `assets_dir` (flet-web serves the
index.html of the assets folder in place of its own, and patches it as usual), with two things
added first in `<head>`:

- a Content-Security-Policy (`<meta>`) that lets the page load, connect to and run only what
  comes from its own origin (plus `blob:`/`data:` URLs and WebAssembly, which CanvasKit and skwasm
  need): whatever Flet or Flutter might ask of another host in a later version is refused by the
  browser itself;
- a small script that sends a `<script>` aimed at the Rive CDN to a local stub instead, whose
  `RiveNative()` rejects: Flet's Rive support then reports itself unavailable at once, and the
  page neither asks the CDN nor trips the policy.

The shipped fonts (`app.fonts`) are copied into that folder's `fonts/`, so the page asks the
app's own server for them. The folder goes when the app exits; one left by a server that was
killed (a crash, SIGKILL: no exit handlers run) is removed by the next start on this machine,
which finds its owner's process gone (`sweep_stale_clients`), so crashes do not pile up 8 MB
copies in the temporary folder.

It also pins `FLET_ASSETS_DIR` (which would replace that folder) and `FLET_WEB_NO_CDN=1` (flet-web
reads it over `no_cdn`) in the environment, as `app.main.run` does with the server's address.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

RIVE_CDN = "https://cdn.jsdelivr.net/npm/@rive-app/"
STUB_DIR = "pocketrec-offline"
RIVE_STUB = f"{STUB_DIR}/rive_native.js"

RIVE_STUB_JS = """\
// pocketrec: the Rive runtime is not shipped and never fetched (app/web_offline.py).
// Flet's loader calls RiveNative() and takes a rejection as "Rive is unavailable".
window.RiveNative = () => Promise.reject(new Error("Rive is not available offline"));
"""

# Runs before any other script of the page: a <script> whose src points at the Rive CDN gets the
# local stub instead (document.baseURI is read when the src is set, after <base> is parsed).
REDIRECT_JS = f"""\
(() => {{
  const cdn = {RIVE_CDN!r};
  const stub = {RIVE_STUB!r};
  const src = Object.getOwnPropertyDescriptor(HTMLScriptElement.prototype, "src");
  Object.defineProperty(HTMLScriptElement.prototype, "src", {{
    configurable: true,
    enumerable: src.enumerable,
    get: src.get,
    set(value) {{
      const local = String(value).startsWith(cdn);
      src.set.call(this, local ? new URL(stub, document.baseURI).href : value);
    }},
  }});
}})();"""


def content_security_policy(port: int) -> str:
    """The page's policy: its own origin only, plus the app's WebSocket on 127.0.0.1/localhost
    (for browsers whose 'self' does not cover ws:), blob:/data: URLs and WebAssembly."""
    ws = f"ws://127.0.0.1:{int(port)} ws://localhost:{int(port)}"
    return "; ".join(
        [
            "default-src 'self'",
            # inline: index.html's own config scripts; blob: skwasm's worker
            "script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval' blob:",
            "worker-src 'self' blob:",
            f"connect-src 'self' {ws} blob: data:",
            "img-src 'self' blob: data:",
            "font-src 'self' blob: data:",
            "media-src 'self' blob: data:",
            "style-src 'self' 'unsafe-inline'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
        ]
    )


def flet_web_dir() -> Path:
    """flet-web's web client folder (`$FLET_WEB_PATH` when set, as flet-web does), found
    without importing flet_web (the app's dependency wall lists flet, not flet_web)."""
    if os.environ.get("FLET_WEB_PATH"):
        return Path(os.environ["FLET_WEB_PATH"])
    spec = importlib.util.find_spec("flet_web")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the flet-web package is not installed: pip install 'flet[web]'")
    return Path(next(iter(spec.submodule_search_locations))) / "web"


def local_index_html(index: str, port: int) -> str:
    """flet-web's `index.html` with the policy and the CDN redirect first in `<head>`."""
    head = re.search(r"<head(\s[^>]*)?>", index, flags=re.IGNORECASE)
    if head is None:
        raise RuntimeError("flet-web's index.html has no <head>: cannot keep the client local")
    policy = content_security_policy(port)
    added = (
        f'\n  <meta http-equiv="Content-Security-Policy" content="{policy}">'
        f"\n  <script>\n{REDIRECT_JS}\n  </script>"
    )
    return index[: head.end()] + added + index[head.end() :]


CLIENT_PREFIX = "pocketrec-web-"
OWNER_FILE = "owner.pid"


def _alive(pid: int) -> bool:
    """Whether process `pid` exists; True (leave its folder alone) when that cannot be said."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)  # POSIX only: signal 0 checks, it sends nothing
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's, or not a pid at all
        return True
    return True


def sweep_stale_clients(tmp: str | Path | None = None) -> list[Path]:
    """Remove client folders (`prepare_client`'s) whose owner process is gone; returns them.
    A folder without an owner file is left alone (it may be being written). POSIX only: on
    Windows `os.kill(pid, 0)` would end the process, so nothing is swept there."""
    if os.name != "posix":
        return []
    removed = []
    for folder in Path(tmp or tempfile.gettempdir()).glob(f"{CLIENT_PREFIX}*"):
        try:
            if folder.stat().st_uid != os.getuid():  # only this user's own folders
                continue
            pid = int((folder / OWNER_FILE).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed


def prepare_client(port: int) -> str:
    """Write the local index.html and the Rive stub into a new temporary folder (removed at
    exit; a killed server's is swept by the next start), pin the environment so flet-web uses
    it with no CDN, and return the folder: pass it as `ft.run(..., assets_dir=...)`."""
    source = flet_web_dir() / "index.html"
    with contextlib.suppress(Exception):  # a clean-up of old folders never blocks a start
        sweep_stale_clients()
    folder = Path(tempfile.mkdtemp(prefix=CLIENT_PREFIX))
    atexit.register(functools.partial(shutil.rmtree, folder, ignore_errors=True))
    (folder / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
    page = local_index_html(source.read_text(encoding="utf-8"), port)
    (folder / "index.html").write_text(page, encoding="utf-8")
    (folder / STUB_DIR).mkdir()
    (folder / RIVE_STUB).write_text(RIVE_STUB_JS, encoding="utf-8")
    from app.fonts import ASSET_PREFIX, font_files

    fonts = folder / ASSET_PREFIX
    fonts.mkdir()
    for path in font_files():
        shutil.copyfile(path, fonts / path.name)
    os.environ["FLET_ASSETS_DIR"] = str(folder)
    os.environ["FLET_WEB_NO_CDN"] = "1"
    return str(folder)
