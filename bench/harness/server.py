"""The app server a bench or browser test drives: `app.main.run(web=True, ...)` in its own
process group on a free 127.0.0.1 port, with a fresh SQLite DB and its log in a given folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.harness.errors import SetupError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"
HOST = "127.0.0.1"
SERVER_START_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class AppServer:
    """`app.main.run(web=True, ...)` in its own process group on a free 127.0.0.1 port; the DB
    (pocketrec.db) and the server log (server.log) go to `folder`. `env` is added to the
    server's environment, `run_args` to its `run(...)` call; `port`: a given port (as a kiosk
    keeps one, so that the browser's cache of the app's files applies), else a free one."""

    def __init__(
        self,
        bundle: Path,
        folder: Path,
        env: dict[str, str] | None = None,
        run_args: dict | None = None,
        poll_s: float = 0.05,
        stop_timeout_s: float = 15.0,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.db = folder / "pocketrec.db"
        self.log_path = folder / "server.log"
        self.bundle = bundle
        self.env = env or {}
        self.run_args = run_args or {}
        self.poll_s = poll_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update(
            POCKETREC_NO_BROWSER="1",  # serve only; Playwright is the browser
            FLET_FORCE_WEB_SERVER="1",
            FLET_WEB_NO_CDN="1",
            FLET_LOG_LEVEL="error",  # handler errors go to the server log
            PYTHONUNBUFFERED="1",
        )
        env.update(self.env)
        args = [f"port={self.port}", f"db={str(self.db)!r}", f"bundle={str(self.bundle)!r}"]
        args += [f"{k}={v!r}" for k, v in self.run_args.items()]
        code = f"from app.main import run; run(web=True, {', '.join(args)})"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends it and its children
            )

    def wait_ready(self) -> float:
        """Seconds until GET / answers 200; SetupError when the app exits or takes too long."""
        started = time.monotonic()
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            if self.proc is None or self.proc.poll() is not None:
                why = f"the app exited before answering on {self.url}"
                raise SetupError(f"{why}:\n{self.log_tail()}")
            if time.monotonic() - started > SERVER_START_S:
                why = f"the app did not answer on {self.url} in {SERVER_START_S:g} s"
                raise SetupError(f"{why}:\n{self.log_tail()}")
            time.sleep(self.poll_s)

    def log_tail(self, chars: int | None = 4000) -> str:
        """The end of the server log (all of it for None)."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return text if chars is None else text[-chars:]
        return ""

    def stop(self) -> int | None:
        """SIGTERM to the process group, SIGKILL when it lingers; the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout_s)
        return proc.returncode
