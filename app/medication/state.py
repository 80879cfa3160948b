"""The clinic's state and logic for one UI session, in plain Python (no flet): the bundle, the
recommender and the history database (shared by every session), plus what this session is
looking at (the open patient and their visit). The views only display it and forward the
clinician's actions to it.

- `MedicationState`: type-ahead, patients, the timeline, the model card, exports;
- `PatientForm`: the new-patient form (name and the profile fields the model reads);
- `TimelineEntry`: one saved visit as the timeline shows it.
The visit being entered is an `app.medication.visit.VisitState`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.medication.bundle import Bundle
from app.medication.codes import CodeIndex, CodeOption
from app.medication.recommender import Recommender
from app.medication.visit import KINDS, PastVisit, VisitState, local_time
from app.storage.database import History
from app.storage.migrations import PROFILE_FIELDS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"
DECISION_NAMES = ("accepted", "added", "rejected")

__all__ = ["DEFAULT_BUNDLE", "MedicationState", "PatientForm", "TimelineEntry"]


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


class MedicationState:
    """The clinic for one UI session; see the module docstring."""

    def __init__(self, bundle: Bundle, recommender: Recommender, history: History):
        self.bundle = bundle
        self.recommender = recommender
        self.history = history
        self.dx_index = CodeIndex(self._vocab_titles("diagnoses"))
        self.px_index = CodeIndex(self._vocab_titles("procedures"))
        self.drug_index = CodeIndex(zip(bundle.label_codes, bundle.label_names, strict=True))
        self.patient: dict | None = None
        self.visit: VisitState | None = None

    def session(self) -> MedicationState:
        """A fresh state for one more UI session, sharing the bundle, model and database."""
        return MedicationState(self.bundle, self.recommender, self.history)

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
