"""Kiosk load over the Flet protocol: many clinicians on ONE pocketrec web server at the same
time, each a minimal Flet client speaking the server's WebSocket protocol (no browser), then a
check that every visit the UI confirmed is in the database, whole.

Why: bench/kiosk_load.py drives the same visits through 20 Chromium pages; on a 2-core machine
the browsers starve the CPU (the server itself then used about a fifth of one core) and text
fields lose keys under that starvation. These clients together cost well under a tenth of a
core for 20 sessions, so what is loaded and measured is the server.

The protocol (flet 1.0.5 / flet-web 1.0.5, read from `flet/messaging/protocol.py`,
`flet/messaging/session.py` and `flet_web/fastapi/flet_app.py`): one WebSocket per session at
ws://127.0.0.1:PORT/ws; every binary frame is `0x00` + a MessagePack array `[action, body]`.
What this client sends and handles, like the Flutter client (`flet_backend.dart`):

- REGISTER_CLIENT (1) `{session_id: None, page_name: "", page: {route: "/patients", width,
  height, web: True, platform, ...}}`; the answer's `page_patch` is the whole Page control
  (a dict with `_c` type and `_i` id, children nested as dicts and lists), kept in memory;
- PATCH_CONTROL (2) from the server `{id, patch}`: `patch[0]` is a path tree
  `[node, {key: [node, {...}]}]` relative to control `id`, then operations `[0, node, key,
  value]` replace, `[1, node, key, value]` add (list insert), `[2, node, key]` remove,
  `[3, node, key, node, key]` move; applied to the tree in order;
- CONTROL_EVENT (3) `{target, name, data}`: "click" for buttons and list tiles; "change" (data:
  the text) after each keystroke; for the page "keyboard_event" `{key, shift, ctrl, alt, meta}`
  on each key (the app has `on_keyboard_event`) and "route_change" `{route}`; "dismiss" for a
  SnackBar. Sent only when the control has `on_<name>: True`, as Flutter does (route_change
  always: the compiled client in flet_web/web/main.dart.js sends it unconditionally);
- UPDATE_CONTROL_PROPS (4) `{id, props}`: the text field's `{value}` on every keystroke (before
  its change event), the page's `{route}`, a SnackBar's `{open: False}`;
- INVOKE_METHOD (5) from the server `{control_id, call_id, name, args}`, answered with
  `{control_id, call_id, result: None, error: None}`: "push_route" (the page: its route is
  updated and route_change sent first, as Flutter's router does) and "focus" (a text field);
- SESSION_CRASHED (6) from the server: an unhandled error in a handler; recorded as an error.

Controls are found by the app's test identifiers (`tid(...)` in app/views/common.py: an
`ft.Semantics(identifier=...)` around the control), in the visible part of the tree (a control
with `visible: False` hides its subtree).

One visit per iteration, as in bench/kiosk_load.py: type a unique name into "Find a patient"
key by key until the list says "No patient found", type it as the new patient's name, Create
patient, wait for it in the header; 1 or 2 frequent diagnoses: type words of the title key by
key and wait until the type-ahead shows exactly the options the app's own `CodeIndex` gives
for the whole query (so every key has been answered), tap the option, wait for its chip;
Suggest, timed; accept the first 1 or 2 rows, each until its status reads Accepted; Save until
the status reads "Saved visit <8 hex>" (only then it is confirmed); Close patient. After an
error the session is dropped and a new one registered (as a page reload would).

Suggest latency: client clock, the moment the Suggest click event is written to the socket ->
the moment the WebSocket frame arrives whose patch, applied, makes the status line say "... at
or above the threshold" with the suggestion rows present.

Bounded: every wait has a step timeout; the loop window is `--seconds`, a visit under way then
may finish within `--grace`, then everything is cancelled; a watchdog thread kills the server
and exits if even that hangs. The database is checked with bench/kiosk_load.py's
`check_database` (every confirmed visit present, whole, as entered; PRAGMA integrity_check).

Usage: python bench/kiosk_protocol_load.py [--sessions 20] [--seconds 120]
Writes bench/results/kiosk_protocol_load.json; exit status 1 when anything failed (an error, a
lost or partial visit, a failed integrity check), 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flet.messaging.protocol import MessageAction  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from app.runtime import load_bundle  # noqa: E402
from app.state import CodeIndex  # noqa: E402
from bench import flet_driver as fd  # noqa: E402
from bench import kiosk_load as kl  # noqa: E402  (the session base, the DB check)

OUT = ROOT / "bench" / "results" / "kiosk_protocol_load.json"
BUNDLE = fd.SHIPPED_BUNDLE
REGISTER = MessageAction.REGISTER_CLIENT.value
PATCH = MessageAction.PATCH_CONTROL.value
EVENT = MessageAction.CONTROL_EVENT.value
UPDATE = MessageAction.UPDATE_CONTROL_PROPS.value
INVOKE = MessageAction.INVOKE_METHOD.value
CRASHED = MessageAction.SESSION_CRASHED.value
OP_REPLACE, OP_ADD, OP_REMOVE, OP_MOVE = 0, 1, 2, 3
PAGE_SIZE = (1440.0, 1000.0)
START_ROUTE = "/patients"
OPTIONS_SHOWN = 8  # app/views/common.py: type-ahead rows shown
DONE_TEXT = fd.DONE_TEXT
SAVED_RE = kl.SAVED_RE
SCORING = "Scoring"
SAVING = "Saving"
SNACKBAR_DEFAULT_S = 4.0
SHOWN_IDS = kl.SHOWN_IDS
ident = fd.ident


class StepTimeoutError(TimeoutError):
    """A wait ran past the step timeout (kind "timeout")."""


class AppError(RuntimeError):
    """The app showed a failure (kind "app-error")."""


class UnexpectedError(RuntimeError):
    """The tree showed something the script did not expect (kind "unexpected")."""


class SessionCrashedError(RuntimeError):
    """The server sent SESSION_CRASHED (kind "session-crashed")."""


class DisconnectedError(RuntimeError):
    """The WebSocket closed under the session (kind "disconnected")."""


def error_kind(exc: BaseException) -> str:
    kinds = {
        StepTimeoutError: "timeout",
        AppError: "app-error",
        UnexpectedError: "unexpected",
        SessionCrashedError: "session-crashed",
        DisconnectedError: "disconnected",
    }
    for cls, kind in kinds.items():
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionClosed | OSError):
        return "disconnected"
    return type(exc).__name__


def short(exc: BaseException, limit: int = 400) -> str:
    return " ".join(str(exc).split())[:limit]


def _ext_hook(code: int, data: bytes):
    """MessagePack extension types of the Flet protocol: 1 datetime, 2 time, 3 Duration
    (microseconds), 4 string; kept as plain values."""
    if code == 3:
        with contextlib.suppress(ValueError):
            return int(data)
    if code in (1, 2, 4):
        return data.decode("utf-8", "replace")
    return msgpack.ExtType(code, data)


def _duration_s(value) -> float:
    """A Duration as the server serializes it ({"seconds": 3}, ...) in seconds."""
    if isinstance(value, int):  # the extension type: microseconds
        return value / 1e6
    if not isinstance(value, dict):
        return SNACKBAR_DEFAULT_S
    units = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
    units.update(milliseconds=1e-3, microseconds=1e-6)
    return float(sum(units[k] * v for k, v in value.items() if k in units))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def _pack(action: int, body: dict) -> bytes:
    return b"\x00" + msgpack.packb([action, body])


# ------------------------------------------------------------------ the control tree


class ControlTree:
    """The page as the server described it: nested dicts (controls carry `_c` and `_i`) and
    lists, patched in place; an id index for patch targets, rebuilt after structural changes;
    a scan of the visible Semantics identifiers, cached per version."""

    def __init__(self, page: dict):
        self.root = page
        self.version = 0
        self.index: dict[int, dict] = {}
        self.missing_targets = 0
        self._scan_version = -1
        self._ids: dict[str, dict] = {}
        self.reindex()

    def reindex(self) -> None:
        index = {}
        stack: list = [self.root]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                if "_i" in v and "_c" in v:
                    index[v["_i"]] = v
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
        self.index = index

    def apply(self, control_id: int, patch: list) -> None:
        target = self.index.get(control_id)
        if target is None:
            self.missing_targets += 1  # Flutter ignores these too; counted, a sign of desync
            return
        paths: dict[int, list] = {}
        stack = [(patch[0], [])]
        while stack:
            node, path = stack.pop()
            paths[node[0]] = path
            if len(node) > 1 and isinstance(node[1], dict):
                stack.extend((child, [*path, key]) for key, child in node[1].items())

        def resolve(n: int):
            obj = target
            for key in paths[n]:
                obj = obj[key]
            return obj

        structural = False
        for op in patch[1:]:
            kind = op[0]
            if kind == OP_REPLACE:
                obj = resolve(op[1])
                obj[op[2]] = op[3]
                structural |= isinstance(op[3], dict | list)
            elif kind == OP_ADD:
                obj = resolve(op[1])
                if isinstance(obj, list):
                    obj.insert(op[2], op[3])
                else:
                    obj[op[2]] = op[3]
                structural = True
            elif kind == OP_REMOVE:
                obj = resolve(op[1])
                if isinstance(obj, list):
                    del obj[op[2]]
                else:
                    obj.pop(op[2], None)
                structural = True
            elif kind == OP_MOVE:
                src, dst = resolve(op[1]), resolve(op[3])
                item = src.pop(op[2])
                if isinstance(dst, list):
                    dst.insert(op[4], item)
                else:
                    dst[op[4]] = item
                structural = True
            else:
                raise UnexpectedError(f"unknown patch operation {op!r}")
        if structural:
            self.reindex()
        self.version += 1

    # -- finding things

    def _scan(self) -> dict[str, dict]:
        if self._scan_version != self.version:
            self._ids = {}
            for identifier, node in _walk_ids(self.root):
                self._ids.setdefault(identifier, node)
            self._scan_version = self.version
        return self._ids

    def semantics(self, identifier: str) -> dict | None:
        """The visible Semantics node carrying `identifier`, or None."""
        return self._scan().get(identifier)

    def control(self, identifier: str) -> dict | None:
        """The control wrapped by the Semantics node `identifier`."""
        node = self.semantics(identifier)
        return None if node is None else node.get("content")

    def has(self, identifier: str) -> bool:
        return identifier in self._scan()

    def ids_under(self, identifier: str) -> list[str]:
        node = self.semantics(identifier)
        if node is None:
            return []
        return [i for i, _ in _walk_ids(node.get("content"))]

    def text(self, identifier: str) -> str | None:
        """The texts under `identifier` joined (a text field: its value), None if absent."""
        node = self.semantics(identifier)
        if node is None:
            return None
        content = node.get("content")
        if isinstance(content, dict) and content.get("_c") == "TextField":
            return content.get("value") or ""
        return " ".join(_texts(content))

    def shown(self) -> dict:
        """What a few identifiers show (for error reports)."""
        return {i: self.text(i) for i in SHOWN_IDS}

    def identifiers(self) -> list[str]:
        return list(self._scan())


def _walk_ids(root) -> list[tuple[str, dict]]:
    """(identifier, Semantics node) in tree order, skipping invisible subtrees."""
    out = []
    stack = [root]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if v.get("visible") is False:
                continue
            if v.get("_c") == "Semantics" and isinstance(v.get("identifier"), str):
                out.append((v["identifier"], v))
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
    return out


def _texts(root) -> list[str]:
    out = []
    stack = [root]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if v.get("visible") is False:
                continue
            if v.get("_c") == "Text" and isinstance(v.get("value"), str):
                out.append(v["value"])
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
    return out


# ------------------------------------------------------------------ one protocol client


class FletClient:
    """One WebSocket, one Flet session: registers, keeps the tree, answers method calls,
    sends events; `wait(pred)` resolves with the arrival time of the frame after which `pred`
    first held."""

    def __init__(self, url: str, step_timeout: float):
        self.url = url
        self.step_timeout = step_timeout
        self.ws = None
        self.tree: ControlTree | None = None
        self.session_id: str | None = None
        self.crash: str | None = None
        self.closed: BaseException | None = None
        self.frames = 0
        self.bytes_in = 0
        self.frame_arrived = 0.0  # arrival time of the frame being applied
        self.invokes: Counter[str] = Counter()
        self._send_lock = asyncio.Lock()
        self._waiters: list[tuple[object, asyncio.Future]] = []
        self._registered: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._snackbars: set[int] = set()

    # -- connection

    async def open(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._registered = loop.create_future()
        self.ws = await asyncio.wait_for(
            connect(self.url, max_size=None, open_timeout=timeout, ping_interval=None),
            timeout,
        )
        self._reader = asyncio.create_task(self._read())
        page = {
            "route": START_ROUTE,
            "pwa": False,
            "web": True,
            "debug": False,
            "wasm": False,
            "multi_view": False,
            "platform_brightness": "light",
            "width": PAGE_SIZE[0],
            "height": PAGE_SIZE[1],
            "platform": "linux",
            "window": {},
        }
        await self._send(REGISTER, {"session_id": None, "page_name": "", "page": page})
        await asyncio.wait_for(asyncio.shield(self._registered), timeout)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, 5)
        self._fail_waiters(DisconnectedError("client closed"))

    async def _send(self, action: int, body: dict) -> None:
        if self.closed is not None:
            raise DisconnectedError(f"connection closed: {short(self.closed)}")
        async with self._send_lock:
            await self.ws.send(_pack(action, body))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- receiving

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                arrived = self.frame_arrived = time.monotonic()
                self.frames += 1
                self.bytes_in += len(data)
                if isinstance(data, str) or not data or data[0] != 0:
                    continue  # data-channel frames (0x01) are not used by this app
                action, body = msgpack.unpackb(data[1:], strict_map_key=False, ext_hook=_ext_hook)
                self._on_message(action, body, arrived)
            self.closed = DisconnectedError("the server closed the WebSocket")
        except asyncio.CancelledError:
            self.closed = DisconnectedError("reader cancelled")
            raise
        except Exception as exc:  # a broken frame or patch is this harness's error: report it
            self.closed = exc
        finally:
            self._fail_waiters(
                self.closed if self.closed is not None else DisconnectedError("reader ended")
            )
            if self._registered is not None and not self._registered.done():
                self._registered.set_exception(DisconnectedError("closed before registration"))

    def _on_message(self, action: int, body: dict, arrived: float) -> None:
        if action == REGISTER:
            if body.get("error"):
                self._registered.set_exception(UnexpectedError(f"register: {body['error']}"))
                return
            self.session_id = body["session_id"]
            self.tree = ControlTree(body["page_patch"])
            if not self._registered.done():
                self._registered.set_result(None)
        elif action == PATCH:
            if self.tree is None:
                return
            self.tree.apply(body["id"], body["patch"])
            self._watch_snackbars()
        elif action == INVOKE:
            self.invokes[body.get("name", "?")] += 1
            self._spawn(self._answer(body))
        elif action == CRASHED:
            self.crash = str(body.get("message", ""))
            self._fail_waiters(SessionCrashedError(_last_line(self.crash)))
            return
        self._check_waiters(arrived)

    async def _answer(self, body: dict) -> None:
        """Do what Flutter does for the method, then answer it."""
        name, args = body.get("name"), body.get("args") or {}
        if name == "push_route" and self.tree is not None:
            page = self.tree.root
            route = args.get("route")
            if route and route != page.get("route"):
                page["route"] = route
                await self._send(UPDATE, {"id": page["_i"], "props": {"route": route}})
                # Flutter sends route_change whether or not the page has a handler
                await self._send(
                    EVENT, {"target": page["_i"], "name": "route_change", "data": {"route": route}}
                )
        response = {
            "control_id": body.get("control_id"),
            "call_id": body.get("call_id"),
            "result": None,
            "error": None,
        }
        with contextlib.suppress(DisconnectedError, ConnectionClosed):
            await self._send(INVOKE, response)

    def _watch_snackbars(self) -> None:
        """A SnackBar closes itself after its duration: Flutter then sets open False and sends
        "dismiss" (the server removes it from the page's dialogs)."""
        dialogs = self.tree.root.get("_dialogs") or {}
        for control in dialogs.get("controls") or []:
            if (
                isinstance(control, dict)
                and control.get("_c") == "SnackBar"
                and control.get("open")
                and control["_i"] not in self._snackbars
            ):
                self._snackbars.add(control["_i"])
                seconds = _duration_s(control.get("duration"))
                self._spawn(self._dismiss_later(control, seconds))

    async def _dismiss_later(self, control: dict, seconds: float) -> None:
        await asyncio.sleep(seconds)
        control["open"] = False
        with contextlib.suppress(DisconnectedError, ConnectionClosed):
            await self._send(UPDATE, {"id": control["_i"], "props": {"open": False}})
            if control.get("on_dismiss"):
                await self._send(EVENT, {"target": control["_i"], "name": "dismiss", "data": None})
        self._snackbars.discard(control["_i"])

    # -- waiting

    def _check_waiters(self, arrived: float) -> None:
        keep = []
        for pred, fut in self._waiters:
            if fut.done():
                continue
            try:
                result = pred(self.tree)
            except Exception as exc:
                fut.set_exception(exc)
                continue
            if result:
                fut.set_result((arrived, result))
            else:
                keep.append((pred, fut))
        self._waiters = keep

    def _fail_waiters(self, exc: BaseException) -> None:
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._waiters = []

    def _check_open(self) -> None:
        if self.crash is not None:
            raise SessionCrashedError(_last_line(self.crash))
        if self.closed is not None:
            raise DisconnectedError(f"connection closed: {short(self.closed)}")

    async def _settle(self, fut: asyncio.Future, what: str, timeout: float | None):
        limit = self.step_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            raise StepTimeoutError(f"{what}: not seen within {limit:g} s") from None

    async def wait(self, pred, what: str, timeout: float | None = None):
        """(arrival time, pred's value) once pred(tree) is truthy, now or after a later frame;
        StepTimeoutError otherwise."""
        self._check_open()
        result = pred(self.tree)
        if result:
            return time.monotonic(), result
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return await self._settle(fut, what, timeout)

    async def click_and_wait(self, identifier: str, pred, what: str):
        """(click written, arrival time, pred's value): pred is watched from before the click
        and only on frames that arrive after it."""
        self._check_open()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            t_click = await self.click(identifier)
        except BaseException:
            fut.cancel()
            raise
        arrived, result = await self._settle(fut, what, None)
        return t_click, arrived, result

    # -- acting

    def control(self, identifier: str) -> dict:
        control = self.tree.control(identifier)
        if control is None:
            raise UnexpectedError(f"{identifier} is not shown")
        return control

    async def click(self, identifier: str) -> float:
        """Tap the control under `identifier`; returns when the event was written."""
        control = self.control(identifier)
        if not control.get("on_click"):
            raise UnexpectedError(f"{identifier} ({control.get('_c')}) has no click handler")
        await self._send(EVENT, {"target": control["_i"], "name": "click", "data": None})
        return time.monotonic()

    async def type_text(self, identifier: str, text: str, key_delay: float) -> None:
        """Select all + delete when the field holds something, then one key at a time. A key:
        the page's "keyboard_event" (the app listens to keys: Flutter then reports every key
        down), the field's value (UPDATE_CONTROL_PROPS) and its "change" event when it has a
        handler, as Flutter's TextField.onChanged does."""
        control = self.control(identifier)
        if control.get("value"):
            await self._key("A", ctrl=True)
            await self._key("Delete")
            await self._set_value(control, "")
        for n in range(1, len(text) + 1):
            if n > 1 and key_delay > 0:
                await asyncio.sleep(key_delay)
            char = text[n - 1]
            await self._key(char.upper(), shift=char.isupper())
            await self._set_value(control, text[:n])

    async def _key(self, label: str, shift: bool = False, ctrl: bool = False) -> None:
        page = self.tree.root
        if page.get("on_keyboard_event"):
            data = {"key": label, "shift": shift, "ctrl": ctrl, "alt": False, "meta": False}
            await self._send(EVENT, {"target": page["_i"], "name": "keyboard_event", "data": data})

    async def _set_value(self, control: dict, value: str) -> None:
        control["value"] = value
        await self._send(UPDATE, {"id": control["_i"], "props": {"value": value}})
        if control.get("on_change"):
            await self._send(EVENT, {"target": control["_i"], "name": "change", "data": value})


# ------------------------------------------------------------------ one session


@dataclass
class Config:
    sessions: int = 20
    seconds: float = 120.0
    load_timeout: float = 60.0
    step_timeout: float = 30.0
    grace: float = 60.0
    key_delay: float = 0.035
    think: float = 0.2
    seed: int = 7
    bundle: str = str(BUNDLE)


class ProtoSession(kl.KioskSession):
    """One protocol client = one Flet session = one clinician at a kiosk. `samples` and
    `patients` have the shape bench/kiosk_load.py's `check_database` reads."""

    def __init__(self, index: int, cfg: Config, url: str, pool, code_index: CodeIndex):
        super().__init__(index, url, pool, cfg.seed)
        self.cfg = cfg
        self.code_index = code_index
        self.client: FletClient | None = None
        self.reconnects = 0
        self.frames = 0
        self.bytes_in = 0
        self.missing_targets = 0
        self.invokes: Counter[str] = Counter()

    async def connect(self) -> None:
        await self.disconnect()
        client = FletClient(self.url, self.cfg.step_timeout)
        self.client = client
        await client.open(self.cfg.load_timeout)
        await client.wait(
            lambda t: t.has("new-patient-name") and t.has("patient-search"),
            "the Patients view",
            self.cfg.load_timeout,
        )

    async def disconnect(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        self.frames += client.frames
        self.bytes_in += client.bytes_in
        self.missing_targets += client.tree.missing_targets if client.tree else 0
        self.invokes.update(client.invokes)
        await client.close()

    async def load(self, t0: float) -> None:
        try:
            await asyncio.wait_for(self.connect(), self.cfg.load_timeout + 5)
            self.loaded = True
        except Exception as exc:  # reported, the other sessions go on
            self.load_error = f"{error_kind(exc)}: {short(exc)}"
        finally:
            self.load_s = time.monotonic() - t0
            self.settled.set()

    async def run(self, t0: float, go: asyncio.Event, window: dict) -> None:
        try:
            await self.load(t0)
            await self.visits(go, window)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.disconnect())

    async def recover(self) -> None:
        """After a failure: a new session from the start (a page reload)."""
        self.reconnects += 1
        try:
            await asyncio.wait_for(self.connect(), self.cfg.load_timeout + 5)
        except Exception as exc:
            self.give_up("reconnect", error_kind(exc), short(exc))

    async def pause(self) -> None:
        if self.cfg.think > 0:
            await asyncio.sleep(self.cfg.think * self.rng.uniform(0.5, 1.5))

    async def one_visit(self, iteration: int, window_start: float) -> bool:
        c = self.client
        name = f"Proto S{self.index:02d} P{iteration:03d}"
        chosen = self.rng.sample(self.pool, self.rng.choice((1, 2)))
        sample, patient = self.new_visit(iteration, name, chosen, window_start)
        started = time.monotonic()
        try:
            if c is None:
                raise DisconnectedError("no session")
            await c.type_text("patient-search", name, self.cfg.key_delay)
            await c.wait(
                lambda t: t.has("patient-none") and not t.has(ident("patient-result", 0)),
                "'No patient found' for the new name",
            )
            await self.pause()
            await c.type_text("new-patient-name", name, self.cfg.key_delay)
            await self.pause()
            await c.click("new-patient-create")

            def opened(t: ControlTree):
                error = t.text("new-patient-error")
                if error:
                    raise AppError(f"Create patient showed {error!r}")
                shown = t.text("current-patient") or ""
                if shown and shown != "No patient open" and t.has("dx-search"):
                    return shown
                return None

            _, shown = await c.wait(opened, "the new patient open in the Visit view")
            if shown != name:
                raise UnexpectedError(f"Create patient opened {shown!r}, not {name!r}")
            patient["created_confirmed"] = sample["patient_confirmed"] = True

            sample["step"] = "diagnosis"
            for code, query in chosen:
                await self.pause()
                await self.add_diagnosis(code, query)

            sample["step"] = "suggest"
            await self.pause()
            rows = await self.timed_suggest(sample)

            sample["step"] = "accept"
            for code in rows[: min(len(rows), self.rng.choice((1, 2)))]:
                await self.pause()
                await c.click(ident("accept", code))
                await c.wait(
                    lambda t, code=code: (t.text(ident("status", code)) or "") == "Accepted",
                    f"{code} Accepted",
                )
                sample["accepted"].append(code)

            sample["step"] = "save"
            await self.pause()
            before = c.tree.text("visit-status") or ""

            def saved(t: ControlTree):
                status = t.text("visit-status") or ""
                found = SAVED_RE.search(status)
                if found:
                    return found.group(1)
                if status and status != before and not status.startswith(SAVING):
                    raise AppError(f"Save showed {status!r}")
                return None

            t_save, arrived, prefix = await c.click_and_wait(
                "visit-save", saved, "'Saved visit <id>'"
            )
            sample["save_ms"] = (arrived - t_save) * 1e3
            sample["visit_prefix"] = prefix
            sample["save_confirmed"] = True
            patient["visits_believed_saved"] += 1
            patient["visit_prefixes"].append(prefix)

            sample["step"] = "close-patient"
            await self.pause()
            await c.click("close-patient")
            await c.wait(
                lambda t: (
                    t.has("new-patient-name")
                    and (t.text("current-patient") or "") == "No patient open"
                ),
                "the Patients view after Close patient",
            )
            sample["step"] = "done"
            return True
        except asyncio.CancelledError:
            sample["error"] = {"kind": f"cut-at-deadline:{sample['step']}", "message": ""}
            raise
        except Exception as exc:
            sample["error"] = {
                "kind": f"{error_kind(exc)}:{sample['step']}",
                "message": short(exc),
            }
            if c is not None and c.tree is not None:
                with contextlib.suppress(Exception):
                    sample["error"]["shown"] = c.tree.shown()
                    sample["error"]["identifiers"] = c.tree.identifiers()[:60]
                if c.crash:
                    sample["error"]["server_traceback_tail"] = c.crash[-1500:]
            return False
        finally:
            sample["t_end_s"] = time.monotonic() - window_start
            sample["visit_s"] = time.monotonic() - started

    async def add_diagnosis(self, code: str, query: str) -> None:
        """Type the query key by key; wait until the options are exactly those the app's index
        lists for the whole query (every key answered), tap the code, wait for its chip."""
        c = self.client
        expected = [
            ident("dx", "option", o.code) for o in self.code_index.search(query)[:OPTIONS_SHOWN]
        ]
        option = ident("dx", "option", code)
        if option not in expected:
            raise UnexpectedError(f"{code} is not among the options for {query!r}")
        await c.type_text("dx-search", query, self.cfg.key_delay)
        await c.wait(
            lambda t: t.ids_under("dx-options") == expected,
            f"the {len(expected)} options for {query!r}",
        )
        await self.pause()
        await c.click(option)
        chip = ident("dx", "chip", code)
        await c.wait(lambda t: t.has(chip) and not t.ids_under("dx-options"), f"the chip {chip}")

    async def timed_suggest(self, sample: dict) -> list[str]:
        """Press Suggest; latency = click written -> the frame that shows the result."""
        c = self.client
        marks: dict = {}

        def done(t: ControlTree):
            status = t.text("visit-status") or ""
            if SCORING in status and "scoring" not in marks:
                marks["scoring"] = c.frame_arrived
            rows = [i for i in t.ids_under("suggestions") if i.startswith("suggestion-")]
            if DONE_TEXT in status and rows:
                return rows
            if status and SCORING not in status and "scoring" in marks:
                raise AppError(f"Suggest showed {status!r}")
            return None

        t_click, arrived, rows = await c.click_and_wait("visit-suggest", done, "the suggestions")
        sample["suggest_ms"] = (arrived - t_click) * 1e3
        if "scoring" in marks:
            sample["click_to_scoring_ms"] = (marks["scoring"] - t_click) * 1e3
        sample["rows"] = len(rows)
        return [r.removeprefix("suggestion-") for r in rows]


# ------------------------------------------------------------------ the whole drive


async def drive(cfg: Config, server, pool, code_index: CodeIndex, hard_deadline: float) -> dict:
    out: dict = {}
    url = f"ws://{fd.HOST}:{server.port}/ws"
    sessions = [ProtoSession(i + 1, cfg, url, pool, code_index) for i in range(cfg.sessions)]
    window: dict = {"start": None, "end": None}
    go = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(s.run(t0, go, window)) for s in sessions]
    try:
        await fd.run_window(
            out,
            sessions,
            tasks,
            go,
            window,
            t0=t0,
            load_backstop_s=cfg.load_timeout + 30,
            seconds=cfg.seconds,
            grace_s=cfg.grace,
            hard_deadline=hard_deadline,
            server_pid=server.proc.pid if server.proc else None,
            describe=lambda exc: f"{error_kind(exc)}: {short(exc)}",
            loaded_verb="registered",
        )
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.wait(tasks, timeout=30)
        for s in sessions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.disconnect(), 10)
    out["sessions"] = sessions
    out.setdefault("window_s", 0.0)
    out.setdefault("cut_at_deadline", 0)
    return out


