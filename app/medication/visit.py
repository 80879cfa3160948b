"""One visit being entered, in plain Python (no flet): the diagnoses and procedures, the
model's suggestions with DDI warnings, the "why" of a suggestion (`basis`), the clinician's
decisions, the note; `save` writes it all in one transaction."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from app.medication.bundle import Bundle
from app.medication.encoding import encode_visit
from app.medication.recommender import Recommendation, Recommender
from app.storage.database import History
from app.storage.migrations import PROFILE_FIELDS

DEFAULT_TOP_K = 10
KINDS = {
    "diagnoses": "diagnoses",
    "dx": "diagnoses",
    "procedures": "procedures",
    "px": "procedures",
}

__all__ = [
    "BasisItem",
    "DdiWarning",
    "PastVisit",
    "SuggestResult",
    "Suggestion",
    "VisitState",
    "local_time",
]


def local_time(iso: str) -> str:
    """A stored UTC timestamp as local "YYYY-MM-DD HH:MM" (unparseable: as it is)."""
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(iso)


@dataclass(frozen=True)
class PastVisit:
    """A saved visit as the model reads it: its codes and the drugs given (accepted or added)."""

    visit_id: str
    created: str
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    medications: tuple[str, ...]


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
            label_text = f"visit of {local_time(visit.created)}: {shown}"
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
