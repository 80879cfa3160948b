"""Running a bench script that starts an app server: SIGTERM unwinds like Ctrl-C, and a
watchdog thread stops the server and exits when even the script's own deadlines hang.
(Results are written with `contract.files.atomic_write_json`.)"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


def exit_on_sigterm() -> None:
    """SIGTERM unwinds through the finally blocks (the server is stopped) like Ctrl-C."""

    def on_term(signum, frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


def start_watchdog(seconds: float, holder: dict) -> threading.Timer:
    """After `seconds`, even when everything else hangs: stop `holder["server"]` and exit with
    status 3. Cancel it when done."""

    def fire() -> None:
        print(f"watchdog: still running after {seconds:.0f} s, stopping", file=sys.stderr)
        server = holder.get("server")
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