def server_log_errors(log: str) -> list[str]:
    """Lines of the server log that report an error (FLET_LOG_LEVEL=error: only errors)."""
    keep = ("Traceback", "Error", "ERROR", "Exception", "error")
    return [line for line in log.splitlines() if any(k in line for k in keep)][:50]


def run_load(cfg: Config, out: Path | None = OUT, watchdog: bool = False) -> dict:
    """Start the server on a fresh DB, run the sessions, stop everything, check the DB.
    Returns the result (also written to `out` unless None). Raises fd.SetupError when the run
    cannot be made."""
    bundle_dir = Path(cfg.bundle).resolve()
    pool = fd.diagnosis_pool(bundle_dir, kl.DX_POOL)
    code_index = fd.diagnosis_index(load_bundle(bundle_dir))
    started = time.monotonic()
    budget = cfg.load_timeout + 30 + cfg.seconds + cfg.grace + 60
    hard_deadline = started + budget
    holder: dict = {}
    timer = fd.start_watchdog(budget + 90, holder) if watchdog else None
    try:
        with tempfile.TemporaryDirectory(prefix="pocketrec-kiosk-proto-") as tmp_name:
            server = fd.AppServer(bundle_dir, Path(tmp_name))
            holder["server"] = server
            try:
                server.start()
                server_start_s = server.wait_ready()
                run = asyncio.run(drive(cfg, server, pool, code_index, hard_deadline))
            finally:
                server_rc = server.stop()
                holder["server"] = None
            server_log = server.log_tail(20000)
            db_check = kl.check_database(server.db, run["sessions"])
    finally:
        if timer is not None:
            timer.cancel()
    result = summarize_run(cfg, run, db_check, server_log, bundle_dir)
    result["config"]["server_start_s"] = server_start_s
    result["config"]["server_exit_code"] = server_rc
    result["config"]["wall_s"] = time.monotonic() - started
    result["table_markdown"] = table(result)
    if out is not None:
        fd.write_json_atomic(out, result)
    return result


