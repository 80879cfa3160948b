"""The web client stays local: the real app in web mode, loaded in Chromium, makes no request
to any host but its own 127.0.0.1 server (app/web_offline.py), with either of Flet's client
builds (skwasm: main.dart.wasm; canvaskit: main.dart.js).

Every request of the browser context (page, workers, service worker) and every WebSocket is
recorded; requests to other hosts are aborted, so the test itself never leaves the machine. The
page's Content-Security-Policy violations are recorded too: one means the client tried to load
something from elsewhere and only the policy stopped it. Reuses the server and Chromium fixtures of
tests/test_browser.py (skipped without /usr/bin/chromium unless POCKETREC_REQUIRE_BROWSER=1) and
the page helpers of bench/harness/browser.py.
"""

from __future__ import annotations

import time
import urllib.request
from urllib.parse import urlsplit

import pytest
import test_browser as tb

from bench.harness.browser import (
    LOAD_TIMEOUT_MS,
    VIEWPORT,
    click,
    enable_semantics,
    wait_for,
    wait_text,
)

pytestmark = pytest.mark.browser

# the fixtures of tests/test_browser.py, shared rather than copied
chromium = tb.chromium
browser = tb.browser
bundle_dir = tb.bundle_dir

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

HAS_WEBGL = "!!document.createElement('canvas').getContext('webgl')"

RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.effectiveDirective} ${e.blockedURI}`);
});
"""


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in LOOPBACK


@pytest.mark.parametrize("renderer", ["skwasm", "canvaskit"])
def test_web_client_asks_no_other_host(browser, bundle_dir, tmp_path, renderer):
    env = {"FLET_WEB_RENDERER": renderer}
    with tb.serve(tmp_path, bundle_dir, env) as running:
        index = urllib.request.urlopen(running.url, timeout=5).read().decode()
        requests: list[str] = []
        context = browser.new_context(viewport=VIEWPORT)
        try:
            context.on("request", lambda request: requests.append(request.url))
            context.route(
                "**/*",
                lambda route: route.continue_() if is_local(route.request.url) else route.abort(),
            )
            page = context.new_page()
            if renderer == "skwasm" and not page.evaluate(HAS_WEBGL):
                pytest.skip("this Chromium has no WebGL, which Flutter's skwasm build needs")
            page.on("websocket", lambda ws: requests.append(ws.url))
            page.add_init_script(RECORD_CSP_VIOLATIONS)
            page.goto(running.url, timeout=LOAD_TIMEOUT_MS)
            enable_semantics(page)
            wait_for(page, "nav-patients")
            click(page, "nav-model")
            wait_text(page, "model-card", "Model card")
            # the client loads some parts (Rive among them) after the first frame
            page.wait_for_timeout(2_000)
            engine = page.evaluate(
                "window._flutter_skwasmInstance ? 'skwasm'"
                " : window.flutterCanvasKit ? 'canvaskit' : 'unknown'"
            )
            violations = page.evaluate("window.__cspViolations")
        finally:
            context.close()
        time.sleep(0.1)  # late request events

    assert engine == renderer
    assert any(u.startswith("ws://127.0.0.1:") for u in requests), requests
    outside = sorted({u for u in requests if not is_local(u)})
    assert not outside, "the web client asked other hosts:\n" + "\n".join(outside)
    assert not violations, "the page tried to load from elsewhere (refused by its CSP):\n" + (
        "\n".join(violations)
    )
    # and the page itself refuses anything from elsewhere
    assert 'http-equiv="Content-Security-Policy"' in index
    assert "default-src 'self'" in index
