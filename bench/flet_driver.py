"""Driving the real app in web mode, shared by the browser tests (tests/test_browser.py,
tests/test_web_offline.py, tests/test_kiosk_protocol.py) and the app benchmarks
(bench/app_latency.py, bench/kiosk_load.py, bench/kiosk_protocol_load.py). It is test tooling,
so it lives here and not in app/, which ships without it.

- the server: `AppServer` runs `app.main.run(web=True, ...)` in its own process group on a free
  127.0.0.1 port, with a fresh SQLite DB and its log in a given folder;
- the browser: Debian's Chromium at /usr/bin/chromium (`launch_chromium`, `chromium_missing`);
- the page: Flutter web paints on a canvas. Its semantics tree, switched on by clicking the
  `flt-semantics-placeholder` element (`enable_semantics`), mirrors the widgets as elements whose
  `flt-semantics-identifier` attribute is the app's `ft.Semantics(identifier=...)` (`sel`,
  `ident`). `wait_for`, `click`, `type_into`, `settle`, `text_of` and `wait_text` use Playwright's
  sync API; the asyncio driver of bench/kiosk_load.py uses the same JavaScript (`TEXT_BY_ID_JS`,
  `IDS_UNDER_JS`, ...);
- what to type: frequent diagnoses, each with words of its title that the type-ahead finds
  (`diagnosis_pool`, `typeahead_query`);
- measuring: CPU use by process group, machine facts, percentiles, the loop window of concurrent
  sessions (`run_window`), a watchdog, results written atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from app.runtime import BundleError, load_bundle
from app.state import CodeIndex

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"
HOST = "127.0.0.1"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 1000}
SERVER_START_S = 60.0
LOAD_TIMEOUT_MS = 90_000  # first load: ~10 MB of wasm, fonts and the Flutter engine
STEP_TIMEOUT_MS = 20_000
KEY_DELAY_MS = 35  # Flutter drops keys typed faster right after a focus change
FOCUS_TIMEOUT_MS = 5_000
FOCUS_PAUSE_MS = 150  # after the field has the focus, before typing
CHECK_PAUSE_MS = 100  # after typing, before reading the field back
DONE_TEXT = "at or above the threshold"  # the status line once a Suggest has finished
_UNSAFE = re.compile(r"[^0-9A-Za-z_.:-]")

PLACEHOLDER = "flt-semantics-placeholder"
CLICK_PLACEHOLDER_JS = f"document.querySelector('{PLACEHOLDER}').click()"

# The text under an element (or null): Flutter puts it in text nodes or aria-label attributes.
TEXT_JS = r"""(el) => el ? [el, ...el.querySelectorAll('*')]
    .map(n => (n.getAttribute('aria-label') || '') + ' ' + (n.children.length ? '' : n.textContent))
    .join(' ').replace(/\s+/g, ' ').trim() : null"""

# The text under the node carrying an identifier, null if absent.
TEXT_BY_ID_JS = f"""(id) => ({TEXT_JS})(
    document.querySelector(`[flt-semantics-identifier="${{id}}"]`))"""

ALL_IDS_JS = """() => [...document.querySelectorAll('[flt-semantics-identifier]')]
  .map(e => e.getAttribute('flt-semantics-identifier'))"""

# The identifiers under the node carrying an identifier, joined by ",".
IDS_UNDER_JS = """(id) => [...document.querySelectorAll(
    `[flt-semantics-identifier="${id}"] [flt-semantics-identifier]`)]
  .map(e => e.getAttribute('flt-semantics-identifier')).join(',')"""

# The size and identifiers of the whole semantics DOM.
SNAPSHOT_JS = """() => document.querySelector('flt-semantics-host')?.innerHTML.length + ':'
  + [...document.querySelectorAll('[flt-semantics-identifier]')]
    .map(e => e.getAttribute('flt-semantics-identifier')).join(',')"""


class SetupError(RuntimeError):
    """The run cannot be made: the app server did not start, too few usable diagnoses."""


class TypingError(RuntimeError):
    """A text field did not read back what was typed, in any of the tries."""


# ------------------------------------------------------------------ names and addresses


def sel(identifier: str) -> str:
    return f'[flt-semantics-identifier="{identifier}"]'


def ident(*parts: object) -> str:
    """The app's identifier for a code: parts joined by "-", unusual characters as "_"."""
    return "-".join(_UNSAFE.sub("_", str(p)) for p in parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def is_app_request(url: str, base: str) -> bool:
    """Whether the page asks the app server at `base` for `url` (or its own memory)."""
    return url.startswith((base, "blob:", "data:"))


# ------------------------------------------------------------------ the server


class AppServer:
    """`app.main.run(web=True, ...)` in its own process group on a free 127.0.0.1 port; the DB
    (pocketrec.db) and the server log (server.log) go to `folder`. `env` is added to the
    server's environment, `run_args` to its `run(...)` call."""

    def __init__(
        self,
        bundle: Path,
        folder: Path,
        env: dict[str, str] | None = None,
        run_args: dict | None = None,
        poll_s: float = 0.05,
        stop_timeout_s: float = 15.0,
    ):
        self.port = free_port()
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


# ------------------------------------------------------------------ the browser


def chromium_missing() -> str | None:
    """Why the app cannot be driven in a browser here, or None."""
    if CHROMIUM.exists():
        return None
    return f"{CHROMIUM} is missing (apt-get install chromium): cannot drive the app in a browser"


def launch_chromium(pw, args: list[str] = CHROMIUM_ARGS):
    """Chromium from Playwright's sync or async API (a coroutine to await for the latter)."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=args)


# ------------------------------------------------------------------ driving a page (sync API)


def enable_semantics(
    page,
    ready: str = "[flt-semantics-identifier]",
    load_timeout_ms: int = LOAD_TIMEOUT_MS,
    timeout_ms: int = STEP_TIMEOUT_MS,
) -> None:
    """Flutter builds its semantics DOM only once asked: click its placeholder, then wait for
    the selector `ready`."""
    page.wait_for_selector(PLACEHOLDER, state="attached", timeout=load_timeout_ms)
    page.evaluate(CLICK_PLACEHOLDER_JS)
    page.wait_for_selector(ready, state="attached", timeout=timeout_ms)


def wait_for(page, identifier: str, timeout_ms: int = STEP_TIMEOUT_MS):
    page.wait_for_selector(sel(identifier), state="attached", timeout=timeout_ms)
    return page.locator(sel(identifier)).first


def click(
    page, identifier: str, timeout_ms: int = STEP_TIMEOUT_MS, click_timeout_ms: int | None = None
) -> None:
    """Click the tappable node (button, list tile, rail destination) carrying `identifier`.
    `click_timeout_ms` bounds the click itself (None: Playwright's default)."""
    node = wait_for(page, identifier, timeout_ms)
    target = node.locator("[flt-tappable], [role=button], input").first
    if target.count():
        target.click(timeout=click_timeout_ms)
    else:  # bubbles to the tappable ancestor (e.g. a rail destination)
        node.click(force=True, timeout=click_timeout_ms)


class Pauses:
    """The deliberate waits of typing (key delays and fixed pauses) in ms, and how many times
    a field had to be typed again."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.retypes = 0

    def wait(self, page, ms: int) -> None:
        self.ms += ms
        page.wait_for_timeout(ms)


def type_into(
    page,
    identifier: str,
    text: str,
    tries: int = 3,
    pauses: Pauses | None = None,
    timeout_ms: int = STEP_TIMEOUT_MS,
    click_timeout_ms: int | None = None,
) -> None:
    """Focus the text field carrying `identifier` and type `text` key by key.

    Flutter attaches its text editing to the `<input>` only once the framework has moved the
    focus there, so keys typed right after the click can be lost: wait for the focus, then
    check the field's value and type again when it is not what was typed."""
    pauses = pauses or Pauses()
    wait_for(page, identifier, timeout_ms)
    field = page.locator(f"{sel(identifier)} input, {sel(identifier)} textarea").first
    for attempt in range(tries):
        pauses.retypes += attempt > 0
        field.click(timeout=click_timeout_ms)
        page.wait_for_function(
            "e => document.activeElement === e",
            arg=field.element_handle(),
            timeout=FOCUS_TIMEOUT_MS,
        )
        pauses.wait(page, FOCUS_PAUSE_MS)
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        page.keyboard.type(text, delay=KEY_DELAY_MS)
        pauses.ms += KEY_DELAY_MS * len(text)
        pauses.wait(page, CHECK_PAUSE_MS)
        if field.input_value() == text:
            return
    raise TypingError(f"typing {text!r} into {identifier!r} gave {field.input_value()!r}")


def wait_quiet(
    page, js: str, arg=None, quiet_ms: int = 300, timeout_ms: int = 5_000, poll_ms: int = 50
) -> float:
    """Until `js` (evaluated with `arg`) gives the same value for `quiet_ms`, or `timeout_ms`
    has passed; returns the ms it had been unchanged by then."""
    deadline = time.monotonic() + timeout_ms / 1000
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = page.evaluate(js, arg)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_ms / 1000:
            break
        page.wait_for_timeout(poll_ms)
    return (time.monotonic() - since) * 1e3 if last is not None else 0.0


def settle(page, quiet_ms: int = 300, timeout_ms: int = 5_000) -> None:
    """Wait until the semantics DOM stops changing (the server has answered every keystroke)."""
    wait_quiet(page, SNAPSHOT_JS, quiet_ms=quiet_ms, timeout_ms=timeout_ms)


def text_of(page, identifier: str, timeout_ms: int = STEP_TIMEOUT_MS) -> str:
    """The text under a node, white space folded."""
    return wait_for(page, identifier, timeout_ms).evaluate(TEXT_JS)


def wait_text(page, identifier: str, needle: str, timeout_ms: int = STEP_TIMEOUT_MS) -> str:
    """The node's text once it contains `needle` (case-insensitive)."""
    deadline = time.monotonic() + timeout_ms / 1000
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = text_of(page, identifier)
            if needle.lower() in last.lower():
                return last
        page.wait_for_timeout(150)
    raise AssertionError(f"{identifier!r} never showed {needle!r}; last text: {last!r}")


# ------------------------------------------------------------------ bundles and what to type


def sound_bundle(choice: str) -> Path | None:
    """The bundle folder `choice` names, else the shipped bundle when it is there and loads;
    None for `choice` "tiny" or an unusable shipped bundle (the caller's stand-in then)."""
    if choice == "tiny":
        return None
    if choice:
        return Path(choice)
    if (SHIPPED_BUNDLE / "manifest.json").is_file():
        with contextlib.suppress(BundleError):
            load_bundle(SHIPPED_BUNDLE)
            return SHIPPED_BUNDLE
    return None


def diagnosis_codes(bundle) -> list[str]:
    """The bundle's diagnosis vocabulary (frequent first) without the special tokens."""
    return [c for c in bundle.vocabs["diagnoses"] if c not in ("<pad>", "<unk>")]


def diagnosis_index(bundle) -> CodeIndex:
    """The type-ahead the app builds over the bundle's diagnoses."""
    return CodeIndex((c, bundle.titles.get(c, c)) for c in diagnosis_codes(bundle))


def typeahead_query(index: CodeIndex, code: str) -> str | None:
    """Words of the code's title for which the type-ahead lists the code in its first three:
    two words (the second cut to five letters) preferred, else one word."""
    words = [w.lower() for w in index.title(code).replace(",", " ").split()]
    words = [w for w in words if w.isascii() and w.isalpha() and len(w) > 2][:4]
    tries = sorted((f"{a} {b[:5]}" for a, b in zip(words, words[1:], strict=False)), key=len)
    tries += sorted(words, key=len)
    for query in tries:
        if code in [option.code for option in index.search(query, limit=3)]:
            return query
    return None


def diagnosis_pool(bundle_dir: Path, n: int, need: int = 2) -> list[tuple[str, str]]:
    """Up to `n` frequent diagnoses (vocabulary order) with a title, each with a query that
    finds it; SetupError when fewer than `need` have one."""
    bundle = load_bundle(bundle_dir)
    index = diagnosis_index(bundle)
    pool = []
    for code in diagnosis_codes(bundle):
        if code not in bundle.titles:
            continue
        query = typeahead_query(index, code)
        if query:
            pool.append((code, query))
        if len(pool) == n:
            break
    if len(pool) < need:
        raise SetupError(f"only {len(pool)} diagnoses in {bundle_dir} have a usable query")
    return pool


# ------------------------------------------------------------------ measuring


def summarize(values: list[float], suffix: str = "") -> dict:
    """n, p50, p95, mean, min and max (each key but n ending in `suffix`)."""
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    stats = {
        "p50": np.percentile(a, 50),
        "p95": np.percentile(a, 95),
        "mean": a.mean(),
        "min": a.min(),
        "max": a.max(),
    }
    return {"n": int(a.size)} | {k + suffix: float(v) for k, v in stats.items()}


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "flet": dist_version("flet"),
        "flet-web": dist_version("flet-web"),
        "playwright": dist_version("playwright"),
        "onnxruntime": dist_version("onnxruntime"),
        "numpy": np.__version__,
    }


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [float(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)
    return sum(ticks) - idle, sum(ticks)


def cpu_by_group(server_pid: int | None) -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by this script's live descendants, grouped:
    the app server's process tree, Chromium, Playwright's driver, this script, other."""
    procs = {}
    try:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = (entry / "stat").read_text()
                comm = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw[raw.rindex(")") + 2 :].split()
                procs[int(entry.name)] = (
                    comm,
                    int(fields[1]),
                    float(fields[11]) + float(fields[12]),
                )
    except OSError:
        return None
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    hz = os.sysconf("SC_CLK_TCK")
    out = {"app server": 0.0, "chromium": 0.0, "playwright driver": 0.0, "this script": 0.0}
    out["other"] = 0.0
    me = os.getpid()
    stack = [(me, "this script")]
    while stack:
        pid, group = stack.pop()
        if pid not in procs:
            continue
        comm = procs[pid][0].lower()
        if pid == server_pid:
            group = "app server"
        elif group != "app server" and pid != me:
            if "chrom" in comm:
                group = "chromium"
            elif comm.startswith("node"):
                group = "playwright driver"
            elif group == "this script":
                group = "other"
        out[group] += procs[pid][2] / hz
        stack += [(child, group) for child in children.get(pid, [])]
    return out


def cpu_shares(run: dict, window_s: float) -> tuple[float | None, dict[str, float] | None]:
    """From `run_window`'s readings: the machine's busy fraction over the window, and each
    process group's CPU seconds per second of it (1.0 = one core busy); None where unread."""
    busy = None
    if run.get("cpu_start") and run.get("cpu_end"):
        d_busy = run["cpu_end"][0] - run["cpu_start"][0]
        d_total = run["cpu_end"][1] - run["cpu_start"][1]
        busy = d_busy / d_total if d_total > 0 else None
    split = None
    if run.get("cpu_groups_start") and run.get("cpu_groups_end"):
        split = {
            group: (run["cpu_groups_end"][group] - run["cpu_groups_start"].get(group, 0.0))
            / window_s
            for group in run["cpu_groups_end"]
        }
    return busy, split


async def run_window(
    out: dict,
    sessions: list,
    tasks: list[asyncio.Task],
    go: asyncio.Event,
    window: dict,
    *,
    t0: float,
    load_backstop_s: float,
    seconds: float,
    grace_s: float,
    hard_deadline: float,
    server_pid: int | None,
    describe: Callable[[BaseException], str],
    loaded_verb: str = "loaded",
) -> None:
    """The measured part of a concurrent run whose session `tasks` (started at `t0`) each
    load, set their `settled` event, then wait for `go`: once every session has settled (at
    most `load_backstop_s`; each load has its own timeout), the window opens for `seconds`
    (`window["start"]`, `window["end"]`); a visit under way then may finish within `grace_s`
    (never past `hard_deadline`), the rest is cancelled. Records into `out` the load phase,
    the window's length, CPU readings at both ends (see `cpu_shares`), the load average, how
    many tasks were cut and the tasks' errors (`describe(exc)` each)."""
    settled = asyncio.gather(*(s.settled.wait() for s in sessions))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(settled, load_backstop_s)
    out["load_phase_s"] = time.monotonic() - t0
    loaded = sum(s.loaded for s in sessions)
    print(
        f"{loaded} of {len(sessions)} sessions {loaded_verb} in {out['load_phase_s']:.1f} s; "
        f"running {seconds:g} s",
        file=sys.stderr,
        flush=True,
    )
    window["start"] = time.monotonic()
    window["end"] = window["start"] + seconds
    out["cpu_start"] = cpu_times()
    out["cpu_groups_start"] = cpu_by_group(server_pid)
    go.set()
    stop_at = min(window["end"] + grace_s, hard_deadline)
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.monotonic()))
    out["window_s"] = time.monotonic() - window["start"]
    out["cpu_end"] = cpu_times()
    out["cpu_groups_end"] = cpu_by_group(server_pid)
    out["loadavg_end"] = list(os.getloadavg())
    out["cut_at_deadline"] = len(pending)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=30)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            out.setdefault("task_errors", []).append(describe(task.exception()))


# ------------------------------------------------------------------ running a bench script


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


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
