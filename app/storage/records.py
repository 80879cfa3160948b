"""The clinic's records in the history: patients and their visits (the suggestions as shown and
the clinician's decisions). A mixin of `app.storage.database.History`, which provides the
connection, the transactions (`_write`, `_read`), `_rows` and the audit (`_insert_audit`).

A visit and its audit row are written in ONE transaction: when `save_visit` returns all of it is
durably on disk; if it raises, none is.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.storage.errors import HistoryError, guarded
from app.storage.migrations import (
    DECISIONS,
    DEFAULT_ACTOR,
    PROFILE_FIELDS,
    decode_json_columns,
    utc_now,
)

__all__ = ["Records", "casefold"]


def casefold(value: Any) -> str:
    """The patient search's folding (registered in SQLite as `pr_casefold`): case and accents
    ("José" -> "jose", "Łukasz" stays "łukasz": only combining marks are dropped)."""
    if value is None:
        return ""
    decomposed = unicodedata.normalize("NFKD", str(value).casefold())
    return unicodedata.normalize(
        "NFC", "".join(c for c in decomposed if not unicodedata.combining(c))
    )


def _codes(values: Iterable[Any], what: str) -> list[str]:
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} must be a list of codes, not a string")
    out = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what}: every code must be a non-empty string, got {value!r}")
        out.append(value)
    return out


def _profile_columns(profile: Mapping[str, Any] | None) -> dict[str, str | None]:
    profile = dict(profile or {})
    unknown = sorted(set(profile) - set(PROFILE_FIELDS))
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; expected {list(PROFILE_FIELDS)}")
    out: dict[str, str | None] = {}
    for key, value in profile.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"profile field {key!r} must be a string or None, got {value!r}")
        out[key] = value if value else None
    return out


def _check_decisions(decisions: Mapping[str, str]) -> None:
    for code, decision in decisions.items():
        if decision not in DECISIONS:
            raise ValueError(f"decision for {code!r} is {decision!r}; expected one of {DECISIONS}")


def _display_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("display_name must be a non-empty string")
    return name.strip()


class Records:
    """Patients and visits (see the module docstring)."""

    def _require_patient(self, patient_id: str) -> dict:
        rows = self._rows("SELECT * FROM patients WHERE id = ?", (patient_id,))
        if not rows:
            raise HistoryError(f"unknown patient {patient_id!r} in {self.path}", self.path)
        return rows[0]

    # -- patients

    @guarded
    def add_patient(
        self,
        display_name: str,
        profile: Mapping[str, str | None] | None = None,
        *,
        actor: str = DEFAULT_ACTOR,
    ) -> str:
        """Create a patient; `profile` holds any of PROFILE_FIELDS. Returns the new id."""
        row: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "display_name": _display_name(display_name),
            "created": utc_now(),
        }
        fields = _profile_columns(profile)
        row.update({name: fields.get(name) for name in PROFILE_FIELDS})
        with self._write():
            self.db.table("patients").insert(row)
            self._insert_audit(
                "add_patient", actor=actor, patient_id=row["id"], detail={"fields": sorted(fields)}
            )
        return row["id"]

    @guarded
    def update_patient(
        self,
        patient_id: str,
        display_name: str | None = None,
        profile: Mapping[str, str | None] | None = None,
        *,
        actor: str = DEFAULT_ACTOR,
    ) -> dict:
        """Change the name and/or profile fields given (a None/empty value clears a field).
        Returns the updated patient."""
        updates: dict[str, Any] = dict(_profile_columns(profile))
        if display_name is not None:
            updates["display_name"] = _display_name(display_name)
        with self._write():
            self._require_patient(patient_id)
            if updates:
                self.db.table("patients").update(patient_id, updates)
                self._insert_audit(
                    "update_patient",
                    actor=actor,
                    patient_id=patient_id,
                    detail={"fields": sorted(updates)},
                )
            return self._require_patient(patient_id)

    @guarded
    def get_patient(self, patient_id: str) -> dict:
        """The patient's row (id, display_name, created and the profile fields)."""
        return self._require_patient(patient_id)

    @guarded
    def profile(self, patient_id: str) -> dict[str, str]:
        """The patient's non-empty profile fields, as the recommender takes them."""
        row = self._require_patient(patient_id)
        return {name: row[name] for name in PROFILE_FIELDS if row[name]}

    @guarded
    def search_patients(self, text: str = "", *, limit: int = 100) -> list[dict]:
        """Patients whose name contains `text` or whose id starts with it (case- and
        accent-insensitive: "jose" finds "José"); names that start with `text` come first.
        Empty text lists everyone."""
        needle = casefold(text.strip())
        return self._rows(
            """
            SELECT * FROM patients
            WHERE ? = ''
               OR instr(pr_casefold(display_name), ?) > 0
               OR substr(id, 1, length(?)) = ?
            ORDER BY instr(pr_casefold(display_name), ?) <> 1, pr_casefold(display_name), id
            LIMIT ?
            """,
            (needle, needle, needle, needle, needle, int(limit)),
        )

    # -- drafts: the visit being entered, kept while it changes

    @guarded
    def save_draft(self, patient_id: str, data: Mapping[str, Any]) -> str:
        """Keep `data` (JSON-serialisable: the open visit's inputs, decisions and note) as the
        patient's draft, replacing the previous one, durably (one transaction). Returns the
        `updated` timestamp written. Not audited: it is written on every change."""
        text = json.dumps(dict(data), sort_keys=True, ensure_ascii=False)
        updated = utc_now()
        with self._write():
            self._require_patient(patient_id)
            self.db.execute(
                "INSERT INTO drafts (patient_id, updated, data) VALUES (?, ?, ?) "
                "ON CONFLICT (patient_id) DO UPDATE SET updated = excluded.updated, "
                "data = excluded.data",
                (patient_id, updated, text),
            )
        return updated

    @guarded
    def get_draft(self, patient_id: str) -> dict | None:
        """The patient's draft {patient_id, updated, data (decoded)}, or None."""
        rows = self._rows("SELECT * FROM drafts WHERE patient_id = ?", (patient_id,))
        return decode_json_columns("drafts", rows[0]) if rows else None

    @guarded
    def delete_draft(
        self, patient_id: str, *, discarded: bool = False, actor: str = DEFAULT_ACTOR
    ) -> bool:
        """Drop the patient's draft (after a save, or `discarded` by the clinician: audited).
        Returns whether there was one."""
        with self._write():
            gone = self.db.execute(
                "DELETE FROM drafts WHERE patient_id = ?", (patient_id,)
            ).rowcount
            if gone and discarded:
                self._insert_audit("discard_draft", actor=actor, patient_id=patient_id)
        return bool(gone)

    # -- visits

    @guarded
    def save_visit(
        self,
        patient_id: str,
        diagnoses: Iterable[str],
        procedures: Iterable[str],
        suggestions: Sequence[Mapping[str, Any]],
        decisions: Mapping[str, str],
        note: str | None = None,
        bundle_name: str | None = None,
        bundle_version: str | None = None,
        actor: str = DEFAULT_ACTOR,
    ) -> str:
        """Record one visit, the suggestions as shown (rank = position, from 1) and the
        clinician's decisions {code: 'accepted'|'rejected'|'added'}, with its audit row, in ONE
        transaction (which also drops the patient's draft): when this returns, all of it is
        durably on disk; if it raises, none is."""
        dx = _codes(diagnoses, "diagnoses")
        px = _codes(procedures, "procedures")
        decisions = dict(decisions)
        _codes(decisions, "decision codes")
        _check_decisions(decisions)
        visit_id = uuid.uuid4().hex
        suggestion_rows = []
        for rank, item in enumerate(suggestions, start=1):
            try:
                code, probability = item["code"], float(item["probability"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"suggestion #{rank} needs 'code' and a numeric 'probability': {item!r}"
                ) from exc
            suggestion_rows.append(
                {
                    "visit_id": visit_id,
                    "rank": rank,
                    "drug_code": _codes([code], "suggestion code")[0],
                    "probability": probability,
                    "suggested": 1 if item.get("suggested") else 0,
                }
            )
        decision_rows = [
            {"visit_id": visit_id, "drug_code": code, "decision": decision}
            for code, decision in decisions.items()
        ]
        counts = {d: sum(1 for v in decisions.values() if v == d) for d in DECISIONS}
        with self._write():
            self._require_patient(patient_id)
            self.db.table("visits").insert(
                {
                    "id": visit_id,
                    "patient_id": patient_id,
                    "created": utc_now(),
                    "diagnoses": json.dumps(dx),
                    "procedures": json.dumps(px),
                    "note": note,
                    "bundle_name": bundle_name,
                    "bundle_version": bundle_version,
                    "status": "saved",
                }
            )
            if suggestion_rows:
                self.db.table("suggestions").insert_all(suggestion_rows)
            if decision_rows:
                self.db.table("decisions").insert_all(decision_rows)
            # the visit is saved: its draft goes in the same transaction
            self.db.execute("DELETE FROM drafts WHERE patient_id = ?", (patient_id,))
            self._insert_audit(
                "save_visit",
                actor=actor,
                patient_id=patient_id,
                visit_id=visit_id,
                detail={
                    "suggestions": len(suggestion_rows),
                    "decisions": counts,
                    "bundle_name": bundle_name,
                    "bundle_version": bundle_version,
                },
            )
        return visit_id

    @guarded
    def timeline(self, patient_id: str) -> list[dict]:
        """The patient's visits, newest first; each with `diagnoses` and `procedures` (lists),
        `suggestions` ([{rank, code, probability, suggested}] by rank) and `decisions`
        ({code: decision})."""
        with self._read():
            self._require_patient(patient_id)
            visits = self._rows(
                "SELECT * FROM visits WHERE patient_id = ? ORDER BY created DESC, rowid DESC",
                (patient_id,),
            )
            suggestions = self._rows(
                """
                SELECT s.visit_id, s.rank, s.drug_code, s.probability, s.suggested
                FROM suggestions s JOIN visits v ON v.id = s.visit_id
                WHERE v.patient_id = ? ORDER BY s.visit_id, s.rank
                """,
                (patient_id,),
            )
            decisions = self._rows(
                """
                SELECT d.visit_id, d.drug_code, d.decision
                FROM decisions d JOIN visits v ON v.id = d.visit_id
                WHERE v.patient_id = ? ORDER BY d.rowid
                """,
                (patient_id,),
            )
        by_visit: dict[str, dict] = {}
        for visit in visits:
            decode_json_columns("visits", visit)
            visit["suggestions"] = []
            visit["decisions"] = {}
            by_visit[visit["id"]] = visit
        for s in suggestions:
            by_visit[s["visit_id"]]["suggestions"].append(
                {
                    "rank": s["rank"],
                    "code": s["drug_code"],
                    "probability": s["probability"],
                    "suggested": bool(s["suggested"]),
                }
            )
        for d in decisions:
            by_visit[d["visit_id"]]["decisions"][d["drug_code"]] = d["decision"]
        return visits

    @guarded
    def history_for_model(self, patient_id: str) -> list[tuple[list[str], list[str], list[str]]]:
        """(diagnoses, procedures, medications) per visit, oldest first, where medications are
        the codes the clinician accepted or added: the recommender's `history` argument."""
        out = []
        for visit in reversed(self.timeline(patient_id)):
            given = [code for code, d in visit["decisions"].items() if d in ("accepted", "added")]
            out.append((visit["diagnoses"], visit["procedures"], given))
        return out
