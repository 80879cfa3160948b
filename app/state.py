"""The app's state and logic, in plain Python (no flet): the views only display it and forward
the clinician's actions to it.

- `AppState`: the bundle, the recommender, the history database and the kiosk settings, plus
  what one UI session is looking at (the open patient and visit). Heavy parts are loaded once
  (`AppState.open`) and shared between sessions (`AppState.session`).
- `PatientForm`: the new-patient form (name and the profile fields the model reads).
- `VisitState`: one visit being entered: diagnoses and procedures, the model's suggestions with
  DDI warnings, the "why" of a suggestion (`basis`), the clinician's decisions, the note; `save`.
- `CodeIndex`: type-ahead over codes and their titles (or drug classes and their names).
- Kiosk: `IdleTimer` and the PIN (`hash_pin`, `verify_pin`, `PinStore`: a salted PBKDF2 hash in a
  settings file beside the database, never the PIN itself).

This module is on the app's side of the dependency wall: the standard library, numpy and app.*.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.history import History, HistoryError, default_db_path
from app.migrations import PROFILE_FIELDS
from app.news_state import NewsState
from app.runtime import Bundle, Recommendation, Recommender, encode_visit, load_bundle

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_TOP_K = 10
SETTINGS_SUFFIX = ".settings.json"
PIN_ALGORITHM = "pbkdf2_sha256"
PIN_ITERATIONS = 240_000
PIN_MIN_LENGTH = 4
PIN_MAX_FAILURES = 5  # consecutive wrong PINs before a pause
PIN_LOCKOUT_SECONDS = 30.0
DECISION_NAMES = ("accepted", "added", "rejected")
KINDS = {
    "diagnoses": "diagnoses",
    "dx": "diagnoses",
    "procedures": "procedures",
    "px": "procedures",
}

__all__ = [
    "DEFAULT_BUNDLE",
    "AppState",
    "BasisItem",
    "CodeIndex",
    "CodeOption",
    "DdiWarning",
    "IdleTimer",
    "KioskSettings",
    "PastVisit",
    "PatientForm",
    "PinStore",
    "SuggestResult",
    "Suggestion",
    "TimelineEntry",
    "VisitState",
    "hash_pin",
    "verify_pin",
]

_WORD = re.compile(r"[0-9a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


# ------------------------------------------------------------------ type-ahead


@dataclass(frozen=True)
class CodeOption:
    """One type-ahead option: a code and its title (a diagnosis, procedure or drug class)."""

    code: str
    title: str

    @property
    def label(self) -> str:
        return (
            f"{self.code} — {self.title}" if self.title and self.title != self.code else self.code
        )


@dataclass(frozen=True)
class _Entry:
    code: str
    title: str
    order: int
    code_key: str  # "icd9cm:4019"
    bare_key: str  # "4019"
    title_key: str  # "unspecified essential hypertension"
    title_words: tuple[str, ...]


class CodeIndex:
    """Type-ahead over (code, title) pairs, given in the order used to break ties (the vocabulary
    order, which is by frequency in the training data).

    A query matches a code when the code, or its part after "system:", starts with it (dots and
    spaces ignored: "401.9" finds "icd9cm:4019"), or when every word of the query starts a word
    of the title (case-insensitive: "atri fib" finds "Atrial fibrillation"). Ranking: exact code
    first, then titles that start with the query, then the other matches.
    """

    def __init__(self, items: Iterable[tuple[str, str]]):
        entries = []
        for order, (code, title) in enumerate(items):
            title = title or code
            bare = code.split(":", 1)[1] if ":" in code else code
            entries.append(
                _Entry(
                    code=code,
                    title=title,
                    order=order,
                    code_key=code.casefold(),
                    bare_key=bare.casefold(),
                    title_key=" ".join(title.casefold().split()),
                    title_words=tuple(_words(title)),
                )
            )
        self._entries = entries
        self._by_code = {e.code: e for e in entries}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def title(self, code: str) -> str:
        entry = self._by_code.get(code)
        return entry.title if entry else code

    def search(self, query: str, limit: int = 20) -> list[CodeOption]:
        text = " ".join(str(query).casefold().split())
        if not text or limit < 1:
            return []
        compact = text.replace(".", "").replace(" ", "")
        words = _words(text)
        ranked = []
        for e in self._entries:
            exact = compact in (e.code_key, e.bare_key) or text == e.code_key
            code_prefix = e.code_key.startswith(compact) or e.bare_key.startswith(compact)
            word_match = bool(words) and all(
                any(tw.startswith(w) for tw in e.title_words) for w in words
            )
            if not (exact or code_prefix or word_match):
                continue
            if exact:
                rank = 0
            elif e.title_key.startswith(text):
                rank = 1
            else:
                rank = 2
            ranked.append((rank, e.order, e))
        ranked.sort(key=lambda r: (r[0], r[1]))
        return [CodeOption(e.code, e.title) for _, _, e in ranked[:limit]]


# ------------------------------------------------------------------ kiosk: idle timer and PIN


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

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


# ------------------------------------------------------------------ patients


@dataclass
class PatientForm:
    """The new-patient form: a display name and the profile fields (empty = unknown)."""

    display_name: str = ""
    gender: str = ""
    age_band: str = ""
    insurance: str = ""
    language: str = ""
    marital_status: str = ""
    race: str = ""
    religion: str = ""

    def profile(self) -> dict[str, str]:
        return {name: getattr(self, name).strip() for name in PROFILE_FIELDS}

    def errors(self) -> list[str]:
        return [] if self.display_name.strip() else ["enter the patient's name"]


@dataclass(frozen=True)
class PastVisit:
    """A saved visit as the model reads it: its codes and the drugs given (accepted or added)."""

    visit_id: str
    created: str
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    medications: tuple[str, ...]


@dataclass
class TimelineEntry:
    visit_id: str
    created: str  # local time, "YYYY-MM-DD HH:MM"
    diagnoses: list[CodeOption]
    procedures: list[CodeOption]
    accepted: list[CodeOption]
    added: list[CodeOption]
    rejected: list[CodeOption]
    note: str
    bundle_name: str


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(iso)


# ------------------------------------------------------------------ the visit


@dataclass
class Suggestion:
    code: str
    name: str
    probability: float
    suggested: bool  # at or above the bundle's threshold
    decision: str | None = None  # "accepted" | "rejected" | "added" | None


@dataclass(frozen=True)
class DdiWarning:
    """An interacting pair; `with_accepted`: one of the two is already accepted or added."""

    a: str
    b: str
    name_a: str
    name_b: str
    with_accepted: bool

    @property
    def message(self) -> str:
        where = "with an accepted drug" if self.with_accepted else "among the suggestions"
        return f"Interaction {where}: {self.a} {self.name_a} + {self.b} {self.name_b}"


@dataclass
class SuggestResult:
    suggestions: list[Suggestion]
    warnings: list[DdiWarning]
    unknown_codes: list[str]
    backend: str
    threshold: float


@dataclass(frozen=True)
class BasisItem:
    """How much the score of a drug falls when one input is left out."""

    kind: str  # "diagnosis" | "procedure" | "past visit"
    code: str  # the code, or the past visit's id
    label: str
    drop: float  # probability with everything - probability without this input
    without: float  # probability without this input


class VisitState:
    """One visit being entered for `patient` (see the module docstring)."""

    def __init__(
        self,
        bundle: Bundle,
        recommender: Recommender,
        history: History,
        patient: Mapping[str, Any],
        past: Sequence[PastVisit] = (),
        top_k: int = DEFAULT_TOP_K,
    ):
        self.bundle = bundle
        self.recommender = recommender
        self.history = history
        self.patient = dict(patient)
        self.past = list(past)
        self.top_k = top_k
        self.diagnoses: list[str] = []
        self.procedures: list[str] = []
        self.recommendation: Recommendation | None = None
        self.stale = False  # the inputs changed since the last `suggest`
        self.decisions: dict[str, str] = {}
        self.note = ""
        self._lock = threading.RLock()

    # -- inputs

    @property
    def patient_id(self) -> str:
        return self.patient["id"]

    @property
    def profile(self) -> dict[str, str]:
        return {k: self.patient[k] for k in PROFILE_FIELDS if self.patient.get(k)}

    def model_profile(self) -> dict[str, str]:
        """The profile fields whose values the model knows (others cannot inform it)."""
        known = self.bundle.vocabs["profile"]
        return {k: v for k, v in self.profile.items() if f"{k}={v}" in known}

    def history_for_model(self) -> list[tuple[list[str], list[str], list[str]]]:
        return [(list(v.diagnoses), list(v.procedures), list(v.medications)) for v in self.past]

    def codes(self, kind: str) -> list[str]:
        return self.diagnoses if KINDS[kind] == "diagnoses" else self.procedures

    def add_code(self, kind: str, code: str) -> bool:
        """Add a diagnosis or procedure code; False if it was already there."""
        with self._lock:
            codes = self.codes(kind)
            if not isinstance(code, str) or not code.strip():
                raise ValueError("a code must be a non-empty string")
            code = code.strip()
            if code in codes:
                return False
            codes.append(code)
            self.stale = self.recommendation is not None
            return True

    def remove_code(self, kind: str, code: str) -> bool:
        with self._lock:
            codes = self.codes(kind)
            if code not in codes:
                return False
            codes.remove(code)
            self.stale = self.recommendation is not None
            return True

    # -- the model

    def suggest(self) -> SuggestResult:
        """Run the model on the entered codes, the patient's past visits and profile."""
        with self._lock:
            dx, px = list(self.diagnoses), list(self.procedures)
        if not dx and not px:
            raise ValueError("enter at least one diagnosis or procedure first")
        rec = self.recommender.recommend(
            dx, px, self.history_for_model(), self.model_profile(), top_k=self.top_k
        )
        with self._lock:
            self.recommendation = rec
            self.stale = False
        return self.result()

    def result(self) -> SuggestResult:
        """The current suggestions, decisions and warnings (no model call)."""
        rec = self.recommendation
        if rec is None:
            return SuggestResult(
                [], self.warnings(), [], self.recommender.backend, self.bundle.threshold
            )
        return SuggestResult(
            self.suggestions(), self.warnings(), list(rec.unknown_codes), rec.backend, rec.threshold
        )

    def suggestions(self) -> list[Suggestion]:
        rec = self.recommendation
        if rec is None:
            return []
        return [
            Suggestion(
                d["code"],
                d["name"],
                d["probability"],
                d["suggested"],
                self.decisions.get(d["code"]),
            )
            for d in rec.drugs
        ]

    def given(self) -> list[str]:
        """Drug codes accepted or added, in decision order."""
        return [c for c, d in self.decisions.items() if d in ("accepted", "added")]

    def warnings(self) -> list[DdiWarning]:
        """DDI pairs among the suggested drugs (rejected ones left out) and between any
        suggested or given drug and a given (accepted or added) one."""
        b = self.bundle
        given = self.given()
        rejected = {c for c, d in self.decisions.items() if d == "rejected"}
        rec = self.recommendation
        suggested = [] if rec is None else [d["code"] for d in rec.suggested]
        pairs: list[tuple[str, str, str, str]] = []
        if rec is not None:
            pairs += [p for p in rec.ddi if p[0] not in rejected and p[1] not in rejected]
        candidates = [c for c in dict.fromkeys(suggested + given) if c not in rejected]
        pairs += self.recommender.ddi_with(candidates, given)
        out: dict[frozenset[str], DdiWarning] = {}
        for a, c, name_a, name_c in pairs:
            key = frozenset((a, c))
            if len(key) < 2 or key in out:
                continue
            out[key] = DdiWarning(
                a,
                c,
                name_a or b.label_name(a),
                name_c or b.label_name(c),
                bool({a, c} & set(given)),
            )
        return sorted(out.values(), key=lambda w: (not w.with_accepted, w.a, w.b))

    def basis(self, drug_code: str) -> list[BasisItem]:
        """The "why" of a suggestion: for each entered code and each past visit, how much the
        drug's probability drops when that one input is left out (negative: it rises). All the
        leave-one-out inputs go to the model as ONE batch. Sorted by drop, largest first."""
        if drug_code not in self.bundle.label_index:
            raise ValueError(f"{drug_code!r} is not one of the model's drug classes")
        label = self.bundle.label_index[drug_code]
        with self._lock:
            dx, px = list(self.diagnoses), list(self.procedures)
        history = self.history_for_model()
        profile = self.model_profile()
        variants: list[tuple[str, str, str, list, list, list]] = []
        titles = self.bundle.titles
        for i, code in enumerate(dx):
            rest = dx[:i] + dx[i + 1 :]
            variants.append(("diagnosis", code, titles.get(code, code), rest, px, history))
        for i, code in enumerate(px):
            rest = px[:i] + px[i + 1 :]
            variants.append(("procedure", code, titles.get(code, code), dx, rest, history))
        for i, visit in enumerate(self.past):
            rest = history[:i] + history[i + 1 :]
            shown = ", ".join(titles.get(c, c) for c in visit.diagnoses[:3]) or "no diagnoses"
            label_text = f"visit of {_local_time(visit.created)}: {shown}"
            variants.append(("past visit", visit.visit_id, label_text, dx, px, rest))
        if not variants:
            return []
        encoded = [encode_visit(self.bundle, dx, px, history, profile)[0]]
        encoded += [encode_visit(self.bundle, d, p, h, profile)[0] for *_, d, p, h in variants]
        batch = {k: np.concatenate([e[k] for e in encoded], axis=0) for k in encoded[0]}
        probs = self.recommender.scores(batch)[:, label].astype(np.float64)
        base = float(probs[0])
        items = [
            BasisItem(kind, code, text, base - float(p), float(p))
            for (kind, code, text, *_), p in zip(variants, probs[1:], strict=True)
        ]
        items.sort(key=lambda item: -item.drop)
        return items

    # -- decisions

    def _decide(self, code: str, decision: str) -> None:
        if code not in self.bundle.label_index:
            raise ValueError(f"{code!r} is not one of the model's drug classes")
        with self._lock:
            self.decisions.pop(code, None)  # re-deciding moves it to the end
            self.decisions[code] = decision

    def accept(self, code: str) -> None:
        self._decide(code, "accepted")

    def reject(self, code: str) -> None:
        self._decide(code, "rejected")

    def add(self, code: str) -> None:
        """A drug the clinician adds; one already among the suggestions counts as accepted."""
        shown = {d.code for d in self.suggestions()}
        self._decide(code, "accepted" if code in shown else "added")

    def undo(self, code: str) -> None:
        with self._lock:
            self.decisions.pop(code, None)

    # -- saving

    def save(self) -> str:
        """Write the visit, the suggestions as shown, the decisions and the note, with the
        bundle's name and version, in one transaction. Returns the visit id."""
        with self._lock:
            dx, px = list(self.diagnoses), list(self.procedures)
            decisions = dict(self.decisions)
            rec = self.recommendation
            note = self.note.strip() or None
        if not dx:
            raise ValueError("enter at least one diagnosis before saving")
        manifest = self.bundle.manifest
        return self.history.save_visit(
            self.patient_id,
            dx,
            px,
            suggestions=[] if rec is None else rec.drugs,
            decisions=decisions,
            note=note,
            bundle_name=self.bundle.name,
            bundle_version=str(manifest.get("version") or manifest.get("created") or ""),
        )