def summarize_run(cfg: Config, run: dict, db_check: dict, server_log: str, bundle_dir) -> dict:
    sessions: list[ProtoSession] = run["sessions"]
    samples = [x for s in sessions for x in s.samples]
    visits = [x for x in samples if x.get("iteration") is not None]
    confirmed = [x for x in visits if x["save_confirmed"]]
    errors = []
    for x in samples:
        if x.get("error"):
            errors.append(
                {
                    "session": x["session"],
                    "iteration": x.get("iteration"),
                    "kind": x["error"]["kind"],
                    "reason": x["error"]["message"],
                }
            )
    for s in sessions:
        if s.load_error is not None:
            errors.append(
                {
                    "session": s.index,
                    "iteration": None,
                    "kind": s.load_error.split(":", 1)[0] + ":load",
                    "reason": s.load_error,
                }
            )
    for message in run.get("task_errors", []):
        errors.append({"session": None, "iteration": None, "kind": "task", "reason": message})
    log_errors = server_log_errors(server_log)
    window_s = run["window_s"] or 1e-9
    busy, cpu_split = fd.cpu_shares(run, window_s)
    if cpu_split is not None:
        cpu_split["protocol clients"] = cpu_split.pop("this script", 0.0)
        for group in ("chromium", "playwright driver"):
            cpu_split.pop(group, None)
    per_session = {s.index: 0 for s in sessions}
    for x in confirmed:
        per_session[x["session"]] += 1
    suggest = fd.summarize([x["suggest_ms"] for x in visits if x["suggest_ms"] is not None])
    summary = {
        "sessions_requested": cfg.sessions,
        "sessions_loaded": sum(s.loaded for s in sessions),
        "load_s": fd.summarize([s.load_s for s in sessions if s.loaded]),
        "seconds": cfg.seconds,
        "window_s": run["window_s"],
        "visits_started": len(visits),
        "visits_confirmed_by_ui": len(confirmed),
        "visits_confirmed_per_session": per_session,
        "min_visits_per_session": min(per_session.values()) if per_session else 0,
        "visits_per_min": len(confirmed) / (window_s / 60.0),
        "errors": len(errors),
        "errors_by_kind": dict(Counter(e["kind"] for e in errors)),
        "reconnects": sum(s.reconnects for s in sessions),
        "dead_sessions": [f"session {s.index}: {s.dead}" for s in sessions if s.dead],
        "cut_at_deadline": run["cut_at_deadline"],
        "suggest_ms": suggest,
        "click_to_scoring_ms": fd.summarize(
            [x["click_to_scoring_ms"] for x in visits if x["click_to_scoring_ms"] is not None]
        ),
        "save_ms": fd.summarize([x["save_ms"] for x in confirmed]),
        "visit_s": fd.summarize([x["visit_s"] for x in confirmed]),
        "frames_received": sum(s.frames for s in sessions),
        "mib_received": sum(s.bytes_in for s in sessions) / 2**20,
        "patch_targets_missing": sum(s.missing_targets for s in sessions),
        "methods_invoked": dict(sum((s.invokes for s in sessions), Counter())),
        "server_log_errors": len(log_errors),
        "machine_busy": busy,
        "cpu_share_by_group": cpu_split,
        "server_cpu_share": None if cpu_split is None else cpu_split.get("app server"),
    }
    failures = []
    if errors:
        failures.append(f"{len(errors)} errors")
    if summary["sessions_loaded"] < cfg.sessions:
        failures.append(f"only {summary['sessions_loaded']} of {cfg.sessions} sessions loaded")
    failures += kl.db_failures(db_check)
    if log_errors:
        failures.append(f"{len(log_errors)} error lines in the server log")
    verdict = "FAIL (" + ", ".join(failures) + ")" if failures else "PASS"
    machine = fd.machine_info()
    machine.pop("playwright", None)
    machine["websockets"] = fd.dist_version("websockets")
    machine["msgpack"] = fd.dist_version("msgpack")
    machine["loadavg_end"] = run.get("loadavg_end")
    keep = (
        "session iteration patient diagnoses typed accepted t_start_s visit_s suggest_ms "
        "click_to_scoring_ms rows visit_prefix save_confirmed save_ms step error"
    ).split()
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": os.path.relpath(bundle_dir, ROOT),
        "config": {**asdict(cfg), "bundle": os.path.relpath(bundle_dir, ROOT)},
        "machine": machine,
        "method": {
            "client": "One asyncio WebSocket client per session in this process, speaking the "
            "Flet protocol (see the module docstring); no browser.",
            "visit": "Find a patient (typed key by key) until 'No patient found'; type the name, "
            "Create patient, wait for it in the header; 1 or 2 diagnoses: type the query key by "
            "key, wait until the options equal what app.state.CodeIndex lists for the whole "
            "query, tap the code, wait for its chip; Suggest; accept the first 1 or 2 rows, each "
            "until 'Accepted'; Save until 'Saved visit <8 hex>' (confirmed only then); Close "
            f"patient. Keys {cfg.key_delay * 1000:g} ms apart; {cfg.think:g} s (x0.5-1.5) "
            "between steps.",
            "suggest_latency": "Client monotonic clock: Suggest click event written to the "
            "socket -> arrival of the frame after whose patch the status says 'at or above the "
            "threshold' with suggestion rows present.",
            "errors": "kind:step; timeout = a wait ran past the step timeout; app-error = the "
            "app showed an error; session-crashed = SESSION_CRASHED from the server; "
            "disconnected = the socket closed; unexpected = the tree showed something else. "
            "After an error the session registers anew.",
            "db_check": "bench/kiosk_load.py check_database: server stopped; confirmed visits "
            "by id prefix (lost), whole (suggestions, decisions, save_visit audit: partial), as "
            "entered (mismatched); PRAGMA integrity_check.",
            "cpu": "CPU seconds of the server's process tree and of this process over the "
            "window, divided by the window (1.0 = one core busy).",
        },
        "summary": summary,
        "db_check": db_check,
        "verdict": verdict,
        "errors": errors[:500],
        "server_log_errors": log_errors,
        "sessions": [
            {
                "session": s.index,
                "loaded": s.loaded,
                "load_s": s.load_s,
                "load_error": s.load_error,
                "reconnects": s.reconnects,
                "dead": s.dead,
                "visits_confirmed": per_session[s.index],
                "frames": s.frames,
            }
            for s in sessions
        ],
        "samples": [{k: x.get(k) for k in keep} for x in visits],
        "server_log_tail": server_log[-4000:],
    }


