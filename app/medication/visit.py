"""One visit being entered, in plain Python (no flet): the diagnoses and procedures, the
model's suggestions with DDI warnings, the "why" of a suggestion (`explain`), the clinician's
decisions, the note; `save` writes it all in one transaction.

The suggestions always belong to the inputs: every change of the codes re-scores the visit
(the model takes well under a millisecond), keeping the decisions already taken. The model's
full ranking is kept; `top_k` rows are shown first, and when more classes than that are at or
above the threshold the result says so ("10 of 18") until `show_all` is set."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from app.medication.bundle import Bundle
from app.medication.encoding import encode_visit
from app.medication.recommender import Recommendation, Recommender
from app.storage.database import History
from app.storage.migrations import PROFILE_FIELDS

DEFAULT_TOP_K = 10
DDI_SOURCE = (
    "class-level pairs of ATC3 drug classes from the GAMENet/TWOSIDES table (incomplete, "
    "not a clinical interaction checker)"
)
DDI_LEVELS = {  # level -> heading of its group, most important first
    "accepted": "Between drugs already accepted or added",
    "with_accepted": "A suggestion with an accepted or added drug",
    "suggested": "Among the suggestions not yet decided",
}
NOTICE = (
    "Decision support, not a prescription: a ranked list of drug classes to check. It does not "
    "know doses, allergies, renal function or current medications outside the entered history; "
    "the clinician decides."
)
KINDS = {
    "diagnoses": "diagnoses",
    "dx": "diagnoses",
    "procedures": "procedures",
    "px": "procedures",
}

__all__ = [
    "DDI_LEVELS",
    "DDI_SOURCE",
    "NOTICE",
    "BasisItem",
    "DdiWarning",
    "Explanation",
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
    """An interacting pair of drug classes. `level`: "accepted" (both accepted or added),
    "with_accepted" (one of them), "suggested" (neither decided yet); see `DDI_LEVELS`."""

    a: str
    b: str
    name_a: str
    name_b: str
    level: str

    @property
    def with_accepted(self) -> bool:
        return self.level != "suggested"

    @property
    def message(self) -> str:
        return f"Interaction: {self.a} {self.name_a} and {self.b} {self.name_b}"


@dataclass
class SuggestResult:
    """What the screen shows: `suggestions` (the shown rows, best first), the DDI `warnings`,
    and honest counts: `n_suggested` classes at or above the threshold in the whole ranking,
    `hidden` of them not among the shown rows (0 once `show_all`)."""

    suggestions: list[Suggestion]
    warnings: list[DdiWarning]
    unknown_codes: list[str]
    backend: str
    threshold: float
    n_suggested: int = 0
    hidden: int = 0
    # unknown codes the model still reads through their ICD category
    via_category: list[str] = field(default_factory=list)
    # False when the model reads nothing of the entered codes: no suggestions are shown
    visit_read: bool = True

    @property
    def n_shown_suggested(self) -> int:
        return sum(1 for s in self.suggestions if s.suggested)

    def summary(self) -> str:
        """ "10 of 18 drug classes at or above the threshold 0.35 shown (onnxruntime)." """
        n, t = self.n_suggested, self.threshold
        classes = f"drug class{'es' if n != 1 else ''}"
        if self.hidden:
            shown = self.n_suggested - self.hidden
            return (
                f"{shown} of {n} {classes} at or above the threshold {t:.2f} shown "
                f"({self.backend})."
            )
        return f"{n} {classes} at or above the threshold {t:.2f} ({self.backend})."

    def warnings_by_level(self) -> list[tuple[str, list[DdiWarning]]]:
        """(level, its warnings) for each level that has some, most important first."""
        groups = [(lv, [w for w in self.warnings if w.level == lv]) for lv in DDI_LEVELS]
        return [(lv, ws) for lv, ws in groups if ws]


def unknown_text(unknown: Sequence[str], via_category: Sequence[str] = ()) -> str:
    """One line on the entered codes the model does not know: how many, which are left out of
    its input, and which it still reads through their ICD category."""
    via = set(via_category)
    left_out = [c for c in unknown if c not in via]
    parts = []
    if left_out:
        parts.append(f"left out of the scores: {', '.join(left_out)}")
    if via:
        parts.append(
            f"read only through their ICD category: {', '.join(c for c in unknown if c in via)}"
        )
    n = len(unknown)
    return f"{n} code{'s' if n != 1 else ''} the model does not know; " + "; ".join(parts)


@dataclass(frozen=True)
class BasisItem:
    """How much the score of a drug falls when one input is left out."""

    kind: str  # "diagnosis" | "procedure" | "past visit"
    code: str  # the code, or the past visit's id
    label: str
    drop: float  # probability with everything - probability without this input
    without: float  # probability without this input

    def effect(self) -> str:
        """The contribution in words, never a bare "+": "raises the score by 16 points
        (without it: 30%)"."""
        points = abs(self.drop) * 100
        if points < 0.05:
            return f"no effect on the score (without it: {self.without:.0%})"
        verb = "raises" if self.drop > 0 else "lowers"
        return f"{verb} the score by {points:.1f} points (without it: {self.without:.0%})"