# ------------------------------------------------------------------ the app


class AppState:
    """Everything the views show; see the module docstring."""

    def __init__(
        self,
        bundle: Bundle,
        recommender: Recommender,
        history: History,
        kiosk: KioskSettings | None = None,
        pins: PinStore | None = None,
        clock: Callable[[], float] | None = None,
        news: NewsState | None = None,
    ):
        self.bundle = bundle
        self.recommender = recommender
        self.history = history
        self.kiosk = kiosk or KioskSettings()
        self.pins = pins or PinStore.beside(history.path)
        self.clock = clock or time.monotonic
        # the News tab's feed; loads its bundle on first use, shared by every session
        self.news = news or NewsState(history)
        self.idle = IdleTimer(self.kiosk.idle_timeout, self.clock)
        self.dx_index = CodeIndex(self._vocab_titles("diagnoses"))
        self.px_index = CodeIndex(self._vocab_titles("procedures"))
        self.drug_index = CodeIndex(zip(bundle.label_codes, bundle.label_names, strict=True))
        self.patient: dict | None = None
        self.visit: VisitState | None = None
        self.locked = self.pins.has_pin()
        self._failures = 0
        self._locked_until = 0.0

    @classmethod
    def open(
        cls,
        bundle: str | os.PathLike[str] | Bundle | None = None,
        db: str | os.PathLike[str] | None = None,
        *,
        kiosk: bool = False,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        pin: str | None = None,
        backend: str = "auto",
        news_bundle: str | os.PathLike[str] | None = None,
    ) -> AppState:
        """Load the bundle (default: the shipped one), open the history (default:
        `default_db_path()`); `pin` (digits) sets the kiosk PIN, stored hashed; `news_bundle`:
        the News tab's bundle (default: the shipped news demo), loaded when the tab opens."""
        loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle or DEFAULT_BUNDLE)
        history = History(db if db is not None else default_db_path())
        pins = PinStore.beside(history.path)
        if pin:
            pins.set_pin(pin)
        return cls(
            loaded,
            Recommender(loaded, backend=backend),
            history,
            KioskSettings(enabled=kiosk, idle_timeout=idle_timeout),
            pins,
            news=NewsState(history, news_bundle),
        )

    def session(self) -> AppState:
        """A fresh state for one more UI session, sharing the bundle, model and database."""
        return AppState(
            self.bundle, self.recommender, self.history, self.kiosk, self.pins, news=self.news
        )

    def _vocab_titles(self, kind: str) -> list[tuple[str, str]]:
        titles = self.bundle.titles
        return [
            (code, titles.get(code, code))
            for code in self.bundle.vocabs[kind]
            if code not in ("<pad>", "<unk>")
        ]

    # -- type-ahead

    def search_codes(self, query: str, kind: str, limit: int = 20) -> list[CodeOption]:
        """Diagnoses or procedures (`kind`: "diagnoses"/"dx" or "procedures"/"px") the model
        knows, by code prefix or by words of their titles; see `CodeIndex`."""
        index = self.dx_index if KINDS[kind] == "diagnoses" else self.px_index
        return index.search(query, limit)

    def search_drugs(self, query: str, limit: int = 20) -> list[CodeOption]:
        """The model's drug classes by ATC code prefix or words of their names."""
        return self.drug_index.search(query, limit)

    def title(self, code: str) -> str:
        return self.bundle.titles.get(code) or self.bundle.label_name(code)

    # -- patients

    def profile_options(self) -> dict[str, list[str]]:
        """Profile field -> the values the model knows ("gender" -> ["F", "M"])."""
        out: dict[str, list[str]] = {name: [] for name in PROFILE_FIELDS}
        for token in self.bundle.vocabs["profile"]:
            name, sep, value = token.partition("=")
            if sep and name in out and value:
                out[name].append(value)
        return {k: sorted(v) for k, v in out.items()}

    def search_patients(self, text: str = "", limit: int = 50) -> list[dict]:
        return self.history.search_patients(text, limit=limit)

    def create_patient(self, form: PatientForm) -> dict:
        """Add the patient and open a visit for them; returns the patient row."""
        errors = form.errors()
        if errors:
            raise ValueError("; ".join(errors))
        patient_id = self.history.add_patient(form.display_name.strip(), form.profile())
        return self.open_patient(patient_id)

    def open_patient(self, patient_id: str) -> dict:
        """Make `patient_id` the current patient with a new, empty visit."""
        patient = self.history.get_patient(patient_id)
        self.patient = patient
        self.visit = VisitState(
            self.bundle, self.recommender, self.history, patient, self._past_visits(patient_id)
        )
        return patient

    def new_visit(self) -> VisitState:
        """A fresh visit for the current patient (after a save), with the saved one in its past."""
        if self.patient is None:
            raise ValueError("no patient is open")
        self.open_patient(self.patient["id"])
        assert self.visit is not None
        return self.visit

    def close_patient(self) -> None:
        """Forget the current patient and visit (nothing unsaved is kept)."""
        self.patient = None
        self.visit = None

    def _past_visits(self, patient_id: str) -> list[PastVisit]:
        out = []
        for v in reversed(self.history.timeline(patient_id)):  # oldest first
            given = [c for c, d in v["decisions"].items() if d in ("accepted", "added")]
            out.append(
                PastVisit(
                    v["id"],
                    v["created"],
                    tuple(v["diagnoses"]),
                    tuple(v["procedures"]),
                    tuple(given),
                )
            )
        return out

    def timeline(self, patient_id: str | None = None) -> list[TimelineEntry]:
        """The patient's saved visits, newest first, with titles and drug names."""
        patient_id = patient_id or (self.patient or {}).get("id")
        if not patient_id:
            return []
        out = []
        for v in self.history.timeline(patient_id):
            by = {d: [c for c, x in v["decisions"].items() if x == d] for d in DECISION_NAMES}
            out.append(
                TimelineEntry(
                    visit_id=v["id"],
                    created=_local_time(v["created"]),
                    diagnoses=[CodeOption(c, self.title(c)) for c in v["diagnoses"]],
                    procedures=[CodeOption(c, self.title(c)) for c in v["procedures"]],
                    accepted=[CodeOption(c, self.bundle.label_name(c)) for c in by["accepted"]],
                    added=[CodeOption(c, self.bundle.label_name(c)) for c in by["added"]],
                    rejected=[CodeOption(c, self.bundle.label_name(c)) for c in by["rejected"]],
                    note=v.get("note") or "",
                    bundle_name=v.get("bundle_name") or "",
                )
            )
        return out

    # -- the model card

    def model_card(self) -> str:
        """The bundle's card.md (markdown), or a short summary when it has none."""
        path = self.bundle.path / "card.md"
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return path.read_text(encoding="utf-8")
        m = self.bundle.manifest
        return f"# {self.bundle.name}\n\nCreated {m.get('created', '?')}; no model card shipped.\n"

    def model_facts(self) -> list[tuple[str, str]]:
        m = self.bundle.manifest
        quant = (m.get("model") or {}).get("quantization") or {}
        return [
            ("bundle", self.bundle.name),
            ("created", str(m.get("created", "?"))),
            ("backend", self.recommender.backend),
            ("threshold", f"{self.bundle.threshold:.2f}"),
            ("drug classes", str(len(self.bundle.label_codes))),
            ("quantization", str(quant.get("name", "?"))),
        ]

    def metrics_table(self) -> tuple[list[str], list[list[str]]]:
        """(columns, rows) from the manifest's metrics: one row per model, "mean ± std"."""
        metrics = self.bundle.manifest.get("metrics") or {}
        if not isinstance(metrics, dict) or not metrics:
            return [], []
        if not all(isinstance(v, dict) for v in metrics.values()):
            metrics = {"model": metrics}
        names: list[str] = []
        for values in metrics.values():
            for key in values:
                if not key.endswith("_std") and key not in names:
                    names.append(key)
        rows = []
        for model, values in metrics.items():
            row = [str(model)]
            for key in names:
                value, std = values.get(key), values.get(f"{key}_std")
                if isinstance(value, int | float) and not isinstance(value, bool):
                    cell = f"{value:.4f}" + (
                        f" ± {std:.4f}" if isinstance(std, int | float) else ""
                    )
                else:
                    cell = "" if value is None else str(value)
                row.append(cell)
            rows.append(row)
        return ["model", *names], rows

    # -- export

    def default_export_folder(self, scope: str) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.history.path.parent / "exports" / f"{scope}-{stamp}"

    def export_patient(self, folder: str | os.PathLike[str] | None = None) -> list[Path]:
        """The current patient's rows as CSV files and pocketrec.json in `folder`."""
        if self.patient is None:
            raise ValueError("open a patient first")
        target = Path(folder) if folder else self.default_export_folder("patient")
        return self.history.export_patient(self.patient["id"], target)

    def export_all(self, folder: str | os.PathLike[str] | None = None) -> list[Path]:
        target = Path(folder) if folder else self.default_export_folder("all")
        return self.history.export_all(target)

    # -- kiosk

    def touch(self) -> None:
        self.idle.touch()

    def idle_expired(self) -> bool:
        return self.kiosk.enabled and self.idle.expired()

    def on_idle(self) -> None:
        """Back to the start: the patient's data is dropped and, with a PIN, the kiosk locks."""
        self.close_patient()
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