# ------------------------------------------------------------------ report


def table(result: dict) -> str:
    s, db = result["summary"], result["db_check"]
    lat = s["suggest_ms"]
    cpu = s["server_cpu_share"]
    errors = "; ".join(f"{k} ×{n}" for k, n in sorted(s["errors_by_kind"].items())) or "none"
    head = [
        "sessions",
        "seconds",
        "visits confirmed",
        "visits in DB",
        "lost",
        "partial",
        "integrity",
        "errors",
        "suggest p50",
        "suggest p95",
        "suggest max",
        "server CPU",
    ]
    row = [
        f"{s['sessions_loaded']}/{s['sessions_requested']}",
        f"{s['seconds']:g}",
        str(db["visits_confirmed"]),
        str(db["visits_in_db"]),
        str(db["lost"]),
        str(db["partial"]),
        ", ".join(db["integrity_check"]),
        errors,
        kl.fmt_ms(lat, "p50"),
        kl.fmt_ms(lat, "p95"),
        kl.fmt_ms(lat, "max"),
        "n/a" if cpu is None else f"{cpu:.2f} cores",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| " + " | ".join(row) + " |",
        "",
        f"Suggest latency (n={lat.get('n', 0)}): Suggest click written to the WebSocket -> "
        "the frame showing the result arrives (client clock).",
    ]
    visit = s["visit_s"]
    if visit.get("n"):
        lines.append(
            f"Whole visit p50 {visit['p50']:.1f} s, p95 {visit['p95']:.1f} s; "
            f"{s['visits_per_min']:.0f} visits/min; per session min "
            f"{s['min_visits_per_session']}; save p95 {kl.fmt_ms(s['save_ms'], 'p95')}."
        )
    split = s.get("cpu_share_by_group") or {}
    if s.get("machine_busy") is not None:
        parts = ", ".join(f"{g} {v:.2f}" for g, v in sorted(split.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"Machine CPU busy {s['machine_busy']:.0%} of {result['machine']['cpus']} CPUs "
            f"(in cores: {parts})."
        )
    lines.append(
        f"Frames received {s['frames_received']} ({s['mib_received']:.1f} MiB); patch targets "
        f"missing {s['patch_targets_missing']}; reconnects {s['reconnects']}; cut at deadline "
        f"{s['cut_at_deadline']}; server log error lines {s['server_log_errors']}."
    )
    lines.append(
        f"DB: visits in DB for these patients {db['visits_in_db']} (whole DB "
        f"{db['visits_in_db_total']}), saved but not confirmed {db['unconfirmed_in_db']}, "
        f"mismatched {db['mismatched']}, confirmed patients missing "
        f"{db['patients_confirmed_missing']}."
    )
    for e in result["errors"][:5]:
        lines.append(
            f"Error: session {e['session']} visit {e['iteration']}: {e['kind']}: "
            f"{e['reason'][:200]}"
        )
    lines.append(f"Verdict: {result['verdict']}.")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Config()
    ap.add_argument("--sessions", type=int, default=d.sessions)
    ap.add_argument("--seconds", type=float, default=d.seconds, help="loop window")
    ap.add_argument("--load-timeout", type=float, default=d.load_timeout)
    ap.add_argument("--step-timeout", type=float, default=d.step_timeout)
    ap.add_argument("--grace", type=float, default=d.grace, help="to finish the last visit")
    ap.add_argument("--key-delay", type=float, default=d.key_delay, help="seconds between keys")
    ap.add_argument("--think", type=float, default=d.think, help="seconds between steps")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.seconds <= 0:
        ap.error("--sessions must be at least 1 and --seconds positive")
    cfg = Config(
        sessions=args.sessions,
        seconds=args.seconds,
        load_timeout=args.load_timeout,
        step_timeout=args.step_timeout,
        grace=args.grace,
        key_delay=args.key_delay,
        think=args.think,
        seed=args.seed,
        bundle=str(args.bundle),
    )

    fd.exit_on_sigterm()
    try:
        result = run_load(cfg, args.out, watchdog=True)
    except fd.SetupError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    print(result["table_markdown"])
    print(
        f"\nwrote {os.path.relpath(args.out.resolve(), ROOT)} ({result['config']['wall_s']:.0f} s)"
    )
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
