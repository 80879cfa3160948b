"""A minimal Flet client speaking the server's WebSocket protocol (no browser), for the many
concurrent sessions of bench/kiosk_protocol_load.py and tests/test_kiosk_protocol.py.

The protocol (flet 1.0.5 / flet-web 1.0.5, read from `flet/messaging/protocol.py`,
`flet/messaging/session.py` and `flet_web/fastapi/flet_app.py`): one WebSocket per session at
ws://127.0.0.1:PORT/ws; every binary frame is `0x00` + a MessagePack array `[action, body]`.
What this client sends and handles, like the Flutter client (`flet_backend.dart`):

- REGISTER_CLIENT (1) `{session_id: None, page_name: "", page: {route: "/patients", width,
  height, web: True, platform, ...}}`; the answer's `page_patch` is the whole Page control,
  kept in memory (bench/harness/control_tree.py);
- PATCH_CONTROL (2) from the server `{id, patch}`: applied to that tree in order;
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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import msgpack
from flet.messaging.protocol import MessageAction
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.harness.control_tree import ControlTree
from bench.harness.errors import AppError, UnexpectedError
from bench.harness.errors import short as short_message

REGISTER = MessageAction.REGISTER_CLIENT.value
PATCH = MessageAction.PATCH_CONTROL.value
EVENT = MessageAction.CONTROL_EVENT.value
UPDATE = MessageAction.UPDATE_CONTROL_PROPS.value
INVOKE = MessageAction.INVOKE_METHOD.value
CRASHED = MessageAction.SESSION_CRASHED.value
PAGE_SIZE = (1440.0, 1000.0)
START_ROUTE = "/patients"
SNACKBAR_DEFAULT_S = 4.0
SHORT = 400  # characters of an error message kept


class StepTimeoutError(TimeoutError):
    """A wait ran past the step timeout (kind "timeout")."""


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


def short(exc: BaseException) -> str:
    return short_message(exc, SHORT)


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
