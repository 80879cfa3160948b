"""The clinic's state and logic for one UI session, in plain Python (no flet): the bundle, the
recommender and the history database (shared by every session), plus what this session is
looking at (the open patient and their visit). The views only display it and forward the
clinician's actions to it.

- `MedicationState`: type-ahead, patients, the timeline, the model card, exports;
- `PatientForm`: the new-patient form (name and the profile fields the model reads);
- `TimelineEntry`: one saved visit as the timeline shows it.
The visit being entered is an `app.medication.visit.VisitState`. While it changes it is kept as a
draft in the history (`sync_draft`, called by the shell about once a second and before the
patient is closed): opening the patient again restores it (`draft_restored` says when it was
written), `discard_draft` drops it, saving the visit deletes it. A visit of the open patient
saved elsewhere (another tab) is taken into the open visit's past (`check_other_saves`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.medication.bundle import Bundle
from app.medication.codes import (
    CodeIndex,
    CodeOption,
    dictionary_index,
    drug_substances,
    system_of,
)
from app.medication.recommender import Recommender
from app.medication.visit import KINDS, PastVisit, VisitState, local_time
from app.storage.database import History
from app.storage.migrations import PROFILE_FIELDS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"
DECISION_NAMES = ("accepted", "added", "rejected")
# the ICD version shown first for a bundle trained on each source (its manifest's data.source)
_INDEX_LOCK = threading.RLock()
PREFERRED_VERSION = {
    "mimic3": ("icd9cm", "icd9pcs"),
    "mimic4": ("icd10cm", "icd10pcs"),
    "synthea": ("icd10cm", "icd10pcs"),
}

__all__ = [
    "DEFAULT_BUNDLE",
    "MedicationState",
    "PatientForm",
    "TimelineEntry",
    "draft_restore",
    "draft_snapshot",
]


def draft_snapshot(visit: VisitState) -> dict:
    """What a draft keeps of a visit: its codes, decisions (in order) and note."""
    if hasattr(visit, "snapshot"):
        return dict(visit.snapshot())
    with visit._lock:
        return {
            "diagnoses": list(visit.diagnoses),
            "procedures": list(visit.procedures),
            "decisions": [[code, d] for code, d in visit.decisions.items()],
            "note": visit.note or "",
        }


def draft_is_empty(data: dict) -> bool:
    return not (
        data.get("diagnoses")
        or data.get("procedures")
        or data.get("decisions")
        or (data.get("note") or "").strip()
    )


def draft_restore(visit: VisitState, data: dict) -> None:
    """Put a draft's codes, decisions and note back into a fresh `visit` and, when it has
    codes, score it (so the decisions are shown beside their suggestions). Drug codes the
    bundle no longer knows are left out."""
    if hasattr(visit, "restore"):
        visit.restore(data)
        return
    for kind in ("diagnoses", "procedures"):
        for code in data.get(kind) or []:
            if isinstance(code, str) and code.strip():
                visit.add_code(kind, code)
    visit.note = str(data.get("note") or "")
    if visit.diagnoses or visit.procedures:
        with contextlib.suppress(ValueError):
            visit.suggest()
    for code, decision in data.get("decisions") or []:
        if decision in DECISION_NAMES and code in visit.bundle.label_index:
            visit._decide(code, decision)


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


def preferred_system(bundle, kind: str) -> str:
    """The ICD version shown first: the bundle's data source's (MIMIC-III: ICD-9, MIMIC-IV
    and Synthea: ICD-10), else the one most of its vocabulary uses."""
    source = str((bundle.manifest.get("data") or {}).get("source") or "")
    for prefix, (dx, px) in PREFERRED_VERSION.items():
        if source.startswith(prefix):
            return dx if kind == "diagnoses" else px
    systems = [system_of(c) for c in bundle.vocabs[kind] if ":" in c]
    return max(set(systems), key=systems.count) if systems else ""


def code_index_of(bundle, kind: str) -> CodeIndex:
    """The type-ahead over diagnoses or procedures the visit screen searches for `bundle`: the
    whole shipped ICD dictionary and the model's vocabulary, its ICD version first."""
    return dictionary_index(
        kind, bundle.vocabs[kind], bundle.titles, preferred=preferred_system(bundle, kind)
    )


