"""Medication samples under the two published protocols.

A visit is usable when it has at least one diagnosis and at least one mapped medication (and a
procedure, with `require_procedures`, as GAMENet filters). Unusable visits are left out of the
patient's history altogether, as the GAMENet/LEADER preprocessing does.

- `last-visit` (LEADER): one sample a patient; the last usable visit is the target and the earlier
  usable visits are its history.
- `all-visits` (GAMENet/SafeDrug): every usable visit is a target, predicted from the usable visits
  before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.data.records import Cohort, Visit

PROTOCOLS = ("last-visit", "all-visits")


@dataclass(frozen=True, slots=True)
class MedSample:
    sample_id: str
    patient_id: str
    history: tuple[Visit, ...]  # oldest first
    target: Visit


def usable(v: Visit, require_procedures: bool = False) -> bool:
    return bool(v.diagnoses and v.medications and (v.procedures or not require_procedures))


def build_samples(
    cohort: Cohort, protocol: str, require_procedures: bool = False
) -> list[MedSample]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    out = []
    for pid, visits in cohort.patients().items():
        kept = [v for v in sorted(visits, key=lambda v: v.order) if usable(v, require_procedures)]
        if not kept:
            continue
        targets = range(len(kept)) if protocol == "all-visits" else range(len(kept) - 1, len(kept))
        for i in targets:
            t = kept[i]
            out.append(MedSample(f"{pid}:{t.visit_id}", pid, tuple(kept[:i]), t))
    return out