@dataclass(frozen=True)
class Explanation:
    """The "why" of one drug's score: the score now, the base rate (the score with no
    diagnoses, procedures, past visits or profile) and each input's leave-one-out effect."""

    code: str
    probability: float
    base_rate: float
    items: list[BasisItem]

    def headline(self) -> str:
        return (
            f"Score {self.probability:.0%} for this visit; base rate {self.base_rate:.0%} "
            "(the score with no diagnoses, procedures, past visits or profile)."
        )


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
        self.show_all = False  # show every class at or above the threshold, not only top_k
        self.diagnoses: list[str] = []
        self.procedures: list[str] = []
        self.recommendation: Recommendation | None = None  # the full ranking of the inputs
        self.decisions: dict[str, str] = {}
        self.note = ""
        self._scored: tuple | None = None  # the inputs the recommendation belongs to
        self._lock = threading.RLock()

    # -- inputs

    @property
    def patient_id(self) -> str:
        return self.patient["id"]

    @property
    def profile(self) -> dict[str, str]:
        return {k: self.patient[k] for k in PROFILE_FIELDS if self.patient.get(k)}

    @property
    def stale(self) -> bool:
        """Whether the suggestions on hand belong to other inputs: only when the inputs were
        set from outside (`add_code`, `remove_code`, `set_past`, `restore` re-score)."""
        rec = self.recommendation
        codes = bool(self.diagnoses or self.procedures)
        return (rec is not None or codes) and self._scored != self._inputs_key()

    def _inputs_key(self) -> tuple:
        return (tuple(self.diagnoses), tuple(self.procedures), len(self.past))

    def model_profile(self) -> dict[str, str]:
        """The profile fields whose values the model knows (others cannot inform it)."""
        known = self.bundle.vocabs["profile"]
        return {k: v for k, v in self.profile.items() if f"{k}={v}" in known}

    def history_for_model(self) -> list[tuple[list[str], list[str], list[str]]]:
        return [(list(v.diagnoses), list(v.procedures), list(v.medications)) for v in self.past]

    def codes(self, kind: str) -> list[str]:
        return self.diagnoses if KINDS[kind] == "diagnoses" else self.procedures

    def add_code(self, kind: str, code: str) -> bool:
        """Add a diagnosis or procedure code and re-score; False if it was already there."""
        with self._lock:
            codes = self.codes(kind)
            if not isinstance(code, str) or not code.strip():
                raise ValueError("a code must be a non-empty string")
            code = code.strip()
            if code in codes:
                return False
            codes.append(code)
            self.rescore()
            return True

    def remove_code(self, kind: str, code: str) -> bool:
        """Remove a code and re-score; False if it was not there."""
        with self._lock:
            codes = self.codes(kind)
            if code not in codes:
                return False
            codes.remove(code)
            self.rescore()
            return True

    def set_past(self, past: Sequence[PastVisit]) -> SuggestResult:
        """New earlier visits (e.g. one saved in another tab), then re-score."""
        with self._lock:
            self.past = list(past)
            return self.rescore()

    # -- the model

    def rescore(self) -> SuggestResult:
        """Score the current inputs (with no codes: no suggestions); decisions are kept."""
        with self._lock:
            if not self.diagnoses and not self.procedures:
                self.recommendation = None
                self._scored = self._inputs_key()
                return self.result()
            return self.suggest()

    def suggest(self) -> SuggestResult:
        """Run the model on the entered codes, the patient's past visits and profile."""
        with self._lock:
            dx, px = list(self.diagnoses), list(self.procedures)
            key = self._inputs_key()
            if not dx and not px:
                raise ValueError("enter at least one diagnosis or procedure first")
            rec = self.recommender.recommend(
                dx, px, self.history_for_model(), self.model_profile(), top_k=None
            )
            self.recommendation = rec
            self._scored = key
            return self.result()

    def set_show_all(self, show: bool = True) -> SuggestResult:
        with self._lock:
            self.show_all = bool(show)
            return self.result()

    def result(self) -> SuggestResult:
        """The current suggestions, decisions and warnings (no model call)."""
        rec = self.recommendation
        shown = self.suggestions()
        if rec is None:
            return SuggestResult(
                shown, self.warnings(), [], self.recommender.backend, self.bundle.threshold
            )
        n_suggested = len(self._model_drugs(rec.suggested))
        hidden = n_suggested - sum(1 for s in shown if s.suggested)
        return SuggestResult(
            shown,
            self.warnings(),
            list(rec.unknown_codes),
            rec.backend,
            rec.threshold,
            n_suggested,
            hidden,
            via_category=list(rec.via_category),
            visit_read=rec.visit_read,
        )

    def _model_drugs(self, drugs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # a visit the model reads nothing of gets no suggestions: its scores would be those of
        # an empty visit, confident-looking output from no input
        rec = self.recommendation
        return drugs if rec is not None and rec.visit_read else []

    def _shown_drugs(self) -> list[dict[str, Any]]:
        rec = self.recommendation
        if rec is None or not rec.visit_read:
            return []
        n = max(self.top_k, len(rec.suggested)) if self.show_all else self.top_k
        return rec.drugs[:n]

    def suggestions(self) -> list[Suggestion]:
        """The shown rows: the `top_k` best (every class at or above the threshold once
        `show_all`), each with its decision."""
        return [
            Suggestion(
                d["code"],
                d["name"],
                d["probability"],
                d["suggested"],
                self.decisions.get(d["code"]),
            )
            for d in self._shown_drugs()
        ]

    def model_suggested(self) -> set[str]:
        """Every drug class the model put at or above the threshold, shown or not."""
        rec = self.recommendation
        return set() if rec is None else {d["code"] for d in self._model_drugs(rec.suggested)}

    def given(self) -> list[str]:
        """Drug codes accepted or added, in decision order."""
        return [c for c, d in self.decisions.items() if d in ("accepted", "added")]

    def warnings(self) -> list[DdiWarning]:
        """DDI pairs among the shown suggested drugs and the given (accepted or added) ones,
        rejected ones left out; pairs among given drugs first, then a given drug with a
        suggestion, then suggestions among themselves."""
        b = self.bundle
        given = self.given()
        given_set = set(given)
        rejected = {c for c, d in self.decisions.items() if d == "rejected"}
        shown = [d["code"] for d in self._shown_drugs() if d["suggested"]]
        codes = [c for c in dict.fromkeys(given + shown) if c not in rejected]
        out = []
        for i, x in enumerate(codes):
            for y in codes[i + 1 :]:
                if not b.interacts(x, y):
                    continue
                n_given = (x in given_set) + (y in given_set)
                level = ("suggested", "with_accepted", "accepted")[n_given]
                out.append(DdiWarning(x, y, b.label_name(x), b.label_name(y), level))
        order = list(DDI_LEVELS)
        return sorted(out, key=lambda w: (order.index(w.level), w.a, w.b))

    def _past_label(self, visit: PastVisit) -> str:
        titles = self.bundle.titles
        shown = ", ".join(titles.get(c, c) for c in visit.diagnoses[:3]) or "no diagnoses"
        more = len(visit.diagnoses) - 3
        if more > 0:
            shown += f" and {more} more"
        gave = ", ".join(self.bundle.label_name(c) for c in visit.medications[:4])
        if len(visit.medications) > 4:
            gave += f" and {len(visit.medications) - 4} more"
        return f"visit of {local_time(visit.created)}: {shown}; gave {gave or 'no drugs'}"

    def explain(self, drug_code: str) -> Explanation:
        """The "why" of a suggestion: the score, the base rate (no inputs at all) and, for each
        entered code and each past visit, how much the drug's probability drops when that one
        input is left out (negative: it rises). The full input, the empty input and every
        leave-one-out input go to the model as ONE batch. Items sorted by drop, largest first."""
        if drug_code not in self.bundle.label_index:
            raise ValueError(f"{drug_code!r} is not one of the model's drug classes")
        label = self.bundle.label_index[drug_code]
        with self._lock:
            dx, px = list(self.diagnoses), list(self.procedures)
        history = self.history_for_model()
        profile = self.model_profile()
        variants: list[tuple[str, str, str, list, list, list]] = []
        titles = self.bundle.titles
        vocabs = self.bundle.vocabs
        # a code the model reads neither itself nor through its category changes nothing: it
        # is listed as unknown, not as a basis
        read = set(self.recommender.via_category(dx + px))
        read |= {c for c in dx if c in vocabs["diagnoses"]}
        read |= {c for c in px if c in vocabs["procedures"]}
        for i, code in enumerate(dx):
            rest = dx[:i] + dx[i + 1 :]
            if code in read:
                variants.append(("diagnosis", code, titles.get(code, code), rest, px, history))
        for i, code in enumerate(px):
            rest = px[:i] + px[i + 1 :]
            if code in read:
                variants.append(("procedure", code, titles.get(code, code), dx, rest, history))
        for i, visit in enumerate(self.past):
            rest = history[:i] + history[i + 1 :]
            variants.append(("past visit", visit.visit_id, self._past_label(visit), dx, px, rest))
        encoded = [
            encode_visit(self.bundle, dx, px, history, profile)[0],
            encode_visit(self.bundle, [], [], [], {})[0],
        ]
        encoded += [encode_visit(self.bundle, d, p, h, profile)[0] for *_, d, p, h in variants]
        batch = {k: np.concatenate([e[k] for e in encoded], axis=0) for k in encoded[0]}
        probs = self.recommender.scores(batch)[:, label].astype(np.float64)
        now, base_rate = float(probs[0]), float(probs[1])
        items = [
            BasisItem(kind, code, text, now - float(p), float(p))
            for (kind, code, text, *_), p in zip(variants, probs[2:], strict=True)
        ]
        items.sort(key=lambda item: -item.drop)
        return Explanation(drug_code, now, base_rate, items)

    def basis(self, drug_code: str) -> list[BasisItem]:
        """The leave-one-out items of `explain` alone."""
        return self.explain(drug_code).items

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

    def add(self, code: str) -> str:
        """A drug the clinician picks by search: "accepted" when the model suggested it (at or
        above the threshold, shown or hidden by the cap) or it is among the shown rows, else
        "added". Returns the decision taken."""
        shown = {d["code"] for d in self._shown_drugs()}
        decision = "accepted" if code in shown | self.model_suggested() else "added"
        self._decide(code, decision)
        return decision

    def undo(self, code: str) -> bool:
        """Back to undecided (a hand-added drug is removed); False if it had no decision."""
        with self._lock:
            return self.decisions.pop(code, None) is not None

    # -- drafts (app.medication.state keeps them in the history database)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "diagnoses": list(self.diagnoses),
                "procedures": list(self.procedures),
                "decisions": dict(self.decisions),
                "note": self.note,
            }

    def restore(self, snapshot: Mapping[str, Any]) -> SuggestResult:
        """The inputs, decisions and note of a `snapshot`, re-scored."""
        with self._lock:
            self.diagnoses = [str(c) for c in snapshot.get("diagnoses") or []]
            self.procedures = [str(c) for c in snapshot.get("procedures") or []]
            self.decisions = {
                str(c): str(d)
                for c, d in (snapshot.get("decisions") or {}).items()
                if d in ("accepted", "added", "rejected") and c in self.bundle.label_index
            }
            self.note = str(snapshot.get("note") or "")
            return self.rescore()

    # -- saving

    def save(self) -> str:
        """Write the visit, the suggestions as shown, the decisions and the note, with the
        bundle's name and version, in one transaction. Returns the visit id."""
        with self._lock:
            if self.stale:
                self.rescore()
            dx, px = list(self.diagnoses), list(self.procedures)
            decisions = dict(self.decisions)
            shown = self._shown_drugs()
            note = self.note.strip() or None
        if not dx:
            raise ValueError("enter at least one diagnosis before saving")
        manifest = self.bundle.manifest
        return self.history.save_visit(
            self.patient_id,
            dx,
            px,
            suggestions=shown,
            decisions=decisions,
            note=note,
            bundle_name=self.bundle.name,
            bundle_version=str(manifest.get("version") or manifest.get("created") or ""),
        )
