"""The kiosk: a shared device left alone goes back to its start screen, and a PIN opens it.

- `IdleTimer`: when the kiosk has been left alone for `timeout` seconds;
- the PIN: `hash_pin`, `verify_pin`, `PinStore` (a salted PBKDF2 hash in a settings file beside
  the database, never the PIN itself);
- `KioskSettings`: kiosk mode on or off and its idle timeout;
- `Kiosk`: one UI session's lock: locked while a PIN is set and not yet entered, and a pause
  after PIN_MAX_FAILURES wrong ones.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.storage.errors import HistoryError
from contract.files import atomic_write_text

DEFAULT_IDLE_TIMEOUT = 120.0
SETTINGS_SUFFIX = ".settings.json"
PIN_ALGORITHM = "pbkdf2_sha256"
PIN_ITERATIONS = 240_000
PIN_MIN_LENGTH = 4
PIN_MAX_FAILURES = 5  # consecutive wrong PINs before a pause
PIN_LOCKOUT_SECONDS = 30.0

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "PIN_LOCKOUT_SECONDS",
    "PIN_MAX_FAILURES",
    "IdleTimer",
    "Kiosk",
    "KioskSettings",
    "PinStore",
    "hash_pin",
    "verify_pin",
]


class IdleTimer:
    """When the kiosk has been left alone for `timeout` seconds. `now` is a `clock()` reading
    (time.monotonic by default), so tests can pass their own times."""

    def __init__(
        self, timeout: float = DEFAULT_IDLE_TIMEOUT, clock: Callable[[], float] | None = None
    ):
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"idle timeout must be a positive number of seconds; got {timeout!r}")
        self.timeout = float(timeout)
        self.clock = clock or time.monotonic
        self.last_activity = self.clock()

    def touch(self, now: float | None = None) -> None:
        """Record user activity."""
        self.last_activity = self.clock() if now is None else float(now)

    def remaining(self, now: float | None = None) -> float:
        now = self.clock() if now is None else float(now)
        return max(0.0, self.timeout - (now - self.last_activity))

    def expired(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else float(now)
        return now - self.last_activity >= self.timeout


def hash_pin(pin: str, *, salt: bytes | None = None, iterations: int = PIN_ITERATIONS) -> str:
    """ "pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>" for `pin` (a fresh 16-byte salt)."""
    pin = _check_pin(pin)
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt, int(iterations))
    return f"{PIN_ALGORITHM}${int(iterations)}${salt.hex()}${digest.hex()}"


def verify_pin(pin: str, stored: str) -> bool:
    """Whether `pin` matches the `hash_pin` record `stored` (constant-time comparison)."""
    try:
        algorithm, iterations, salt, digest = stored.split("$")
        if algorithm != PIN_ALGORITHM:
            return False
        expected = bytes.fromhex(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha256", str(pin).encode("utf-8"), bytes.fromhex(salt), int(iterations)
        )
    except (ValueError, AttributeError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _check_pin(pin: Any) -> str:
    if not isinstance(pin, str) or not pin.isdigit() or len(pin) < PIN_MIN_LENGTH:
        raise ValueError(f"a PIN is at least {PIN_MIN_LENGTH} digits")
    return pin


class PinStore:
    """The kiosk PIN's hash in a small JSON settings file beside the database (owner-only,
    written atomically). The PIN itself is never written anywhere."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    @classmethod
    def beside(cls, db_path: str | os.PathLike[str]) -> PinStore:
        db_path = Path(db_path)
        return cls(db_path.with_name(db_path.stem + SETTINGS_SUFFIX))

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise HistoryError(
                f"cannot read the settings file {self.path}: {exc}", self.path
            ) from exc
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict) -> None:
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True), durable=True)

    def has_pin(self) -> bool:
        return bool(self._read().get("pin_hash"))

    def set_pin(self, pin: str) -> None:
        data = self._read()
        data["pin_hash"] = hash_pin(pin)
        self._write(data)

    def clear_pin(self) -> None:
        data = self._read()
        if data.pop("pin_hash", None) is not None:
            self._write(data)

    def check(self, pin: str) -> bool:
        stored = self._read().get("pin_hash")
        return bool(stored) and verify_pin(pin, stored)


@dataclass
class KioskSettings:
    """`enabled`: full-screen shared device: idle timeout back to the start screen, PIN if set."""

    enabled: bool = False
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


class Kiosk:
    """One UI session's kiosk state: the settings and PIN store (shared by every session), its
    own idle timer and lock. `clock` is time.monotonic unless a test passes its own."""

    def __init__(
        self,
        pins: PinStore,
        settings: KioskSettings | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.pins = pins
        self.settings = settings or KioskSettings()
        self.clock = clock or time.monotonic
        self.idle = IdleTimer(self.settings.idle_timeout, self.clock)
        self.locked = self.pins.has_pin()
        self._failures = 0
        self._locked_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def session(self) -> Kiosk:
        """The kiosk of one more UI session: same settings and PIN, its own timer and lock."""
        return Kiosk(self.pins, self.settings, self.clock)

    def touch(self) -> None:
        self.idle.touch()

    def idle_expired(self) -> bool:
        return self.enabled and self.idle.expired()

    def relock(self) -> None:
        """After the idle timeout: locked again when a PIN is set, the idle clock restarted."""
        self.locked = self.pins.has_pin()
        self.idle.touch()

    def unlock(self, pin: str, now: float | None = None) -> bool:
        """Check the PIN; after PIN_MAX_FAILURES wrong ones, every try fails for a while."""
        now = self.clock() if now is None else now
        if not self.pins.has_pin():
            self.locked = False
            return True
        if now < self._locked_until:
            return False
        if self.pins.check(pin):
            self.locked = False
            self._failures = 0
            self.idle.touch(now)
            return True
        self._failures += 1
        if self._failures >= PIN_MAX_FAILURES:
            self._failures = 0
            self._locked_until = now + PIN_LOCKOUT_SECONDS
        return False

    def lockout_remaining(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        return max(0.0, self._locked_until - now)