class MedicationState:
    """The clinic for one UI session; see the module docstring."""

    def __init__(self, bundle: Bundle, recommender: Recommender, history: History):
        self.bundle = bundle
        self.recommender = recommender
        self.history = history
        self._indexes: dict[str, CodeIndex] = {}
        self.patient: dict | None = None
        self.visit: VisitState | None = None
        self.draft_restored: str | None = None  # the restored draft's `updated` (UTC ISO)
        self.other_saves: list[dict] = []  # visits saved elsewhere, taken into this visit
        self._draft_written: dict | None = None  # the snapshot last written (or restored)
        self._foreign_seen: set[str] = set()

    def session(self) -> MedicationState:
        """A fresh state for one more UI session, sharing the bundle, model, database and the
        code indexes."""
        other = MedicationState(self.bundle, self.recommender, self.history)
        other._indexes = self._indexes
        return other

    # -- type-ahead

    def preferred_system(self, kind: str) -> str:
        return preferred_system(self.bundle, kind)

    def code_index(self, kind: str) -> CodeIndex:
        """The type-ahead index of `kind`: "diagnoses", "procedures" (the whole shipped ICD
        dictionary and the model's vocabulary) or "drugs" (the model's drug classes; the
        substances of each in "substances"). Built once, on first use, for all sessions."""
        index = self._indexes.get(kind)
        if index is not None:
            return index
        with _INDEX_LOCK:  # one build, even when a search comes while `warm_indexes` runs
            return self._build_index(kind)

    def _build_index(self, kind: str) -> CodeIndex:
        index = self._indexes.get(kind)
        if index is None:
            if kind in ("drugs", "substances"):
                b = self.bundle
                self._indexes["drugs"] = CodeIndex(zip(b.label_codes, b.label_names, strict=True))
                self._indexes["substances"] = CodeIndex(
                    (f"{code}|{name}", name)
                    for code, names in drug_substances(b.label_codes).items()
                    for name in names
                )
            else:
                self._indexes[kind] = code_index_of(self.bundle, kind)
            index = self._indexes[kind]
        return index

    def warm_indexes(self) -> None:
        """Build every type-ahead index now (the first keystroke then waits for nothing)."""
        for kind in ("diagnoses", "procedures", "drugs"):
            self.code_index(kind)

    def search_codes(self, query: str, kind: str, limit: int = 20) -> list[CodeOption]:
        """Diagnoses or procedures (`kind`: "diagnoses"/"dx" or "procedures"/"px"): the whole
        shipped ICD dictionary, by code prefix, words of the titles, or an abbreviation or
        synonym; the model's codes first, then the bundle's ICD version; see `CodeIndex`."""
        return self.code_index(KINDS[kind]).search(query, limit)

    def search_drugs(self, query: str, limit: int = 20) -> list[CodeOption]:
        """The model's drug classes by ATC code prefix, words of their names, or the name of a
        substance in them: "furosemide" -> C03C, "high-ceiling diuretics (furosemide)"."""
        found = self.code_index("drugs").search(query, limit)
        have = {o.code for o in found}
        for option in self.code_index("substances").search(query, 4 * limit):
            code, _, substance = option.code.partition("|")
            if code not in have:
                have.add(code)
                found.append(CodeOption(code, f"{self.bundle.label_name(code)} ({substance})"))
        return found[:limit]

    def no_match_text(self, query: str, kind: str) -> str:
        """The line to show when a search finds nothing."""
        if kind in ("drug", "drugs"):
            where = "the model's drug classes or the substances in them (WHO ATC names)"
        else:
            where = "the ICD-9 and ICD-10 dictionaries (codes, titles, common abbreviations)"
        return f'No match for "{query.strip()}" in {where}.'

    def title(self, code: str) -> str:
        """A code's title: the bundle's, else the shipped dictionary's, else a drug name."""
        title = self.bundle.titles.get(code)
        if title:
            return title
        if code.startswith(("icd9cm:", "icd10cm:", "icd9pcs:", "icd10pcs:")):
            kind = "diagnoses" if code.split(":", 1)[0].endswith("cm") else "procedures"
            found = self.code_index(kind).title(code)
            if found != code:
                return found
        return self.bundle.label_name(code)

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

    def open_patient(self, patient_id: str, restore_draft: bool = True) -> dict:
        """Make `patient_id` the current patient with a new visit: their draft's content when
        they have one (and `restore_draft`), else empty."""
        patient = self.history.get_patient(patient_id)
        self.patient = patient
        self.visit = VisitState(
            self.bundle, self.recommender, self.history, patient, self._past_visits(patient_id)
        )
        self.draft_restored = None
        self.other_saves = []
        self._foreign_seen = set()
        self._draft_written = draft_snapshot(self.visit)
        draft = self.history.get_draft(patient_id) if restore_draft else None
        if draft is not None and isinstance(draft.get("data"), dict):
            draft_restore(self.visit, draft["data"])
            self._draft_written = draft["data"]
            self.draft_restored = draft["updated"]
        return patient

    def new_visit(self) -> VisitState:
        """A fresh visit for the current patient (after a save, which deleted the draft), with
        the saved one in its past."""
        if self.patient is None:
            raise ValueError("no patient is open")
        self.open_patient(self.patient["id"], restore_draft=False)
        assert self.visit is not None
        return self.visit

    def close_patient(self) -> None:
        """Forget the current patient and visit; what was entered stays as their draft (the
        kiosk's idle timeout and "Close patient" hide it, never delete it)."""
        with contextlib.suppress(Exception):  # a full disk must not keep the patient on screen
            self.sync_draft()
        self.patient = None
        self.visit = None
        self.draft_restored = None
        self.other_saves = []
        self._draft_written = None

    # -- drafts

    def sync_draft(self) -> bool:
        """Write the open visit as the patient's draft when it changed since the last write
        (an emptied visit deletes the draft). Returns whether anything was written."""
        visit = self.visit
        if visit is None or self.patient is None:
            return False
        data = draft_snapshot(visit)
        if data == self._draft_written:
            return False
        if draft_is_empty(data):
            self.history.delete_draft(visit.patient_id)
        else:
            self.history.save_draft(visit.patient_id, data)
        self._draft_written = data
        return True

    def discard_draft(self) -> VisitState:
        """Drop the open patient's draft (audited) and start their visit again, empty."""
        if self.patient is None:
            raise ValueError("no patient is open")
        self.history.delete_draft(self.patient["id"], discarded=True)
        self.open_patient(self.patient["id"], restore_draft=False)
        assert self.visit is not None
        return self.visit

    # -- another tab

    def check_other_saves(self) -> list[dict]:
        """Visits of the open patient saved elsewhere (another tab, another device on the same
        database) since this visit was opened: the open visit is rebuilt with them in its past,
        keeping what was entered, and re-scored when it had been scored. A visit must be seen
        on two checks in a row (this session's own save is followed at once by `new_visit`).
        Returns the visits taken in (also added to `other_saves`)."""
        visit = self.visit
        if visit is None or self.patient is None:
            return []
        known = {v.visit_id for v in visit.past}
        rows = self.history.timeline(visit.patient_id)
        foreign = {v["id"] for v in rows} - known
        confirmed = foreign & self._foreign_seen
        self._foreign_seen = foreign
        if not confirmed:
            return []
        data = draft_snapshot(visit)
        scored = visit.recommendation is not None
        fresh = VisitState(
            self.bundle,
            self.recommender,
            self.history,
            visit.patient,
            self._past_visits(visit.patient_id),
        )
        draft_restore(fresh, data)
        if scored and fresh.recommendation is None and (fresh.diagnoses or fresh.procedures):
            with contextlib.suppress(ValueError):
                fresh.suggest()
        self.visit = fresh
        self._foreign_seen = set()
        taken = [
            {"id": v["id"], "created": local_time(v["created"]), "diagnoses": v["diagnoses"]}
            for v in reversed(rows)
            if v["id"] in confirmed
        ]
        self.other_saves += taken
        return taken

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
                    created=local_time(v["created"]),
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
