"""Typed records every reader produces.

A medication `Visit` holds code IDs only; readable titles live in the code/title tables
(`distill.data.codes`). Codes carry their system as a prefix ("icd9cm:4019", "icd10cm:I10",
"icd9pcs:3605", "icd10pcs:0BH17EZ", "snomed:44054006"), so ICD-9 and ICD-10 never share an ID.
Medication codes are ATC level 3 (4 characters, e.g. "A02B") with no prefix: ATC is the only drug
system the model predicts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

ATC3_LEN = 4


@dataclass(frozen=True, slots=True)
class Visit:
    """One admission (MIMIC) or encounter (Synthea) of one patient.

    `order` is the 0-based position of the visit in the patient's time-sorted history.
    `profile` is a tuple of (field, value) pairs, the same for every visit of a patient.
    """

    patient_id: str
    visit_id: str
    order: int
    time: str
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    medications: tuple[str, ...]
    profile: tuple[tuple[str, str], ...] = ()

    def profile_dict(self) -> dict[str, str]:
        return dict(self.profile)


@dataclass(frozen=True, slots=True)
class Impression:
    """One news impression: what the user had clicked before, what was shown, what was clicked."""

    impression_id: str
    user_id: str
    time: str
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    labels: tuple[int, ...]


@dataclass(slots=True)
class ReadReport:
    """What a reader saw besides the visits: counts of rows kept, skipped and unmapped."""

    source: str
    rows: Counter = field(default_factory=Counter)  # rows read per table
    medication_rows: int = 0
    unmapped_medication_rows: int = 0
    unmapped_examples: Counter = field(default_factory=Counter)  # drug name -> rows
    skipped: Counter = field(default_factory=Counter)  # reason -> rows

    @property
    def mapped_share(self) -> float:
        if self.medication_rows == 0:
            return 0.0
        return 1.0 - self.unmapped_medication_rows / self.medication_rows


@dataclass(slots=True)
class Cohort:
    """The visits of a source, sorted by patient then order, with the reader's report."""

    visits: list[Visit]
    report: ReadReport
    titles: dict[str, str] = field(default_factory=dict)  # extra titles the source carried

    def patients(self) -> dict[str, list[Visit]]:
        out: dict[str, list[Visit]] = {}
        for v in self.visits:
            out.setdefault(v.patient_id, []).append(v)
        return out
